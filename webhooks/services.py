"""Writes of the webhooks app: endpoints, their secrets and health, and replays.

Every change of an endpoint's state is in its audit history with the actor: people's edits,
enables and disables, secret rotations and reveals (never the secret), and what the dispatcher
decides as the system actor (``bxos.common.audit.system_actor``): an endpoint starts failing,
recovers, has its first delivery that failed for good, or is disabled (410 Gone, or no success
for ``DISABLE_AFTER_DAYS``). Per-attempt bookkeeping (``last_success_at`` moving on) is not
audited: it changes with every batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from auditlog.models import LogEntry
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from bxos.common.audit import system_actor
from bxos.common.outbound import OutboundResult, send
from bxos.common.services import model_delete, model_save, write_as
from webhooks import catalogue, outbox, payloads, signing
from webhooks.choices import OPEN_STATUSES, DeliveryStatus
from webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent, WebhookSecret

ENDPOINT_FIELDS = (
    "name",
    "url",
    "method",
    "body_format",
    "event_types",
    "payload_style",
    "retry_schedule",
    "max_in_flight",
    "rate_per_second",
    "ordered",
    "owner_email",
)

# An endpoint's health: bookkeeping of the dispatcher, written for a whole batch at once.
HEALTH_FIELDS = ("last_success_at", "failing_since", "exhausted_notified_at")


@contextlib.contextmanager
def _noted(endpoint: WebhookEndpoint, note: str) -> Iterator[None]:
    """Audit entries of ``endpoint`` written inside carry ``note`` as their reason
    (``additional_data``, see WebhookEndpoint.get_additional_data)."""
    endpoint.audit_note = note
    try:
        yield
    finally:
        endpoint.audit_note = ""


def _audit(endpoint: WebhookEndpoint, changes: dict[str, list], reason: str) -> LogEntry:
    """One "update" entry in the endpoint's history for a change that is not a save of its
    own columns (health transitions, secrets). The reason is a row of the History page too.
    The actor is the one of the enclosing ``write_as``."""
    return LogEntry.objects.log_create(
        endpoint,
        force_log=True,
        action=LogEntry.Action.UPDATE,
        changes={**changes, "reason": ["", reason]},
        additional_data={"reason": reason},
    )


def _shown(value) -> str:
    # As django-auditlog writes values of its own diffs.
    return "None" if value is None else str(value)


def validate_event_types(event_types: list[str], *, client=None) -> None:
    """Every type must be in the catalogue; a vendor's endpoint may only subscribe to types
    about records its client can read (its scopes)."""
    known = catalogue.entries()
    if not event_types:
        raise ValidationError({"event_types": ["Choose at least one event type."]})
    unknown = sorted(set(event_types) - set(known))
    if unknown:
        raise ValidationError(
            {"event_types": [f"Unknown event type(s): {', '.join(unknown)}; see the catalogue."]}
        )
    if client is not None:
        refused = sorted(
            t
            for t in event_types
            if known[t].resource is None or known[t].resource.scope not in client.scopes
        )
        if refused:
            raise ValidationError(
                {
                    "event_types": [
                        f"This client may not receive {', '.join(refused)} (scopes "
                        f"{', '.join(client.scopes) or 'none'})."
                    ]
                }
            )


def _validate_schools(endpoint: WebhookEndpoint, schools) -> None:
    foreign = [s for s in schools if s.district_id != endpoint.district_id]
    if foreign:
        raise ValidationError({"schools": ["Choose schools of the endpoint's district."]})
    if endpoint.client_id:
        allowed = set(endpoint.client.allowed_school_ids())
        if allowed and any(s.pk not in allowed for s in schools):
            raise ValidationError({"schools": ["Choose among the client's allowed schools."]})


def webhook_endpoint_create(
    *, actor, district, client=None, schools=(), active: bool = True, **fields
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint and its first secret; returns both (show the secret once)."""
    unknown = set(fields) - set(ENDPOINT_FIELDS)
    if unknown:
        raise TypeError(f"unknown endpoint fields: {sorted(unknown)}")
    with write_as(actor):
        endpoint = WebhookEndpoint(district=district, client=client, active=active, **fields)
        if not active:
            endpoint.disabled_at = timezone.now()
            endpoint.disabled_reason = "Created disabled."
        validate_event_types(endpoint.event_types, client=client)
        _validate_schools(endpoint, schools)
        model_save(instance=endpoint, actor=actor)
        endpoint.schools.set(schools)
        secret = webhook_secret_add(actor=actor, endpoint=endpoint)
    return endpoint, secret


