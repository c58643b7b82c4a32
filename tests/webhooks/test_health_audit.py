"""An endpoint's history says who changed its state and why, including what the dispatcher
decided as the system actor: started failing, recovered, first delivery failed for good,
disabled (410 Gone, five days without success). People's enables and secret rotations are
there with the person. Ordinary successes write no entry (the hot path stays cheap).

Real HTTP to a receiver on 127.0.0.1, dispatch in this process, django-auditlog's entries read
from the database.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from bxos.common.audit import system_actor
from bxos.common.services import model_update
from tests.webhooks.receiver import Answer
from webhooks import dispatch, services
from webhooks.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db(transaction=True)


def make_endpoint(world, actor, url, **fields):
    endpoint, secret = services.webhook_endpoint_create(
        actor=actor,
        district=world.district,
        name="Data lake",
        url=url,
        event_types=["student.updated"],
        **fields,
    )
    return endpoint, secret


def rename(world, name):
    model_update(instance=world.a1, actor=system_actor(), data={"preferred_name": name})


def entries(endpoint) -> list[LogEntry]:
    return list(
        LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(WebhookEndpoint),
            object_id=endpoint.pk,
        ).order_by("timestamp", "id")
    )


def again():
    """Make every open delivery due now (the retry schedule would wait)."""
    WebhookDelivery.objects.filter(status="pending").update(next_attempt_at=timezone.now())


def test_failing_exhausted_and_recovered_are_audited_as_the_system(north, receiver):
    person = north.users["district_admin"]
    endpoint, _ = make_endpoint(north, person, receiver.url, retry_schedule=[5])
    start = len(entries(endpoint))

    receiver.default = Answer(status=500, body=b"boom")
    rename(north, "One")
    assert dispatch.dispatch_once() == 1
    (failing,) = entries(endpoint)[start:]
    assert failing.actor == system_actor()
    assert failing.changes["health"] == ["healthy", "failing"]
    assert failing.changes["failing_since"][0] == "None"
    assert "Started failing: The receiver answered 500." in failing.additional_data["reason"]

    # The retry fails too and ends the one-retry schedule: the streak goes on (no second
    # "failing" entry), and the first delivery that failed for good is a state change.
    again()
    assert dispatch.dispatch_once() == 1
    (exhausted,) = entries(endpoint)[start + 1 :]
    assert exhausted.actor == system_actor()
    assert "failed for good" in exhausted.changes["reason"][1]
    assert exhausted.changes["exhausted_notified_at"][0] == "None"

    # A success after failures: recovered.
    receiver.default = Answer(status=204, body=b"")
    rename(north, "Two")
    assert dispatch.dispatch_once() == 1
    (recovered,) = entries(endpoint)[start + 2 :]
    assert recovered.actor == system_actor()
    assert recovered.changes["health"] == ["failing", "healthy"]
    assert recovered.changes["reason"][1].startswith("Recovered: a delivery succeeded")

    # Successes of a healthy endpoint are bookkeeping: no entry, and no audit query at all.
    rename(north, "Three")
    with CaptureQueriesContext(connection) as queries:
        assert dispatch.dispatch_once() == 1
    assert len(entries(endpoint)) == start + 3
    assert not [q for q in queries.captured_queries if "auditlog" in q["sql"]]
    endpoint.refresh_from_db()
    assert endpoint.last_success_at is not None and endpoint.failing_since is None


def test_a_410_disable_is_audited_with_its_reason_and_a_persons_enable_with_theirs(
    north, receiver, client
):
    person = north.users["district_admin"]
    endpoint, _ = make_endpoint(north, person, receiver.url)
    start = len(entries(endpoint))
    receiver.answers.append(Answer(status=410))
    rename(north, "Gone")
    dispatch.dispatch_once()
    endpoint.refresh_from_db()
    assert not endpoint.active

    (disabled,) = entries(endpoint)[start:]
    assert disabled.actor == system_actor()
    assert disabled.changes["active"] == ["True", "False"]
    assert disabled.changes["disabled_reason"][1] == "The receiver answered 410 Gone."
    assert disabled.additional_data == {"reason": "The receiver answered 410 Gone."}

    # The History page of the admin shows it: the system, the reason.
    client.force_login(person)
    history = client.get(
        reverse("admin:webhooks_webhookendpoint_history", args=[endpoint.pk])
    ).content.decode()
    assert "The receiver answered 410 Gone." in history

    # A person enables it again: their entry, with how many held deliveries went out.
    rename(north, "Held")
    assert services.webhook_endpoint_enable(actor=person, endpoint=endpoint) == 2
    enabled = entries(endpoint)[-1]
    assert enabled.actor == person
    assert enabled.changes["active"] == ["False", "True"]
    assert enabled.additional_data == {"reason": "Enabled; 2 held deliveries released in order."}


def test_five_days_without_success_disables_as_the_system(north, receiver):
    endpoint, _ = make_endpoint(north, north.users["district_admin"], receiver.url)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        failing_since=timezone.now() - timedelta(days=5, minutes=1)
    )
    start = len(entries(endpoint))
    receiver.default = Answer(status=503)
    rename(north, "Down")
    dispatch.dispatch_once()
    (disabled,) = entries(endpoint)[start:]
    assert disabled.actor == system_actor()
    assert disabled.changes["active"] == ["True", "False"]
    assert "No successful delivery for 5 days." in disabled.additional_data["reason"]
    assert WebhookDelivery.objects.get().status == "held"


def test_secret_rotation_and_reveal_are_audited_without_the_secret(north, loopback):
    person = north.users["district_admin"]
    endpoint, first = make_endpoint(north, person, "http://127.0.0.1:9/hook")
    start = len(entries(endpoint))
    revealed = services.webhook_secret_reveal(actor=person, endpoint=endpoint)
    rotated = services.webhook_secret_rotate(
        actor=person, endpoint=endpoint, grace=timedelta(hours=2)
    )
    reveal, rotation = entries(endpoint)[start:]
    assert (reveal.actor, rotation.actor) == (person, person)
    assert reveal.changes["secret"] == ["(hidden)", "(hidden, revealed)"]
    assert rotation.changes["reason"][1].startswith("Secret rotated; the previous secrets sign")
    every_entry = json.dumps(
        [[e.changes, e.additional_data, e.changes_text] for e in entries(endpoint)]
    )
    for secret in (first, revealed, rotated):
        assert secret.removeprefix("whsec_") not in every_entry
