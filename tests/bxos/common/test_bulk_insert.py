"""bxos.common.db.bulk_insert: one parameter per column, Django's own value preparation."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bxos.api.models import DisclosureLogEntry
from bxos.common.db import bulk_insert
from webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

pytestmark = pytest.mark.django_db


def _event(world, n: int) -> WebhookEvent:
    return WebhookEvent.objects.create(
        id=f"evt_bulk{n}",
        district=world.district,
        type="student.updated",
        occurred_at=timezone.now(),
        model="schools.Student",
        payload=b'{"n": %d}' % n,
    )


def test_rows_get_django_s_defaults_and_conversions_in_one_statement(north):
    endpoint = WebhookEndpoint.objects.create(
        district=north.district, name="Lake", url="https://lake.example/hook"
    )
    events = [_event(north, n) for n in range(3)]
    rows = [
        WebhookDelivery(
            district=north.district,
            event=event,
            endpoint=endpoint,
            endpoint_name=endpoint.name,
            body=b"\x00\xffbinary" if n == 0 else None,
            next_attempt_at=None if n == 1 else timezone.now(),
        )
        for n, event in enumerate(events)
    ]
    with CaptureQueriesContext(connection) as queries:
        assert bulk_insert(WebhookDelivery, rows) == 3
    assert len(queries.captured_queries) == 1
    assert queries.captured_queries[0]["sql"].count("unnest") == 1
    stored = list(WebhookDelivery.objects.filter(endpoint=endpoint).order_by("event_id"))
    assert [d.status for d in stored] == ["pending"] * 3  # the field's default
    assert all(d.created_at is not None for d in stored)  # auto_now_add, as bulk_create
    assert bytes(stored[0].body) == b"\x00\xffbinary" and stored[1].body is None
    assert stored[1].next_attempt_at is None and stored[2].next_attempt_at is not None
    assert [d.attempts for d in stored] == [0, 0, 0]


def test_conflicts_are_skipped_only_when_asked(north):
    endpoint = WebhookEndpoint.objects.create(
        district=north.district, name="Lake", url="https://lake.example/hook"
    )
    event = _event(north, 9)

    def delivery():
        return WebhookDelivery(
            district=north.district, event=event, endpoint=endpoint, endpoint_name="Lake"
        )

    assert bulk_insert(WebhookDelivery, [delivery()]) == 1
    # One delivery per event and endpoint (a unique constraint): a second is skipped...
    assert bulk_insert(WebhookDelivery, [delivery()], ignore_conflicts=True) == 0
    assert WebhookDelivery.objects.filter(event=event).count() == 1


def test_array_columns_are_refused():
    with pytest.raises(ValueError, match="student_ids"):
        bulk_insert(DisclosureLogEntry, [DisclosureLogEntry()])
