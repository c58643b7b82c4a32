"""Webhook endpoints, their secrets, and the outbox: events, deliveries and attempts.

PostgreSQL is the source of truth (see docs/development/decisions.md, "Webhooks"): an event and
its deliveries are written in the transaction that made the change, and a delivery's retry
timing lives in its row. A Celery message only wakes a worker.
"""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models import Q

from bxos.common.constraints import FieldConstraintErrors, in_range, valid_code
from bxos.common.fields import EncryptedTextField
from bxos.common.outbound import OutboundURLValidator
from bxos.common.permissions import Gate
from webhooks.choices import (
    STANDARD_SCHEDULE,
    BodyFormat,
    DeliveryStatus,
    Method,
    PayloadStyle,
)


def _standard_schedule() -> list[int]:
    return list(STANDARD_SCHEDULE)


class WebhookEndpoint(FieldConstraintErrors, models.Model):
    """A receiver of events: the district's own, or a vendor's (``client`` set).

    A vendor's endpoint never receives data its client could not read through the API: the
    client's scopes, allowed schools and field profile apply to every payload.
    """

    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    client = models.ForeignKey(
        "api.ApiClient",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="webhook_endpoints",
        help_text="The vendor that owns this endpoint; empty for the district's own.",
    )
    name = models.CharField(max_length=150)
    url = models.URLField(max_length=2000, validators=[OutboundURLValidator()])
    method = models.CharField(max_length=4, choices=Method.choices, default=Method.POST)
    body_format = models.CharField(
        "content type", max_length=4, choices=BodyFormat.choices, default=BodyFormat.JSON
    )
    event_types = ArrayField(
        models.CharField(max_length=80),
        default=list,
        help_text="The event types this endpoint receives (see the event catalogue).",
    )
    schools = models.ManyToManyField(
        "schools.School",
        blank=True,
        related_name="+",
        help_text="Only events about these schools; empty: every school.",
    )
    payload_style = models.CharField(
        max_length=4, choices=PayloadStyle.choices, default=PayloadStyle.FULL
    )
    retry_schedule = ArrayField(
        models.PositiveIntegerField(),
        default=_standard_schedule,
        help_text="Seconds before each retry; the default is Standard Webhooks' schedule "
        "(5 s to 24 h, 10 attempts over about 3 days).",
    )
    max_in_flight = models.PositiveSmallIntegerField(
        default=10, help_text="Requests to this endpoint at the same time, at most."
    )
    rate_per_second = models.PositiveIntegerField(
        default=50, help_text="Requests to this endpoint per second, at most."
    )
    ordered = models.BooleanField(
        default=False,
        help_text="Deliver events about one record in order: a later one waits until the "
        "earlier one has succeeded or failed for good.",
    )
    owner_email = models.EmailField(
        blank=True,
        help_text="Told when a delivery fails for good and when the endpoint is disabled.",
    )
    active = models.BooleanField(default=True)
    disabled_at = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_reason = models.CharField(max_length=300, blank=True, editable=False)
    failing_since = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="First failure since the last success."
    )
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    exhausted_notified_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    gate = Gate()
    event_prefix = "webhook_endpoint"

    class Meta:
        ordering = ["name"]
        verbose_name = "webhook endpoint"
        constraints = [
            valid_code("method", Method, name="webhook_endpoint_method_valid"),
            valid_code("body_format", BodyFormat, name="webhook_endpoint_format_valid"),
            valid_code("payload_style", PayloadStyle, name="webhook_endpoint_style_valid"),
            in_range(
                "max_in_flight", 1, 100, name="webhook_endpoint_in_flight_range", nullable=False
            ),
            in_range(
                "rate_per_second", 1, 10_000, name="webhook_endpoint_rate_range", nullable=False
            ),
            models.CheckConstraint(
                condition=Q(active=True) | Q(disabled_at__isnull=False),
                name="webhook_endpoint_disabled_has_time",
            ),
        ]
        indexes = [models.Index(fields=["district", "active"], name="webhook_endpoint_district")]

    def __str__(self) -> str:
        return self.name

    def get_additional_data(self) -> dict | None:
        """django-auditlog stores this with each entry of this endpoint: why a service changed
        it (``audit_note``, set by webhooks.services around a save), when it says."""
        note = getattr(self, "audit_note", "")
        return {"reason": note} if note else None


class WebhookSecret(models.Model):
    """A signing secret (``whsec_`` + 32 random bytes, base64), encrypted at rest.

    Rotation adds a new secret and gives the old one an end (the grace period); until then
    requests carry a signature for each, so receivers can switch over without losing one.
    """

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="secrets")
    secret = EncryptedTextField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revealed_at = models.DateTimeField(null=True, blank=True)

    gate = Gate(district="endpoint__district")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"secret of {self.endpoint} from {self.created_at:%Y-%m-%d %H:%M}"


