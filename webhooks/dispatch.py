"""Sending: claim due deliveries, send them concurrently, record what happened.

1. Claim: a ``FOR UPDATE SKIP LOCKED`` selection of due deliveries, then an UPDATE that marks
   them leased for ``LEASE_SECONDS`` (longer than the slowest possible request), at most
   ``max_in_flight`` per endpoint counting those already leased (under a per-endpoint claim
   lock, so the limit holds across workers), and, for ordered endpoints, only the oldest open
   delivery per record. Any number of workers can claim at once without sharing a row.
2. Send: outside any transaction, concurrently (asyncio), through the SSRF-guarded client,
   signed per Standard Webhooks with every active secret of the endpoint.
3. Record: one transaction per batch: the attempts, each delivery's next state and retry time
   (in the row, never in a Celery countdown), the endpoint's health. A handful of statements
   whatever the batch size: the attempts in one INSERT, the deliveries in one UPDATE (only the
   rows whose lease is still ours), the endpoints' health in one UPDATE. Health changes of
   state (failing, recovered, exhausted, disabled) go through webhooks.services, audited as
   the system actor; a batch that changes no state writes no audit entry.
4. Reap: a lease that expired (its worker died) goes back to pending; the receiver may get the
   event twice, with the same ``webhook-id``. At least once, never lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from bxos.common import outbound
from bxos.common.aio import run_coroutine
from bxos.common.db import bulk_insert
from bxos.common.outbound import OutboundResult, asend, outbound_async_client
from webhooks import notifications, payloads, services, signing
from webhooks.choices import DeliveryStatus
from webhooks.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookSecret,
)

logger = logging.getLogger(__name__)

# Answers after which a receiver is given at least a minute (and its Retry-After, if longer).
THROTTLED = {429, 502, 503, 504}

# Claiming is two statements in one transaction, so that ``max_in_flight`` holds however many
# workers claim at once (see docs/development/decisions.md, "max_in_flight is enforced by a
# per-endpoint claim lock"):
#
# 1. Pick due rows (FOR UPDATE SKIP LOCKED: no two claimers share a row) and take each of their
#    endpoints' claim lock, a transaction-scoped advisory lock. ``pg_try_advisory_xact_lock``
#    never waits: an endpoint another claimer holds is left to it this round (it is leasing
#    that endpoint's rows right now), so there is no lock order to get wrong and no deadlock.
# 2. Count each locked endpoint's leased rows and lease at most the room left. This statement's
#    snapshot is taken after the locks were granted, so it sees every lease committed by the
#    claimers that held them before; nobody else leases for those endpoints until we commit.
#    (Counting in the same statement as the locking would read the older snapshot: two
#    claimers would each see the other's leases missing and lease max_in_flight each.)
#
# Only claims lease rows; settling, the reaper and deletion only ever free room, which a
# concurrent count may miss only on the safe side. Needs READ COMMITTED (Django's default):
# a transaction snapshot would be taken by statement 1, before the locks.
CLAIM_LOCK_SPACE = 0x5748_4B31  # "WHK1": the advisory-lock key space of endpoint claims

_PICK = """
WITH candidates AS MATERIALIZED (
    SELECT d.id, d.endpoint_id
    FROM webhooks_webhookdelivery d
    JOIN webhooks_webhookendpoint e ON e.id = d.endpoint_id
    WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.active
      AND (NOT e.ordered OR d.ordering_key = '' OR NOT EXISTS (
            SELECT 1 FROM webhooks_webhookdelivery p
            WHERE p.endpoint_id = d.endpoint_id AND p.ordering_key = d.ordering_key
              AND p.id < d.id AND p.status IN ('pending', 'leased', 'held')))
    ORDER BY d.next_attempt_at, d.id
    LIMIT %(scan)s
    FOR UPDATE OF d SKIP LOCKED
), locked AS MATERIALIZED (
    SELECT endpoint_id FROM (SELECT DISTINCT endpoint_id FROM candidates) AS k
    WHERE pg_try_advisory_xact_lock(%(space)s, (endpoint_id %% 2147483647)::integer)
)
SELECT id, endpoint_id FROM candidates
UNION ALL
SELECT NULL, endpoint_id FROM locked
"""
# The candidates and the endpoints whose lock was taken come back as one list, matched in
# Python (claim): joined in SQL, a planner that expects one pending row (a table that was empty
# when last analysed, then a fan-out of a thousand) picks a nested loop, 800 x 800 comparisons
# (67 ms of a 1,000-endpoint fan-out).

_LEASE = """
WITH room AS (
    SELECT e.id, e.max_in_flight - (
               SELECT count(*) FROM webhooks_webhookdelivery l
               WHERE l.endpoint_id = e.id AND l.status = 'leased') AS room
    FROM webhooks_webhookendpoint e
    WHERE e.id = ANY(%(endpoints)s::bigint[]) AND e.active
), ranked AS (
    SELECT d.id, d.next_attempt_at, r.room,
           row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS n
    FROM webhooks_webhookdelivery d JOIN room r ON r.id = d.endpoint_id
    WHERE d.id = ANY(%(ids)s::bigint[]) AND d.status = 'pending'
), chosen AS (
    SELECT id FROM ranked WHERE n <= room ORDER BY next_attempt_at, id LIMIT %(limit)s
)
UPDATE webhooks_webhookdelivery d
SET status = 'leased', leased_by = %(lease)s,
    lease_expires_at = now() + make_interval(secs => %(seconds)s)
