"""The outbox: in the transaction that made a change, one event row and one delivery row per
endpoint that may receive it. A rolled-back change sends nothing; a committed one is never lost.

Who may receive what is decided here, once, with the API's own rules: a vendor's endpoint gets
an event only if its client could read the record through the API now (scope, district,
allowed schools), cut by the client's field profile. The school filter of an endpoint and a
client's allowed schools go through the model's gate, so multi-valued paths (a student's
schools through enrollments) are judged exactly as the API judges them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from datetime import UTC, datetime

import orjson
from django.conf import settings
from django.contrib.postgres.aggregates import ArrayAgg
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from ulid import ULID

from bxos.api.resources import Resource
from bxos.common.db import bulk_insert
from bxos.common.events import DomainEvent
from bxos.common.permissions import _dimension_q
from webhooks import catalogue, payloads
from webhooks.choices import BodyFormat, DeliveryStatus, PayloadStyle
from webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

logger = logging.getLogger(__name__)


def new_event_id() -> str:
    return f"evt_{ULID()}"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _with_audience(queryset):
    return queryset.select_related("client__field_profile").annotate(
        school_ids=ArrayAgg("schools", distinct=True, filter=Q(schools__isnull=False), default=[]),
        client_school_ids=ArrayAgg(
            "client__allowed_schools",
            distinct=True,
            filter=Q(client__allowed_schools__isnull=False),
            default=[],
        ),
    )


def subscribed_endpoints(district_id: int, event_type: str) -> list[WebhookEndpoint]:
    """Endpoints of the district subscribed to this type, with their school filters (one
    query)."""
    return list(
        _with_audience(
            WebhookEndpoint.objects.filter(
                district_id=district_id, event_types__contains=[event_type]
            )
        )
    )


def subscribed_endpoints_by_id(pk: int) -> WebhookEndpoint:
    return _with_audience(WebhookEndpoint.objects.filter(pk=pk)).get()


class _Record:
    """The changed row as the API renders it, and the facts the audience rules need."""

    def __init__(self, event: DomainEvent, resource: Resource | None):
        self.event = event
        self.resource = resource
        self.obj: dict | None = None
        self.student_id: int | None = None
        self.school_id: int | None = None
        self._visible: dict[tuple[frozenset, frozenset], bool] = {}
        if resource is None or event.object_id is None:
            self.obj = dict(event.data) if event.data else None
            return
        names = list(resource.fields)
        paths = list(resource.fields.values())
        extra = []
        if resource.student:
            extra.append(resource.student)
        gate = resource.model.gate
        if isinstance(gate.school, str):
            extra.append(gate.school)
        row = resource.model._base_manager.filter(pk=event.object_id).values_list(*paths, *extra)
        row = row.first()
        if row is None:
            return
        self.obj = dict(zip(names, row[: len(names)], strict=True))
        tail = list(row[len(names) :])
        if resource.student:
            self.student_id = tail.pop(0)
        if isinstance(gate.school, str):
            self.school_id = tail.pop(0)

    @classmethod
    def from_stored(cls, stored: WebhookEvent, full: dict) -> _Record:
        record = cls.__new__(cls)
        record.event = stored
        record.resource = catalogue.resource_for(stored.model)
        record.obj = full["data"].get("object")
        record.student_id = stored.student_id
        record.school_id = stored.school_id
        record._visible = {}
        return record

    def visible_in(self, *school_sets: list[int]) -> bool:
        """Whether the row falls within every non-empty set of schools given."""
        sets = [frozenset(s) for s in school_sets if s]
        gate = self.resource.model.gate if self.resource else None
        if not sets or gate is None or gate.school is None:
            return True
        key = tuple(sorted(sets, key=sorted))
        if key not in self._visible:
            queryset = self.resource.model._base_manager.filter(pk=self.event.object_id)
            for ids in sets:
                queryset = queryset.filter(_dimension_q(gate.school, list(ids)))
            self._visible[key] = queryset.exists()
        return self._visible[key]


def _audience(endpoint: WebhookEndpoint, record: _Record) -> tuple[bool, list[str] | None]:
    """(may this endpoint receive it, the fields its field profile allows or None for all)."""
    client = endpoint.client
    if client is None:
        return record.visible_in(endpoint.school_ids), None
    if record.resource is None:
        return False, None  # operational events (runs, imports, reports) stay in the district
    if client.access_problem() or record.resource.scope not in client.scopes:
        return False, None
    if not record.visible_in(endpoint.school_ids, endpoint.client_school_ids):
        return False, None
    profile = client.field_profile
    return True, (profile.fields.get(record.resource.name) if profile else None)


# The subscriptions are read once per transaction. A sync run, an import or a batch of writes
# emits many events of one type for one district in one transaction, and the endpoint query
# (joins and two array aggregates) was over half the outbox's cost per event. The memo hangs on
# the connection (one per thread) and is valid while its marker is in the connection's on-commit
# list: Django empties that list at commit and at rollback, and drops a rolled-back savepoint's
# entries with it, so the memo never outlives the transaction (or savepoint) that read it. A
# change to an endpoint, a client or a field profile drops it (forget_subscriptions, connected
# in signals).
_MEMO = "_bxos_webhook_subscriptions"


def _transaction_marker() -> None:
    """Run at commit and does nothing: its presence in run_on_commit keeps the memo."""


def _subscriptions(district_id: int, event_type: str) -> list[WebhookEndpoint]:
    connection = transaction.get_connection()
    memo = getattr(connection, _MEMO, None)
    if memo is None or not any(entry[1] is memo[0] for entry in connection.run_on_commit):
        memo = (functools.partial(_transaction_marker), {})
        setattr(connection, _MEMO, memo)
        transaction.on_commit(memo[0])
    key = (district_id, event_type)
    if key not in memo[1]:
        memo[1][key] = subscribed_endpoints(district_id, event_type)
    return memo[1][key]


def forget_subscriptions(**_kwargs) -> None:
    """Drop this thread's memo (signal receiver: endpoints, clients, field profiles)."""
    setattr(transaction.get_connection(), _MEMO, None)


