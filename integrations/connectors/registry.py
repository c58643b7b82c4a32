"""The connector registry: connector types by name, as the admin offers them."""

from __future__ import annotations

from integrations.connectors.base import Connector

_types: dict[str, type[Connector]] = {}


def register(cls: type[Connector]) -> type[Connector]:
    """Class decorator: make a connector type selectable. Names are unique."""
    name = cls.type_name
    if name in _types and _types[name] is not cls:
        raise ValueError(f"connector type {name!r} is registered twice")
    _types[name] = cls
    return cls


def get(name: str) -> type[Connector]:
    load()
    try:
        return _types[name]
    except KeyError:
        known = ", ".join(sorted(_types))
        raise LookupError(f"no connector type {name!r}; known: {known}") from None


def all_types() -> list[type[Connector]]:
    load()
    return sorted(_types.values(), key=lambda c: c.label)


def load() -> None:
    """Import the built-in connector modules (each registers itself)."""
    from importlib import import_module

    for module in ("oneroster_csv", "oneroster_rest", "edfi"):
        try:
            import_module(f"integrations.connectors.{module}")
        except ModuleNotFoundError as exc:  # a module not written yet must not break the others
            if exc.name != f"integrations.connectors.{module}":
                raise