def webhook_endpoint_update(
    *, actor, endpoint: WebhookEndpoint, data: dict, schools=None
) -> WebhookEndpoint:
    """Change an endpoint's settings (``active`` goes through enable/disable)."""
    unknown = set(data) - set(ENDPOINT_FIELDS) - {"active"}
    if unknown:
        raise TypeError(f"unknown endpoint fields: {sorted(unknown)}")
    active = data.pop("active", None)
    with write_as(actor):
        changed = [name for name, value in data.items() if getattr(endpoint, name) != value]
        for name in changed:
            setattr(endpoint, name, data[name])
        if "event_types" in changed:
            validate_event_types(endpoint.event_types, client=endpoint.client)
        model_save(instance=endpoint, actor=actor, fields=changed)
        if schools is not None:
            _validate_schools(endpoint, schools)
            endpoint.schools.set(schools)
        if active is True and not endpoint.active:
            webhook_endpoint_enable(actor=actor, endpoint=endpoint)
        elif active is False and endpoint.active:
            webhook_endpoint_disable(actor=actor, endpoint=endpoint, reason="Disabled by a person.")
    return endpoint


def webhook_endpoint_disable(*, actor, endpoint: WebhookEndpoint, reason: str) -> WebhookEndpoint:
    """Stop sending; new and pending deliveries are held, not dropped."""
    from webhooks.dispatch import announce_disabled

    with write_as(actor), _noted(endpoint, reason[:300]):
        endpoint.active = False
        endpoint.disabled_at = timezone.now()
        endpoint.disabled_reason = reason[:300]
        model_save(
            instance=endpoint, actor=actor, fields=["active", "disabled_at", "disabled_reason"]
        )
        WebhookDelivery.objects.filter(endpoint=endpoint, status=DeliveryStatus.PENDING).update(
            status=DeliveryStatus.HELD
        )
        announce_disabled(endpoint)
    return endpoint


def webhook_endpoint_enable(*, actor, endpoint: WebhookEndpoint) -> int:
    """Send again, starting with the held deliveries in the order their events happened.

    Returns how many held deliveries were released."""
    with write_as(actor):
        # One timestamp for all: the claim orders by (next_attempt_at, id), that is, by event.
        released = WebhookDelivery.objects.filter(
            endpoint=endpoint, status=DeliveryStatus.HELD
        ).update(status=DeliveryStatus.PENDING, next_attempt_at=timezone.now())
        endpoint.active = True
        endpoint.disabled_at = None
        endpoint.disabled_reason = ""
        endpoint.failing_since = None
        endpoint.exhausted_notified_at = None
        with _noted(endpoint, f"Enabled; {released} held deliveries released in order."):
            model_save(
                instance=endpoint,
                actor=actor,
                fields=[
                    "active",
                    "disabled_at",
                    "disabled_reason",
                    "failing_since",
                    "exhausted_notified_at",
                ],
            )
        if released:
            outbox.wake_after_commit()
    return released


# --- health: what the dispatcher decides, as the system actor ------------------------------


@dataclass
class HealthUpdate:
    """An endpoint whose health a batch changed: the new values are set on ``endpoint``."""

    endpoint: WebhookEndpoint
    before: tuple  # HEALTH_FIELDS' values before the batch
    failure: str = ""  # the first failure of the batch, if any: why it started failing


# Endpoint health of a batch in one statement (not through save(): these are counters; their
# state changes are audited one entry each by webhook_endpoints_health_save).
_HEALTH = """
UPDATE webhooks_webhookendpoint e
SET last_success_at = v.last_success_at, failing_since = v.failing_since,
    exhausted_notified_at = v.exhausted_notified_at
FROM unnest(%(ids)s::bigint[], %(success)s::timestamptz[], %(failing)s::timestamptz[],
            %(exhausted)s::timestamptz[]) AS v(id, last_success_at, failing_since,
            exhausted_notified_at)
WHERE e.id = v.id
"""


