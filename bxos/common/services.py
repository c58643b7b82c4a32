"""Helpers for services: validated, audited, event-emitting writes in one transaction.

Entity services (``student_create``, ``incident_update``...) live in each app's services.py and
use these, so every write validates the same way (model ``full_clean``: field rules, ``clean()``
and database constraints checked before the write), records the actor in the audit log, and
emits its domain event inside the transaction. A constraint the database still rejects (a race
between two writers) comes back as a ValidationError, never as a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction

from bxos.common import events
from bxos.common.audit import acting_as

M = TypeVar("M", bound=models.Model)


@contextmanager
def write_as(actor) -> Iterator[None]:
    """A transaction in which audit entries name ``actor``. Nested calls reuse the outer one."""
    if actor is None:
        raise ValueError("a write needs an actor: pass the user, API client or system_actor()")
    with transaction.atomic(), acting_as(actor):
        try:
            yield
        except IntegrityError as exc:
            raise ValidationError(_integrity_message(exc)) from exc


def _integrity_message(exc: IntegrityError) -> str:
    diag = getattr(getattr(exc, "__cause__", None), "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    if constraint:
        return f"The change conflicts with rule {constraint!r}; nothing was saved."
    return "The change conflicts with existing data; nothing was saved."


def event_name(instance: models.Model, verb: str) -> str:
    return f"{getattr(type(instance), 'event_prefix', instance._meta.model_name)}.{verb}"


def _refresh_change_version(instance: models.Model) -> None:
    # The trigger stamps updates in the database; read the new version back for the event.
    if hasattr(instance, "change_version"):
        instance.refresh_from_db(fields=["change_version"])


def model_create(*, model: type[M], actor, data: dict[str, Any], emit: bool = True) -> M:
    with write_as(actor):
        instance = model(**data)
        instance.full_clean()
        instance.save()
        if emit:
            events.emit(event_name(instance, "created"), instance)
    return instance


def model_update(*, instance: M, actor, data: dict[str, Any], emit: bool = True) -> M:
    """Set ``data`` on ``instance`` and save only the fields that actually changed."""
    changed = []
    for name, value in data.items():
        field = instance._meta.get_field(name)
        if field.many_to_one:
            current = getattr(instance, field.attname)
            new = value.pk if isinstance(value, models.Model) else value
        else:
            current, new = getattr(instance, name), value
        if current != new:
            setattr(instance, name, value)
            changed.append(name)
    return model_save(instance=instance, actor=actor, fields=changed, emit=emit)


def model_save(*, instance: M, actor, fields: list[str] | None = None, emit: bool = True) -> M:
    """Validate and save an instance whose attributes are already set (admin forms, services).

    ``fields`` limits the UPDATE (``update_fields``); None saves every field.
    """
    creating = instance._state.adding
    with write_as(actor):
        instance.full_clean()
        if creating:
            instance.save()
        else:
            if fields is not None and not fields:
                return instance  # nothing changed: no write, no event, no new change version
            if fields is not None and hasattr(instance, "updated_at"):
                fields = [*fields, "updated_at"]
            instance.save(update_fields=fields)
            _refresh_change_version(instance)
        if emit:
            events.emit(event_name(instance, "created" if creating else "updated"), instance)
    return instance


def model_delete(*, instance: models.Model, actor, emit: bool = True) -> None:
    with write_as(actor):
        if emit:
            events.emit(event_name(instance, "deleted"), instance)
        try:
            instance.delete()
        except models.ProtectedError as exc:
            names = sorted({str(o._meta.verbose_name_plural) for o in exc.protected_objects})
            raise ValidationError(
                f"{instance} cannot be deleted while it has {', '.join(names)}."
            ) from exc