FROM chosen WHERE d.id = chosen.id
RETURNING d.id
"""


# The new state of each delivery of a batch, in one statement; a row whose lease is no longer
# ours (it expired and another worker claimed it, or the endpoint was deleted) is left alone.
_SETTLE = """
UPDATE webhooks_webhookdelivery d
SET status = v.status, attempts = v.attempts, next_attempt_at = v.next_attempt_at,
    finished_at = v.finished_at, last_status_code = v.last_status_code,
    last_error = v.last_error, leased_by = '', lease_expires_at = NULL
FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(attempts)s::integer[],
            %(next)s::timestamptz[], %(finished)s::timestamptz[], %(codes)s::integer[],
            %(errors)s::text[])
     AS v(id, status, attempts, next_attempt_at, finished_at, last_status_code, last_error)
WHERE d.id = v.id AND d.status = 'leased' AND d.leased_by = %(lease)s
"""


@dataclass
class Job:
    delivery: WebhookDelivery
    endpoint: WebhookEndpoint
    event: WebhookEvent
    secrets: list[str]
    body: bytes
    result: OutboundResult | None = None
    started_at: datetime | None = None


def conf(name: str):
    return settings.WEBHOOKS[name]


def reap_expired_leases() -> int:
    """Return deliveries whose worker died mid-send to pending; how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE webhooks_webhookdelivery SET status = 'pending', leased_by = '', "
            "lease_expires_at = NULL, next_attempt_at = now() "
            "WHERE status = 'leased' AND lease_expires_at < now()"
        )
        count = cursor.rowcount
    if count:
        logger.warning("reclaimed %s expired webhook delivery leases", count)
    return count


def claim(limit: int) -> tuple[str, list[int]]:
    """Lease up to ``limit`` due deliveries, never more than an endpoint's ``max_in_flight``
    leased at once across every worker; returns the lease name and the leased ids."""
    lease = f"{uuid.uuid4().hex[:12]}"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_PICK, {"scan": limit * 4, "space": CLAIM_LOCK_SPACE})
        rows = cursor.fetchall()
        locked = {endpoint_id for pk, endpoint_id in rows if pk is None}
        picked = [
            (pk, endpoint_id)
            for pk, endpoint_id in rows
            if pk is not None and endpoint_id in locked
        ]
        if not picked:
            return lease, []
        cursor.execute(
            _LEASE,
            {
                "ids": [row[0] for row in picked],
                "endpoints": sorted({row[1] for row in picked}),
                "limit": limit,
                "lease": lease,
                "seconds": conf("LEASE_SECONDS"),
            },
        )
        ids = [row[0] for row in cursor.fetchall()]
    return lease, ids


