"""Reads of the webhooks app for people: an endpoint's health, and bodies made readable."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qsl
from xml.dom import minidom
from xml.parsers.expat import ExpatError

from django.db.models import Aggregate, Count, FloatField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from bxos.common.outbound import body_preview
from webhooks import catalogue
from webhooks.choices import BodyFormat, DeliveryStatus
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

OPERATIONS = "Operations (the district's own endpoints only)"


def webhook_event_type_groups() -> list[tuple[str, list[catalogue.CatalogueEntry]]]:
    """The catalogue grouped by what a vendor needs to receive it: the scope's family (Roster,
    Guardians, Attendance, Grades, Behavior), then the operational types."""
    groups: dict[str, list[catalogue.CatalogueEntry]] = {}
    for entry in catalogue.entries().values():
        group = entry.resource.scope.split(".")[0].title() if entry.resource else OPERATIONS
        groups.setdefault(group, []).append(entry)
    ordered = sorted(groups, key=lambda g: (g == OPERATIONS, g))
    return [(group, groups[group]) for group in ordered]


class _Percentile(Aggregate):
    """PostgreSQL's ``percentile_cont(fraction) WITHIN GROUP (ORDER BY expr)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, *, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


@dataclass(frozen=True)
class EndpointHealth:
    """Open work of an endpoint and how its last day of attempts went."""

    open: int  # pending or being sent
    held: int
    failed: int
    attempts: int  # in the window
    succeeded: int
    p95_ms: float | None
    since: datetime

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.attempts if self.attempts else None


def webhook_endpoint_health(
    *, endpoint: WebhookEndpoint, window: timedelta = timedelta(days=1)
) -> EndpointHealth:
    """Two queries, both on indexes: delivery counts by open status (never the succeeded
    millions), and the attempts of the window (count, successes, p95 duration)."""
    counts = dict(
        WebhookDelivery.objects.filter(
            endpoint=endpoint,
            status__in=[
                DeliveryStatus.PENDING,
                DeliveryStatus.LEASED,
                DeliveryStatus.HELD,
                DeliveryStatus.FAILED,
            ],
        )
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    since = timezone.now() - window
    stats = WebhookAttempt.objects.filter(
        delivery__endpoint=endpoint, started_at__gte=since
    ).aggregate(
        attempts=Count("id"),
        succeeded=Count("id", filter=Q(succeeded=True)),
        p95=_Percentile("duration_ms", fraction=0.95),
    )
    return EndpointHealth(
        open=counts.get(DeliveryStatus.PENDING, 0) + counts.get(DeliveryStatus.LEASED, 0),
        held=counts.get(DeliveryStatus.HELD, 0),
        failed=counts.get(DeliveryStatus.FAILED, 0),
        attempts=stats["attempts"],
        succeeded=stats["succeeded"],
        p95_ms=stats["p95"],
        since=since,
    )


def _count_of(statuses: list[str]) -> Coalesce:
    # A correlated COUNT per row: an index-only scan of (endpoint, status, id) each.
    counted = (
        WebhookDelivery.objects.filter(endpoint=OuterRef("pk"), status__in=statuses)
        .order_by()
        .values("endpoint")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(counted), 0)


def webhook_endpoints_with_counts(queryset: QuerySet[WebhookEndpoint]) -> QuerySet:
    """Endpoints annotated with ``open_count``, ``held_count`` and ``failed_count``."""
    return queryset.annotate(
        open_count=_count_of([DeliveryStatus.PENDING, DeliveryStatus.LEASED]),
        held_count=_count_of([DeliveryStatus.HELD]),
        failed_count=_count_of([DeliveryStatus.FAILED]),
    )


def delivery_body(delivery: WebhookDelivery) -> tuple[bytes, str]:
    """The bytes this delivery sends and their format (``BodyFormat``)."""
    if delivery.body is None:
        return bytes(delivery.event.payload), BodyFormat.JSON
    body = bytes(delivery.body)
    if delivery.endpoint_id is not None:
        return body, delivery.endpoint.body_format
    # The endpoint was deleted: tell the format by the bytes.
    if body.startswith(b"<?xml") or body.startswith(b"<"):
        return body, BodyFormat.XML
    if body.startswith(b"{"):
        return body, BodyFormat.JSON
    return body, BodyFormat.FORM


def readable_body(body: bytes, body_format: str) -> str:
    """A body as a person reads it: indented JSON or XML, form fields one a line (their JSON
    ``data`` indented). Anything that does not parse is shown as the safe preview."""
    try:
        if body_format == BodyFormat.JSON:
            return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
        if body_format == BodyFormat.XML:
            pretty = minidom.parseString(body).toprettyxml(indent="  ")
            return "\n".join(line for line in pretty.splitlines() if line.strip())
        if body_format == BodyFormat.FORM:
            lines = []
            for key, value in parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True):
                if key == "data":
                    value = json.dumps(json.loads(value), indent=2, ensure_ascii=False)
                lines.append(f"{key} = {value}")
            return "\n".join(lines)
    except (ValueError, ExpatError, UnicodeDecodeError):
        pass
    return body_preview(body, limit=len(body) + 1)