def _transition(update: HealthUpdate) -> tuple[dict[str, list], list[str]]:
    """The audited part of a health change: (changes, reasons); empty when it is bookkeeping
    only (a success of a healthy endpoint)."""
    endpoint = update.endpoint
    _success, failing_before, exhausted_before = update.before
    changes: dict[str, list] = {}
    reasons: list[str] = []
    if failing_before is None and endpoint.failing_since is not None:
        changes["failing_since"] = ["None", _shown(endpoint.failing_since)]
        changes["health"] = ["healthy", "failing"]
        reasons.append(f"Started failing: {update.failure or 'a delivery failed.'}")
    elif failing_before is not None and endpoint.failing_since is None:
        changes["failing_since"] = [_shown(failing_before), "None"]
        changes["health"] = ["failing", "healthy"]
        since = f"{failing_before:%Y-%m-%d %H:%M %Z}"
        reasons.append(f"Recovered: a delivery succeeded after failures since {since}.")
    if exhausted_before is None and endpoint.exhausted_notified_at is not None:
        changes["exhausted_notified_at"] = ["None", _shown(endpoint.exhausted_notified_at)]
        reasons.append(
            "A delivery failed for good (retries exhausted); the owner is told once, until a "
            "delivery succeeds again."
        )
    return changes, reasons


def webhook_endpoints_health_save(*, updates: list[HealthUpdate], actor=None) -> int:
    """Write the health of a batch's endpoints (one UPDATE) and audit their state changes:
    started failing, recovered, first delivery failed for good; one entry per endpoint that
    changed state, none for bookkeeping. ``actor``: the system actor by default (read only
    when there is something to audit). Returns how many entries were written."""
    if not updates:
        return 0
    endpoints = [u.endpoint for u in updates]
    with connection.cursor() as cursor:
        cursor.execute(
            _HEALTH,
            {
                "ids": [e.pk for e in endpoints],
                "success": [e.last_success_at for e in endpoints],
                "failing": [e.failing_since for e in endpoints],
                "exhausted": [e.exhausted_notified_at for e in endpoints],
            },
        )
    transitions = [(u.endpoint, *_transition(u)) for u in updates]
    transitions = [t for t in transitions if t[1]]
    if not transitions:
        return 0
    with write_as(actor or system_actor()):
        for endpoint, changes, reasons in transitions:
            _audit(endpoint, changes, " ".join(reasons))
    return len(transitions)


def webhook_endpoint_disable_unhealthy(*, endpoint: WebhookEndpoint, actor=None) -> None:
    """Save a disable the dispatcher decided (410 Gone, or no success for
    ``DISABLE_AFTER_DAYS``): ``active``, ``disabled_at``, ``disabled_reason`` and the health as
    set on ``endpoint``, audited under ``actor`` (the system actor by default) with the reason;
    its pending deliveries are held; the disable is announced (webhook_endpoint.disabled).

    Not ``model_save``: validating would resolve the URL again, and a receiver whose name now
    resolves to a refused address must still be disabled, not left failing."""
    from webhooks.dispatch import announce_disabled

    with write_as(actor or system_actor()), _noted(endpoint, endpoint.disabled_reason):
        endpoint.save(
            update_fields=["active", "disabled_at", "disabled_reason", *HEALTH_FIELDS, "updated_at"]
        )
        # Its open deliveries wait for a re-enable (those of the batch included).
        WebhookDelivery.objects.filter(endpoint=endpoint, status=DeliveryStatus.PENDING).update(
            status=DeliveryStatus.HELD
        )
        announce_disabled(endpoint)