def _jobs(ids: list[int]) -> list[Job]:
    # Endpoints and events read once each, not joined to every delivery: a fan-out is one
    # event (its payload) to a thousand endpoints, a burst many events to one endpoint.
    deliveries = list(WebhookDelivery.objects.filter(pk__in=ids).order_by("next_attempt_at", "id"))
    endpoints = WebhookEndpoint.objects.in_bulk({d.endpoint_id for d in deliveries})
    events = WebhookEvent.objects.in_bulk({d.event_id for d in deliveries})
    for d in deliveries:
        d.endpoint = endpoints[d.endpoint_id]
        d.event = events[d.event_id]
    now = timezone.now()
    secrets: dict[int, list[str]] = {}
    for secret in WebhookSecret.objects.filter(
        endpoint_id__in={d.endpoint_id for d in deliveries}
    ).order_by("-created_at"):
        if secret.expires_at is None or secret.expires_at > now:
            secrets.setdefault(secret.endpoint_id, []).append(secret.secret)
    return [
        Job(
            delivery=d,
            endpoint=d.endpoint,
            event=d.event,
            secrets=secrets.get(d.endpoint_id, []),
            body=bytes(d.body) if d.body is not None else bytes(d.event.payload),
        )
        for d in deliveries
    ]


_tls: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    """The verifying TLS context (certifi's CAs), built once per process: building one reads
    the CA bundle, about 20 ms, which each batch paid before."""
    global _tls
    if _tls is None:
        _tls = httpx.create_ssl_context(verify=True, trust_env=False)
    return _tls


async def _send_all(jobs: list[Job]) -> None:
    gates: dict[int, asyncio.Semaphore] = {}
    next_slot: dict[int, float] = {}
    # No more requests at once than the client has connections: the rest would wait inside
    # httpcore's pool, whose bookkeeping grows with the square of the queue (a 200-job batch
    # spent more time there than on the wire).
    limit = {**outbound.DEFAULTS, **settings.OUTBOUND_HTTP}["MAX_CONNECTIONS"]
    connections = asyncio.Semaphore(limit)
    async with outbound_async_client(verify=_tls_context()) as client:

        async def one(job: Job) -> None:
            endpoint = job.endpoint
            gate = gates.setdefault(endpoint.pk, asyncio.Semaphore(endpoint.max_in_flight))
            async with gate:
                # Per-endpoint rate: requests spaced 1/rate seconds apart in this worker.
                loop_now = time.monotonic()
                slot = max(loop_now, next_slot.get(endpoint.pk, loop_now))
                next_slot[endpoint.pk] = slot + 1 / endpoint.rate_per_second
                if slot > loop_now:
                    await asyncio.sleep(slot - loop_now)
                async with connections:
                    timestamp = int(time.time())
                    headers = {
                        "content-type": payloads.CONTENT_TYPES[endpoint.body_format],
                        **signing.headers(job.secrets, job.event.id, timestamp, job.body),
                    }
                    job.started_at = timezone.now()
                    job.result = await asend(
                        endpoint.method,
                        endpoint.url,
                        headers=headers,
                        content=job.body,
                        client=client,
                    )

        await asyncio.gather(*(one(job) for job in jobs))


def _retry_after(result: OutboundResult) -> float | None:
    value = (result.headers or {}).get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
        except (TypeError, ValueError):
            return None


def next_delay(endpoint: WebhookEndpoint, attempts: int, result: OutboundResult) -> float | None:
    """Seconds until the next attempt after ``attempts`` attempts, or None when exhausted."""
    schedule = endpoint.retry_schedule
    if attempts > len(schedule):
        return None
    delay = float(schedule[attempts - 1])
    if delay >= 300:
        delay *= random.uniform(0.8, 1.2)  # spread retries of a big outage apart
    if result.status_code in THROTTLED or result.error_class == "timeout":
        delay = max(delay, 60.0)
        retry_after = _retry_after(result)
        if retry_after is not None:
            delay = max(delay, min(retry_after, conf("RETRY_AFTER_CAP_SECONDS")))
    return delay


def _failure_text(result: OutboundResult) -> str:
    if result.status_code is not None:
        return f"The receiver answered {result.status_code}."
    return result.error or result.error_class