class WebhookEvent(models.Model):
    """One domain event as sent: ``payload`` is the full JSON body (the exact bytes signed
    for full-payload JSON endpoints). Kept after its deliveries end, for replay and pull."""

    id = models.CharField(primary_key=True, max_length=30, editable=False)  # evt_ + ULID
    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    type = models.CharField(max_length=80)
    occurred_at = models.DateTimeField()
    model = models.CharField(max_length=80, blank=True)
    object_id = models.BigIntegerField(null=True, blank=True)
    change_version = models.BigIntegerField(null=True, blank=True)
    # What the API's gate needs to decide who may receive it (pull backstop, replays).
    scope = models.CharField(max_length=40, blank=True)
    school_id = models.BigIntegerField(null=True, blank=True)
    student_id = models.BigIntegerField(null=True, blank=True)
    payload = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    gate = Gate()

    class Meta:
        ordering = ["-occurred_at"]
        indexes = [
            BrinIndex(fields=["created_at"], name="webhook_event_created_brin"),
            models.Index(fields=["district", "id"], name="webhook_event_district_id"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class WebhookDelivery(models.Model):
    """One event to one endpoint: its state, its next attempt, its lease."""

    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    event = models.ForeignKey(WebhookEvent, on_delete=models.PROTECT, related_name="deliveries")
    # Deleting an endpoint cancels its open deliveries and keeps them, with its name.
    endpoint = models.ForeignKey(
        WebhookEndpoint,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deliveries",
    )
    endpoint_name = models.CharField(max_length=150)
    # Set when the endpoint is deleted (with ``endpoint`` cleared, in one UPDATE): which endpoint
    # it was, and the vendor that owned it, so the vendor still sees these deliveries through
    # the API, and no other client does.
    deleted_endpoint_id = models.BigIntegerField(null=True, blank=True, editable=False)
    deleted_endpoint_client = models.ForeignKey(
        "api.ApiClient",
        null=True,
        blank=True,
        editable=False,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,  # webhook_delivery_deleted_by serves it (only these rows have one)
    )
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    # The body for this endpoint when it differs from the event's payload (thin, field
    # profile, XML or form data); null: the event's payload.
    body = models.BinaryField(null=True, blank=True)
    ordering_key = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    leased_by = models.CharField(max_length=100, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    gate = Gate()

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="webhook_delivery_once"),
            valid_code("status", DeliveryStatus, name="webhook_delivery_status_valid"),
            models.CheckConstraint(
                condition=~Q(status=DeliveryStatus.LEASED) | Q(lease_expires_at__isnull=False),
                name="webhook_delivery_lease_has_expiry",
            ),
            # A delivery has a live endpoint or remembers a deleted one, never both; only a
            # deleted endpoint's deliveries name its former client.
            models.CheckConstraint(
                condition=Q(endpoint__isnull=True) | Q(deleted_endpoint_id__isnull=True),
                name="webhook_delivery_endpoint_or_deleted",
            ),
            models.CheckConstraint(
                condition=Q(deleted_endpoint_client__isnull=True)
                | Q(deleted_endpoint_id__isnull=False),
                name="webhook_delivery_deleted_client_has_endpoint",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at", "id"],
                name="webhook_delivery_due",
                condition=Q(status=DeliveryStatus.PENDING),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="webhook_delivery_leases",
                condition=Q(status=DeliveryStatus.LEASED),
            ),
            models.Index(fields=["endpoint", "status", "id"], name="webhook_delivery_endpoint"),
            # The admin's date filter and counts over a district's deliveries.
            BrinIndex(fields=["created_at"], name="webhook_delivery_created_brin"),
            # A vendor's list of its deleted endpoints' deliveries (the API pages by id).
            models.Index(
                fields=["deleted_endpoint_client", "id"],
                name="webhook_delivery_deleted_by",
                condition=Q(deleted_endpoint_client__isnull=False),
            ),
            models.Index(
                fields=["endpoint", "ordering_key", "id"],
                name="webhook_delivery_ordering",
                condition=Q(status__in=["pending", "leased", "held"]) & ~Q(ordering_key=""),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} to {self.endpoint_name} ({self.status})"


class WebhookAttempt(models.Model):
    """One HTTP request of a delivery and what came back (body up to 16 KB)."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="tries")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.BinaryField(blank=True, default=bytes)
    response_truncated = models.BooleanField(default=False)
    error_class = models.CharField(max_length=40, blank=True)
    error = models.CharField(max_length=500, blank=True)
    succeeded = models.BooleanField(default=False)

    gate = Gate(district="delivery__district")

    class Meta:
        ordering = ["-started_at"]
        indexes = [BrinIndex(fields=["started_at"], name="webhook_attempt_started_brin")]

    def __str__(self) -> str:
        outcome = self.status_code or self.error_class
        return f"attempt {self.number} of delivery {self.delivery_id}: {outcome}"
