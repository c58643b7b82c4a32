"""The outbox reads an event type's subscriptions once per transaction (webhooks.outbox
._subscriptions), and never carries that read past the transaction, a rolled-back savepoint, or
a change to an endpoint or client made in the same transaction."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from bxos.common import events
from bxos.common.services import write_as
from tests.bxos.api.test_api_read import make_client
from webhooks import services
from webhooks.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db(transaction=True)

URL = "http://127.0.0.1:9/hook"


def endpoint(world, actor, name="Lake", **fields):
    fields.setdefault("event_types", ["student.updated"])
    client = fields.pop("client", None)
    created, _secret = services.webhook_endpoint_create(
        actor=actor, district=world.district, client=client, name=name, url=URL, **fields
    )
    return created


def endpoint_reads(queries) -> int:
    return sum(
        1
        for q in queries
        if q["sql"].startswith("SELECT") and 'FROM "webhooks_webhookendpoint"' in q["sql"]
    )


def delivered_to(ep) -> int:
    return WebhookDelivery.objects.filter(endpoint=ep).count()


def test_one_read_of_the_subscriptions_per_transaction(north, system, loopback):
    ep = endpoint(north, system)
    with CaptureQueriesContext(connection) as queries, write_as(system):
        for student in (north.a1, north.a2, north.b1, north.a1):
            events.emit("student.updated", student)
    assert endpoint_reads(queries.captured_queries) == 1
    assert delivered_to(ep) == 4
    # The next transaction reads again.
    with CaptureQueriesContext(connection) as queries, write_as(system):
        events.emit("student.updated", north.a1)
        events.emit("student.created", north.a1)  # another type: its own read
    assert endpoint_reads(queries.captured_queries) == 2


def test_a_commit_ends_the_memo_even_for_changes_that_send_no_signal(north, system, loopback):
    ep = endpoint(north, system)
    with write_as(system):
        events.emit("student.updated", north.a1)
    # A queryset update sends no signal; the next transaction must still see it.
    WebhookEndpoint.objects.filter(pk=ep.pk).update(event_types=["incident.created"])
    with write_as(system):
        events.emit("student.updated", north.a1)
    assert delivered_to(ep) == 1


def test_a_rolled_back_savepoint_takes_its_read_with_it(north, system, loopback):
    ep = endpoint(north, system)
    with write_as(system):
        with pytest.raises(RuntimeError), transaction.atomic():
            events.emit("student.updated", north.a1)
            raise RuntimeError
        WebhookEndpoint.objects.filter(pk=ep.pk).update(event_types=["incident.created"])
        events.emit("student.updated", north.a1)
    assert delivered_to(ep) == 0


def test_endpoints_and_clients_changed_in_the_transaction_are_seen(north, system, loopback):
    first = endpoint(north, system)
    client, _ = make_client(north, system, scope_list=["roster.readonly"])
    with write_as(system):
        events.emit("student.updated", north.a1)
        second = endpoint(north, system, name="Second")  # created mid-transaction
        vendor = endpoint(north, system, name="Vendor", client=client)
        events.emit("student.updated", north.a1)
        client.allowed_schools.set([north.school_b])  # the client narrowed mid-transaction
        events.emit("student.updated", north.a1)
    assert delivered_to(first) == 3
    assert delivered_to(second) == 2
    assert delivered_to(vendor) == 1  # a1 is in school A: only the event before the narrowing