def webhook_endpoint_delete(*, actor, endpoint: WebhookEndpoint) -> int:
    """Delete an endpoint; its open deliveries are closed as cancelled and kept. Returns how
    many were cancelled.

    Every delivery keeps which endpoint it was for and, for a vendor's, the client that owned
    it (``deleted_endpoint_id``, ``deleted_endpoint_client``), set in the UPDATE that detaches
    it (the one ``on_delete=SET_NULL`` would have run), so the vendor still lists them."""
    deliveries = WebhookDelivery.objects.filter(endpoint=endpoint)
    with write_as(actor):
        # Waits for the transactions adding deliveries for it (their foreign-key check holds a
        # share lock on the row) and keeps new ones out, so the UPDATEs below see them all.
        list(WebhookEndpoint.objects.select_for_update().filter(pk=endpoint.pk).values_list("pk"))
        cancelled = deliveries.filter(status__in=OPEN_STATUSES).update(
            status=DeliveryStatus.CANCELLED,
            finished_at=timezone.now(),
            last_error="The endpoint was deleted.",
            leased_by="",
            lease_expires_at=None,
        )
        deliveries.update(
            endpoint=None,
            deleted_endpoint_id=endpoint.pk,
            deleted_endpoint_client=endpoint.client_id,
        )
        model_delete(instance=endpoint, actor=actor)
    return cancelled


def webhook_secret_add(*, actor, endpoint: WebhookEndpoint) -> str:
    with write_as(actor):
        secret = signing.new_secret()
        WebhookSecret.objects.create(endpoint=endpoint, secret=secret)
    return secret


def webhook_secret_rotate(
    *, actor, endpoint: WebhookEndpoint, grace: timedelta | None = None
) -> str:
    """A new secret; the current ones stay valid (and keep signing) for the grace period."""
    grace = grace if grace is not None else timedelta(hours=settings.WEBHOOKS["SECRET_GRACE_HOURS"])
    with write_as(actor):
        until = timezone.now() + grace
        endpoint.secrets.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=until)).update(
            expires_at=until
        )
        secret = webhook_secret_add(actor=actor, endpoint=endpoint)
        # The secret itself is never in the audit log; that it changed, and until when the
        # previous ones sign, is.
        _audit(
            endpoint,
            {"secret": ["(hidden)", "(hidden, new)"]},
            f"Secret rotated; the previous secrets sign until {until:%Y-%m-%d %H:%M %Z}.",
        )
    return secret


def webhook_secret_reveal(*, actor, endpoint: WebhookEndpoint) -> str:
    """The newest secret, once: a second reveal is refused (rotate to get a new one)."""
    with write_as(actor):
        secret = endpoint.secrets.select_for_update().filter(expires_at__isnull=True).first()
        if secret is None:
            raise ValidationError("This endpoint has no current secret; rotate to create one.")
        if secret.revealed_at is not None:
            raise ValidationError(
                f"The secret was already revealed on {secret.revealed_at:%Y-%m-%d %H:%M}; "
                "rotate it to get a new one."
            )
        secret.revealed_at = timezone.now()
        secret.save(update_fields=["revealed_at"])
        _audit(
            endpoint,
            {"secret": ["(hidden)", "(hidden, revealed)"]},
            "Secret revealed (it is shown once).",
        )
    return secret.secret


# --- replay -------------------------------------------------------------------------------


def _reopen(delivery: WebhookDelivery) -> WebhookDelivery:
    """Back to its first attempt (same webhook-id), pending, or held if the endpoint is off."""
    delivery.status = DeliveryStatus.PENDING if delivery.endpoint.active else DeliveryStatus.HELD
    delivery.attempts = 0
    delivery.finished_at = None
    delivery.next_attempt_at = timezone.now()
    delivery.save(update_fields=["status", "attempts", "finished_at", "next_attempt_at"])
    outbox.wake_after_commit()
    return delivery