def _record(jobs: list[Job], lease: str) -> list:
    """Write attempts and new states in one transaction; returns notices to send after it."""
    now = timezone.now()
    notices = []
    with transaction.atomic():
        bulk_insert(
            WebhookAttempt,
            [
                WebhookAttempt(
                    delivery=job.delivery,
                    number=job.delivery.attempts + 1,
                    started_at=job.started_at or now,
                    duration_ms=int(job.result.duration_ms),
                    status_code=job.result.status_code,
                    response_body=job.result.body or b"",
                    response_truncated=job.result.truncated,
                    error_class=(job.result.error_class or "") if not job.result.ok else "",
                    error=(job.result.error or "")[:500],
                    succeeded=_succeeded(job.result),
                )
                for job in jobs
            ],
        )
        # FOR NO KEY UPDATE: it serialises the batches that record health for the same
        # endpoint, but does not wait for (nor hold up) the writing transactions whose outbox
        # inserts deliveries for it (their foreign-key check takes FOR KEY SHARE). FOR UPDATE
        # did, and held every write of such a change behind the record of a batch.
        endpoints = {
            e.pk: e
            for e in WebhookEndpoint.objects.select_for_update(no_key=True).filter(
                pk__in={job.endpoint.pk for job in jobs}
            )
        }
        health = {pk: _health(e) for pk, e in endpoints.items()}
        states = []
        failures: dict[int, str] = {}  # each endpoint's first failure of the batch
        for job in jobs:
            endpoint = endpoints[job.endpoint.pk]
            state, job_notices = _settle(job, endpoint, now)
            states.append((job, state))
            notices.extend(job_notices)
            if not _succeeded(job.result):
                failures.setdefault(endpoint.pk, _failure_text(job.result))
        # Only if still ours: a lease that expired and was claimed again belongs to that worker.
        with connection.cursor() as cursor:
            cursor.execute(_SETTLE, _settle_params(states, lease))
        # State changes go through the services, audited as the system actor; the health
        # bookkeeping of every other endpoint is one UPDATE with no audit entry.
        disabled = {endpoint_id for kind, endpoint_id, _ in notices if kind == "disabled"}
        for endpoint_id in disabled:
            services.webhook_endpoint_disable_unhealthy(endpoint=endpoints[endpoint_id])
        services.webhook_endpoints_health_save(
            updates=[
                services.HealthUpdate(endpoint=e, before=health[pk], failure=failures.get(pk, ""))
                for pk, e in endpoints.items()
                if pk not in disabled and _health(e) != health[pk]
            ]
        )
        _disclose(jobs)
    return notices


def _health(endpoint: WebhookEndpoint) -> tuple:
    return tuple(getattr(endpoint, name) for name in services.HEALTH_FIELDS)


def _settle_params(states: list[tuple[Job, dict]], lease: str) -> dict:
    """The columns of _SETTLE, one array each; a column a state leaves out keeps its value."""
    rows = [
        (
            job.delivery.pk,
            str(state["status"]),
            state["attempts"],
            state.get("next_attempt_at", job.delivery.next_attempt_at),
            state.get("finished_at", job.delivery.finished_at),
            state["last_status_code"],
            state.get("last_error", job.delivery.last_error),
        )
        for job, state in states
    ]
    columns = list(zip(*rows, strict=True)) if rows else [()] * 7
    names = ("ids", "statuses", "attempts", "next", "finished", "codes", "errors")
    arrays = {name: list(column) for name, column in zip(names, columns, strict=True)}
    return {"lease": lease, **arrays}


def _succeeded(result: OutboundResult) -> bool:
    return result.status_code is not None and 200 <= result.status_code < 300