def on_domain_event(event: DomainEvent) -> None:
    """In-transaction subscriber for every domain event (see bxos.common.events)."""
    if event.district_id is None or event.type not in catalogue.entries():
        return
    endpoints = _subscriptions(event.district_id, event.type)
    if not endpoints:
        return
    record_event(event, endpoints)


def record_event(event: DomainEvent, endpoints: list[WebhookEndpoint]) -> WebhookEvent:
    resource = catalogue.resource_for(event.model)
    record = _Record(event, resource)
    event_id = new_event_id()
    full = payloads.envelope(
        event_id=event_id,
        event_type=event.type,
        occurred_at=_iso(event.occurred_at),
        resource=resource.name if resource else event.type.split(".")[0],
        object_id=event.object_id,
        change_version=event.change_version,
        obj=record.obj,
    )
    full_bytes = payloads.dumps(full)
    stored = WebhookEvent.objects.create(
        id=event_id,
        district_id=event.district_id,
        type=event.type,
        occurred_at=event.occurred_at,
        model=event.model,
        object_id=event.object_id,
        change_version=event.change_version,
        scope=resource.scope if resource else "",
        school_id=record.school_id,
        student_id=record.student_id,
        payload=full_bytes,
    )
    now = timezone.now()
    deliveries = [
        d
        for d in (
            _delivery_for(endpoint, record, full, full_bytes, stored, now) for endpoint in endpoints
        )
        if d is not None
    ]
    bulk_insert(WebhookDelivery, deliveries, ignore_conflicts=True)
    if any(d.status == DeliveryStatus.PENDING for d in deliveries):
        wake_after_commit()
    return stored


# Coalesced wake-ups (Redis brokers): a wake-up is queued only when none is waiting. The flag
# is set (SET NX) by the committing process that queues one and deleted by the worker *before*
# it claims, so every commit either queues a wake-up or finds one whose claim is still to come
# (and will see this commit's deliveries). At 50 commits a second that is a handful of tasks,
# not fifty, each with a fuller batch. The expiry only bounds the damage of a wake-up lost with
# its flag set (a worker killed between taking it and deleting the flag): the sweep covers it.
WAKE_FLAG = "bxos:webhooks:wake-queued"
WAKE_FLAG_SECONDS = 5
_flag_store = None


def wake_flag_store():
    """The Redis broker's connection for the wake-up flag; None when the broker is not Redis
    (then every commit queues its own wake-up, as before)."""
    global _flag_store
    from bxos.celery import app

    url = app.conf.broker_url or ""  # the broker wake-ups go to (the environment wins)
    if not url.startswith(("redis://", "rediss://")):
        return None
    if _flag_store is None or _flag_store[0] != url:
        import redis

        # redis-py's pool notices a fork and reconnects in the child (Celery's prefork pool).
        _flag_store = (url, redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2))
    return _flag_store[1]


def wake_flag_clear() -> None:
    """For the worker, before it claims: the next commit queues a new wake-up."""
    store = wake_flag_store()
    if store is not None:
        try:
            store.delete(WAKE_FLAG)
        except Exception:  # the broker is down: its wake-ups are lost anyway, the sweep covers
            logger.warning("could not clear the webhook wake-up flag", exc_info=True)


def _wake() -> None:
    from webhooks.tasks import dispatch_task

    store = wake_flag_store()
    try:
        if store is not None and not store.set(WAKE_FLAG, 1, nx=True, ex=WAKE_FLAG_SECONDS):
            return  # a wake-up is queued and its claim is still to come
        dispatch_task.delay()
    except Exception:  # a broker outage must not fail the request; the sweep covers it
        logger.warning("could not queue webhook dispatch; the sweep will", exc_info=True)
        if store is not None:
            with contextlib.suppress(Exception):  # no wake-up went out: hold nothing back
                store.delete(WAKE_FLAG)


