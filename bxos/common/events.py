"""Domain events: services emit, apps subscribe, nothing is delivered for a rolled-back write.

A service calls ``emit("incident.created", incident)`` inside its transaction. Subscribers are
registered by apps in ``AppConfig.ready()``:

- ``subscribe(type, handler)``: called after the transaction commits (notifications, tasks).
- ``subscribe(type, handler, in_transaction=True)``: called at once, inside the transaction, for
  handlers that must write in the same transaction (the webhook outbox); a rollback undoes them.

Event types are declared in a catalogue (:func:`register_event_type`) so that a typo fails
loudly and the webhook catalogue can list every type with its description.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from bxos.common.audit import current_actor

logger = logging.getLogger(__name__)

WILDCARD = "*"


@dataclass(frozen=True)
class EventType:
    name: str
    description: str


@dataclass(frozen=True)
class DomainEvent:
    """What happened, to which row, by whom. Handlers reload the row by id if they need more."""

    type: str
    model: str  # "app_label.ModelName"
    object_id: int | None
    district_id: int | None
    change_version: int | None
    occurred_at: datetime
    actor_id: int | None
    data: dict = field(default_factory=dict)


Handler = Callable[[DomainEvent], None]

_catalogue: dict[str, EventType] = {}
_after_commit: dict[str, list[Handler]] = defaultdict(list)
_in_transaction: dict[str, list[Handler]] = defaultdict(list)


def register_event_type(name: str, description: str) -> None:
    _catalogue[name] = EventType(name, description)


def register_crud_events(entity: str, label: str) -> None:
    """Declare ``<entity>.created``, ``.updated`` and ``.deleted``."""
    article = "An" if label[:1].lower() in "aeiou" else "A"
    for verb in ("created", "updated", "deleted"):
        register_event_type(f"{entity}.{verb}", f"{article} {label} was {verb}.")


def catalogue() -> list[EventType]:
    return sorted(_catalogue.values(), key=lambda e: e.name)


def subscribe(event_type: str, handler: Handler, *, in_transaction: bool = False) -> None:
    """Register ``handler`` for one type, or for every type with ``"*"``."""
    registry = _in_transaction if in_transaction else _after_commit
    if handler not in registry[event_type]:
        registry[event_type].append(handler)


def unsubscribe(event_type: str, handler: Handler) -> None:
    for registry in (_in_transaction, _after_commit):
        if handler in registry[event_type]:
            registry[event_type].remove(handler)


def emit(event_type: str, obj=None, *, data: dict | None = None) -> DomainEvent:
    """Announce a change. Call inside the service's transaction."""
    if event_type not in _catalogue:
        raise ValueError(
            f"Unknown event type {event_type!r}: declare it with register_event_type()"
        )
    actor = current_actor()
    event = DomainEvent(
        type=event_type,
        model=obj._meta.label if obj is not None else "",
        object_id=getattr(obj, "pk", None),
        district_id=getattr(obj, "district_id", None),
        change_version=getattr(obj, "change_version", None),
        occurred_at=timezone.now(),
        actor_id=getattr(actor, "pk", None),
        data=data or {},
    )
    for handler in _in_transaction[event_type] + _in_transaction[WILDCARD]:
        handler(event)
    handlers = _after_commit[event_type] + _after_commit[WILDCARD]
    if handlers:
        transaction.on_commit(lambda: _deliver(event, handlers), robust=False)
    return event


def _deliver(event: DomainEvent, handlers: list[Handler]) -> None:
    for handler in handlers:
        try:
            handler(event)
        except Exception:  # one failing subscriber must not starve the others
            logger.exception("event subscriber %r failed for %s", handler, event.type)