def _settle(job: Job, endpoint: WebhookEndpoint, now: datetime) -> tuple[dict, list]:
    """The delivery's new state after this attempt, and the notices it calls for; updates the
    endpoint's health (and disables it) in memory."""
    result = job.result
    attempts = job.delivery.attempts + 1
    update: dict = {"attempts": attempts, "last_status_code": result.status_code}
    notices = []
    if _succeeded(result):
        update |= {"status": DeliveryStatus.SUCCEEDED, "finished_at": now, "last_error": ""}
        endpoint.last_success_at = now
        endpoint.failing_since = None
        # The owner is told again at the next delivery that fails for good.
        endpoint.exhausted_notified_at = None
    elif result.status_code == 410:
        # The receiver says it is gone for good: stop, keep this delivery for a re-enable.
        update |= {"status": DeliveryStatus.HELD, "next_attempt_at": now}
        update["last_error"] = "The receiver answered 410 Gone; the endpoint was disabled."
        notices += _disable(endpoint, now, "The receiver answered 410 Gone.")
    else:
        update["last_error"] = _failure_text(result)[:500]
        endpoint.failing_since = endpoint.failing_since or now
        delay = next_delay(endpoint, attempts, result)
        if delay is None:
            update |= {"status": DeliveryStatus.FAILED, "finished_at": now}
            if endpoint.exhausted_notified_at is None:
                endpoint.exhausted_notified_at = now
                notices.append(("exhausted", endpoint.pk, job.delivery.pk))
        else:
            update |= {
                "status": DeliveryStatus.PENDING,
                "next_attempt_at": now + timedelta(seconds=delay),
            }
        if endpoint.active and now - endpoint.failing_since >= timedelta(
            days=conf("DISABLE_AFTER_DAYS")
        ):
            notices += _disable(
                endpoint, now, f"No successful delivery for {conf('DISABLE_AFTER_DAYS')} days."
            )
        if not endpoint.active and update["status"] == DeliveryStatus.PENDING:
            update["status"] = DeliveryStatus.HELD
    return update, notices


def _disable(endpoint: WebhookEndpoint, now: datetime, reason: str) -> list:
    """Disable in memory (``_record`` saves it and holds its open deliveries)."""
    if not endpoint.active:
        return []
    endpoint.active = False
    endpoint.disabled_at = now
    endpoint.disabled_reason = reason[:300]
    return [("disabled", endpoint.pk, None)]


def announce_disabled(endpoint: WebhookEndpoint) -> None:
    """The domain event other endpoints (and the monitoring app) can subscribe to."""
    from bxos.common import events

    events.emit(
        "webhook_endpoint.disabled",
        endpoint,
        data={
            "id": endpoint.pk,
            "name": endpoint.name,
            "url": endpoint.url,
            "reason": endpoint.disabled_reason,
            "disabledAt": endpoint.disabled_at.isoformat(),
        },
    )


def _disclose(jobs: list[Job]) -> None:
    """A first attempt to a vendor's endpoint disclosed the record: one log row each."""
    from bxos.api.disclosure import disclosure_record_delivery

    for job in jobs:
        if job.endpoint.client_id and job.delivery.attempts == 0 and job.event.student_id:
            disclosure_record_delivery(
                client_id=job.endpoint.client_id,
                endpoint=f"webhook {job.endpoint.name} ({job.event.type})",
                student_ids=[job.event.student_id],
                request_id=job.event.id,
            )


def dispatch_once(limit: int | None = None) -> int:
    """Claim, send and record one batch; how many deliveries were attempted."""
    lease, ids = claim(limit or conf("BATCH_SIZE"))
    if not ids:
        return 0
    jobs = _jobs(ids)
    run_coroutine(_send_all(jobs))
    notices = _record(jobs, lease)
    for kind, endpoint_id, delivery_id in notices:
        notifications.notify(kind, endpoint_id=endpoint_id, delivery_id=delivery_id)
    return len(jobs)


def dispatch(budget_seconds: float | None = None) -> int:
    """Send batches until nothing is due or the time budget is spent; how many were sent."""
    budget = budget_seconds if budget_seconds is not None else conf("DISPATCH_BUDGET_SECONDS")
    deadline = time.monotonic() + budget
    total = 0
    while time.monotonic() < deadline:
        sent = dispatch_once()
        total += sent
        if not sent:
            break
    return total


def due_count() -> int:
    return WebhookDelivery.objects.filter(
        status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now(), endpoint__active=True
    ).count()