def _delivery_for(
    endpoint: WebhookEndpoint,
    record: _Record,
    full: dict,
    full_bytes: bytes,
    stored: WebhookEvent,
    now: datetime,
) -> WebhookDelivery | None:
    """The delivery of this event to this endpoint, or None if it may not receive it."""
    allowed, fields = _audience(endpoint, record)
    if not allowed:
        return None
    body = None
    if (
        endpoint.payload_style != PayloadStyle.FULL
        or fields is not None
        or endpoint.body_format != BodyFormat.JSON
    ):
        shaped = payloads.for_endpoint(
            full, resource=record.resource, style=endpoint.payload_style, allowed_fields=fields
        )
        body = payloads.render(shaped, endpoint.body_format)
    delivery = WebhookDelivery(
        district_id=stored.district_id,
        event=stored,
        endpoint=endpoint,
        endpoint_name=endpoint.name,
        body=body,
        status=DeliveryStatus.PENDING if endpoint.active else DeliveryStatus.HELD,
        next_attempt_at=now,
        ordering_key=f"{stored.model}:{stored.object_id}" if endpoint.ordered else "",
    )
    size = len(body if body is not None else full_bytes)
    cap = settings.WEBHOOKS["MAX_PAYLOAD_BYTES"]
    if size > cap:
        # Kept, visible and explained; never sent.
        delivery.status = DeliveryStatus.FAILED
        delivery.finished_at = now
        delivery.next_attempt_at = None
        delivery.last_error = f"The payload is {size} bytes; the most sent is {cap}."
    return delivery


def add_delivery(stored: WebhookEvent, endpoint: WebhookEndpoint) -> WebhookDelivery | None:
    """A delivery of a stored event to an endpoint that never had one (replay), judged by the
    same audience rules as at the time of the change, with today's access."""
    delivery = delivery_now(stored, endpoint)
    if delivery is not None:
        delivery.save()
    return delivery


def delivery_now(stored: WebhookEvent, endpoint: WebhookEndpoint) -> WebhookDelivery | None:
    """The delivery of a stored event to this endpoint as the outbox would make it now (not
    saved), or None if the endpoint may not receive it: today's scopes, schools and field
    profile of its client. For replays that must not send what the client can no longer read."""
    endpoint = subscribed_endpoints_by_id(endpoint.pk)
    full_bytes = bytes(stored.payload)
    full = orjson.loads(full_bytes)
    record = _Record.from_stored(stored, full)
    return _delivery_for(endpoint, record, full, full_bytes, stored, timezone.now())


def client_payloads(client, events: list[WebhookEvent]) -> list[tuple[WebhookEvent, dict]]:
    """The pull backstop (``GET /api/v1/events``): each stored event this API client could have
    received, with the payload it would have been pushed (full style, cut by its field profile).

    Judged now by ``_audience``, as for an endpoint of the client with no school filter of its
    own: operational events never, resource events only within its scopes and allowed schools.
    Whether the records are within those schools is read in one query per model, not per event.
    """
    probe = WebhookEndpoint(district_id=client.district_id, client=client)
    probe.school_ids = []
    probe.client_school_ids = client.allowed_school_ids()
    judged = []
    for stored in events:
        full = orjson.loads(bytes(stored.payload))
        judged.append((stored, full, _Record.from_stored(stored, full)))
    _read_visibility([record for _, _, record in judged], probe.client_school_ids)
    out = []
    for stored, full, record in judged:
        allowed, fields = _audience(probe, record)
        if allowed:
            shaped = payloads.for_endpoint(
                full, resource=record.resource, style=PayloadStyle.FULL, allowed_fields=fields
            )
            out.append((stored, shaped))
    return out


def _read_visibility(records: list[_Record], school_ids: list[int]) -> None:
    """Fill each record's ``visible_in(school_ids)`` answer with one query per model."""
    if not school_ids:
        return
    key = (frozenset(school_ids),)
    by_model: dict[type, list[_Record]] = {}
    for record in records:
        gate = record.resource.model.gate if record.resource else None
        if gate is not None and gate.school is not None and record.event.object_id is not None:
            by_model.setdefault(record.resource.model, []).append(record)
    for model, group in by_model.items():
        visible = set(
            model._base_manager.filter(pk__in={r.event.object_id for r in group})
            .filter(_dimension_q(model.gate.school, list(school_ids)))
            .values_list("pk", flat=True)
        )
        for record in group:
            record._visible[key] = record.event.object_id in visible


def wake_after_commit() -> None:
    """Queue one dispatch once this transaction commits (a speed-up; the beat sweep is the
    guarantee, so a lost message only delays delivery by a few seconds). Once per
    transaction, however many events it holds."""
    connection = transaction.get_connection()
    if any(entry[1] is _wake for entry in connection.run_on_commit):
        return
    transaction.on_commit(_wake)