def webhook_delivery_replay(*, actor, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again from its first attempt (same webhook-id); open ones are left.

    A vendor's endpoint is judged again with today's access, whoever replays (see
    :func:`webhook_delivery_replay_checked`): a replay must never send a vendor what its
    client can no longer read. The district's own endpoints get the stored bytes again.
    """
    with write_as(actor):
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        if locked.endpoint_id is None:
            raise ValidationError("The endpoint of this delivery was deleted.")
        if locked.status in (DeliveryStatus.PENDING, DeliveryStatus.LEASED):
            return locked
        if locked.endpoint.client_id is not None:
            _rejudge(locked)
        return _reopen(locked)


def _rejudge(locked: WebhookDelivery) -> None:
    """Refuse (ValidationError with the reason) or re-cut the body with today's access."""
    judged = outbox.delivery_now(locked.event, locked.endpoint)
    if judged is None:
        raise ValidationError(
            "This endpoint may no longer receive this event: its client's scopes or "
            "allowed schools, or the endpoint's schools, no longer cover the record."
        )
    if judged.status == DeliveryStatus.FAILED:
        raise ValidationError(judged.last_error)
    if judged.body != (bytes(locked.body) if locked.body is not None else None):
        locked.body = judged.body
        locked.save(update_fields=["body"])


def webhook_delivery_replay_checked(*, actor, delivery: WebhookDelivery) -> WebhookDelivery:
    """Replay judged again with today's access for every endpoint (the vendor API's replay):
    sent only if the endpoint may still receive the event, in the body it would get now
    (field profile, style, format). Raises ValidationError with the reason when it may not;
    the delivery is then left as it was. Open deliveries are left."""
    with write_as(actor):
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        if locked.endpoint_id is None:
            raise ValidationError("The endpoint of this delivery was deleted.")
        if locked.status in (DeliveryStatus.PENDING, DeliveryStatus.LEASED):
            return locked
        _rejudge(locked)
        return _reopen(locked)


def webhook_event_replay(
    *, actor, event: WebhookEvent, endpoint: WebhookEndpoint
) -> WebhookDelivery | None:
    """Send one event to one endpoint: replays its delivery, or creates the delivery it never
    had (say, the endpoint subscribed later) if the endpoint may receive it now. None if not."""
    existing = WebhookDelivery.objects.filter(event=event, endpoint=endpoint).first()
    if existing is not None:
        return webhook_delivery_replay(actor=actor, delivery=existing)
    if event.district_id != endpoint.district_id:
        raise ValidationError("The event belongs to another district.")
    if event.type not in endpoint.event_types:
        raise ValidationError(f"The endpoint {endpoint.name} does not subscribe to {event.type}.")
    with write_as(actor):
        created = outbox.add_delivery(event, endpoint)
        if created is not None and created.status == DeliveryStatus.PENDING:
            outbox.wake_after_commit()
    return created


def webhook_deliveries_recover(
    *, actor, since: datetime, endpoint: WebhookEndpoint | None = None, district=None, limit=1000
) -> int:
    """Replay every delivery that failed for good since ``since`` (at most ``limit`` per call,
    oldest first); how many were queued. Deliveries a vendor's endpoint may no longer receive
    stay failed (see :func:`webhook_delivery_replay`)."""
    queryset = WebhookDelivery.objects.filter(
        status=DeliveryStatus.FAILED, finished_at__gte=since, endpoint__isnull=False
    )
    if endpoint is not None:
        queryset = queryset.filter(endpoint=endpoint)
    if district is not None:
        queryset = queryset.filter(district=district)
    count = 0
    for delivery in queryset.order_by("id")[:limit]:
        try:
            webhook_delivery_replay(actor=actor, delivery=delivery)
        except ValidationError:
            continue
        count += 1
    return count


def webhook_endpoint_send_test(*, actor, endpoint: WebhookEndpoint) -> OutboundResult:
    """Send a signed ``webhook.test`` payload now and return what came back (nothing stored)."""
    now = timezone.now()
    event_id = outbox.new_event_id()
    body = payloads.render(
        {
            "type": "webhook.test",
            "timestamp": now.isoformat(),
            "data": {"eventId": event_id, "endpoint": endpoint.name, "occurredAt": now.isoformat()},
        },
        endpoint.body_format,
    )
    secrets = [
        s.secret
        for s in endpoint.secrets.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    ]
    headers = {
        "content-type": payloads.CONTENT_TYPES[endpoint.body_format],
        **signing.headers(secrets, event_id, int(now.timestamp()), body),
    }
    return send(endpoint.method, endpoint.url, headers=headers, content=body)
