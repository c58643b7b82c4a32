"""Who is acting: the audit actor for requests, tasks and management commands.

django-auditlog records the actor from its own context; :func:`acting_as` sets that context and
ours together, so services can ask :func:`current_actor` and audit entries name the same actor.
Jobs act as the named system actor (settings.BXOS["SYSTEM_ACTOR_USERNAME"]).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from auditlog.context import auditlog_value, set_actor
from auditlog.models import LogEntry
from django.conf import settings
from django.contrib.contenttypes.models import ContentType

_current_actor: ContextVar = ContextVar("bxos_current_actor", default=None)


def system_actor():
    """The named system actor, created on first use (inactive: it can never sign in)."""
    from bxos.common.models import User

    username = settings.BXOS["SYSTEM_ACTOR_USERNAME"]
    user, _ = User.objects.get_or_create(
        username=username,
        defaults={"is_system_actor": True, "is_active": False, "first_name": "System"},
    )
    return user


@contextlib.contextmanager
def acting_as(actor, remote_addr: str | None = None) -> Iterator[None]:
    """Run a block as ``actor``: audit entries written inside name it. Nestable."""
    if _current_actor.get() is actor:
        # Services nest (a service calls services): the same actor is already in place.
        yield
        return
    token = _current_actor.set(actor)
    # django-auditlog's set_actor does not restore its context on exit, so after a nested
    # block the outer one would write entries with no actor. Restore it ourselves.
    outer = auditlog_value.get(None)
    try:
        with set_actor(actor, remote_addr=remote_addr):
            yield
    finally:
        _current_actor.reset(token)
        if outer is not None:
            auditlog_value.set(outer)


def current_actor():
    return _current_actor.get()


def audit_bulk(
    *,
    model: type,
    action: int,
    object_ids: Iterable[int],
    actor,
    note: str,
    count: int | None = None,
) -> LogEntry:
    """One audit entry for a batch written by a bulk path (seeding, imports, syncs).

    Bulk paths skip per-row signals for speed; this keeps them visible in the audit log.
    """
    ids = list(object_ids)
    count = len(ids) if count is None else count
    return LogEntry.objects.create(
        content_type=ContentType.objects.get_for_model(model),
        object_pk="",
        object_id=None,
        object_repr=f"batch of {count} {model._meta.verbose_name_plural}: {note}",
        action=action,
        changes={"batch": {"count": count, "first_ids": ids[:100], "note": note}},
        actor=actor,
    )


def register_audit(
    model: type, *, exclude: tuple[str, ...] = (), mask: tuple[str, ...] = ()
) -> None:
    """Register a model with django-auditlog, tracking its own columns only.

    Reverse relations and bookkeeping columns (change version, timestamps) would only add noise
    to the History page; many-to-many fields are tracked as such.
    """
    from auditlog.registry import auditlog

    skip = {"change_version", "created_at", "updated_at", "id", *exclude}
    fields = [f.name for f in model._meta.concrete_fields if f.name not in skip]
    m2m = [f.name for f in model._meta.many_to_many if f.remote_field.through._meta.auto_created]
    auditlog.register(model, include_fields=fields, mask_fields=list(mask), m2m_fields=set(m2m))
