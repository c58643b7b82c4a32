"""Webhook delivery end to end: outbox in the writing transaction, real HTTP to a receiver on
127.0.0.1, Standard Webhooks signatures checked with the official package, retries, disable,
held deliveries, replay. Dispatch runs in this process here; test_worker.py uses real workers.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from bxos.api.models import DisclosureLogEntry, FieldProfile
from bxos.common.services import model_update
from tests.bxos.api.test_api_read import make_client
from tests.webhooks.receiver import Answer
from webhooks import dispatch, services
from webhooks.choices import DeliveryStatus
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEvent

pytestmark = pytest.mark.django_db(transaction=True)


def make_endpoint(world, actor, url, **overrides):
    fields = {
        "name": "District data lake",
        "url": url,
        "event_types": ["student.updated", "incident.created", "bsr.status_changed"],
        "owner_email": "ops@district.example",
    }
    fields.update(overrides)
    schools = fields.pop("schools", ())
    client = fields.pop("client", None)
    return services.webhook_endpoint_create(
        actor=actor, district=world.district, client=client, schools=schools, **fields
    )


def rename(student, actor, name):
    return model_update(instance=student, actor=actor, data={"preferred_name": name})


def test_rolled_back_changes_send_nothing_and_committed_ones_are_signed(north, system, receiver):
    endpoint, secret = make_endpoint(north, system, receiver.url)
    with pytest.raises(RuntimeError), transaction.atomic():
        rename(north.a1, system, "Rolled back")
        assert WebhookEvent.objects.count() == 1  # written in the same transaction...
        raise RuntimeError
    assert WebhookEvent.objects.count() == 0  # ...and gone with it

    rename(north.a1, system, "Avi")
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.PENDING and delivery.endpoint == endpoint
    assert dispatch.dispatch_once() == 1

    (request,) = receiver.wait_for(1)
    assert request.headers["content-type"] == "application/json"
    payload = Webhook(secret).verify(request.body, request.headers)  # raises if not valid
    assert payload["type"] == "student.updated"
    assert payload["data"]["object"]["preferredName"] == "Avi"
    assert payload["data"]["id"] == north.a1.pk
    assert request.headers["webhook-id"] == delivery.event_id == payload["data"]["eventId"]
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempts == 1
    attempt = WebhookAttempt.objects.get(delivery=delivery)
    assert (
        attempt.status_code == 200 and attempt.succeeded and bytes(attempt.response_body) == b"ok"
    )


def test_rotation_signs_with_both_secrets_during_the_grace(north, system, receiver):
    endpoint, old = make_endpoint(north, system, receiver.url)
    new = services.webhook_secret_rotate(actor=system, endpoint=endpoint, grace=timedelta(hours=1))
    rename(north.a1, system, "Rotated")
    dispatch.dispatch_once()
    (request,) = receiver.wait_for(1)
    assert len(request.headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(request.body, request.headers)["type"] == "student.updated"
    # After the grace period only the new secret signs.
    newest = endpoint.secrets.latest("created_at")
    endpoint.secrets.exclude(pk=newest.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    rename(north.a1, system, "Rotated again")
    dispatch.dispatch_once()
    request = receiver.wait_for(2)[1]
    assert len(request.headers["webhook-signature"].split()) == 1
    Webhook(new).verify(request.body, request.headers)
    with pytest.raises(Exception):
        Webhook(old).verify(request.body, request.headers)


def test_vendor_endpoints_get_only_what_the_client_may_read(north, system, receiver):
    profile = FieldProfile.objects.create(
        district=north.district, name="names only", fields={"students": ["firstName"]}
    )
    client, _ = make_client(
        north, system, scope_list=["roster.readonly"], schools=[north.school_b], profile=profile
    )
    make_endpoint(
        north,
        system,
        receiver.url,
        client=client,
        name="Vendor hook",
        event_types=["student.updated"],
    )
    rename(north.a1, system, "School A")  # outside the client's schools: no delivery
    rename(north.b1, system, "School B")
    assert WebhookDelivery.objects.count() == 1
    dispatch.dispatch_once()
    (request,) = receiver.wait_for(1)
    obj = json.loads(request.body)["data"]["object"]
    assert set(obj) == {"id", "changeVersion", "firstName"}  # the profile applies
    # The push is a disclosure, logged like a read.
    entry = DisclosureLogEntry.objects.get(client=client)
    assert entry.student_ids == [north.b1.pk] and entry.method == "PUSH"
    # A type outside the client's scopes cannot even be subscribed to.
    with pytest.raises(Exception, match=r"may not receive incident\.created"):
        make_endpoint(north, system, receiver.url, client=client, event_types=["incident.created"])


def test_thin_xml_and_form_payloads_are_signed_as_sent(north, system, receiver):
    _, thin_secret = make_endpoint(north, system, receiver.url, name="thin", payload_style="thin")
    _, xml_secret = make_endpoint(north, system, receiver.url, name="xml", body_format="xml")
    _, form_secret = make_endpoint(
        north, system, receiver.url, name="form", body_format="form", method="PUT"
    )
    rename(north.a1, system, "Formats")
    dispatch.dispatch_once()
    requests = receiver.wait_for(3)
    by_type = {r.headers["content-type"]: r for r in requests}
    thin = json.loads(by_type["application/json"].body)
    assert "object" not in thin["data"] and thin["data"]["url"] == f"/api/v1/students/{north.a1.pk}"
    Webhook(thin_secret).verify(
        by_type["application/json"].body, by_type["application/json"].headers
    )
    xml = by_type["application/xml"]
    assert b"<preferredName>Formats</preferredName>" in xml.body
    Webhook(xml_secret).verify(xml.body, xml.headers, json_parse=False)
    form = by_type["application/x-www-form-urlencoded"]
    assert form.method == "PUT" and form.body.startswith(b"type=student.updated")
    Webhook(form_secret).verify(form.body, form.headers, json_parse=False)


def test_failures_follow_the_schedule_and_end_kept_and_reported(north, system, receiver):
    _endpoint, _ = make_endpoint(north, system, receiver.url, retry_schedule=[5, 600])
    receiver.default = Answer(status=500, body=b"boom")
    rename(north.a1, system, "Fails")
    delivery = WebhookDelivery.objects.get()

    before = timezone.now()
    dispatch.dispatch_once()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 1
    assert timedelta(seconds=4) <= delivery.next_attempt_at - before <= timedelta(seconds=10)
    assert delivery.last_error == "The receiver answered 500."

    # A 429 with Retry-After waits at least that long (and at least a minute).
    receiver.answers.append(Answer(status=429, headers={"Retry-After": "120"}))
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    before = timezone.now()
    dispatch.dispatch_once()
    delivery.refresh_from_db()
    assert delivery.next_attempt_at - before >= timedelta(seconds=119)

    # The last attempt fails: kept as failed, the owner told once.
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    dispatch.dispatch_once()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 3
    assert WebhookAttempt.objects.filter(delivery=delivery).count() == 3
    assert len(mail.outbox) == 1 and "failed for good" in mail.outbox[0].subject
    assert mail.outbox[0].to == ["ops@district.example"]

    # Replay: the same webhook-id, from the first attempt.
    receiver.default = Answer(status=204, body=b"")
    services.webhook_delivery_replay(actor=system, delivery=delivery)
    dispatch.dispatch_once()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    ids = {r.headers["webhook-id"] for r in receiver.wait_for(4)}
    assert ids == {delivery.event_id}


def test_a_slow_receiver_is_a_recorded_timeout(north, system, receiver, settings):
    settings.OUTBOUND_HTTP = {**settings.OUTBOUND_HTTP, "TOTAL_TIMEOUT": 1.0, "READ_TIMEOUT": 1.0}
    make_endpoint(north, system, receiver.url)
    receiver.default = Answer(delay=3)
    rename(north.a1, system, "Slow")
    dispatch.dispatch_once()
    attempt = WebhookAttempt.objects.get()
    assert attempt.error_class == "timeout" and attempt.status_code is None
    delivery = WebhookDelivery.objects.get()
    # A timeout waits at least a minute before the next try.
    assert delivery.next_attempt_at - attempt.started_at >= timedelta(seconds=59)


def test_410_disables_holds_and_enable_releases_in_order(north, system, receiver):
    endpoint, _ = make_endpoint(north, system, receiver.url, ordered=True)
    receiver.answers.append(Answer(status=410))
    rename(north.a1, system, "One")
    dispatch.dispatch_once()
    endpoint.refresh_from_db()
    assert not endpoint.active and "410" in endpoint.disabled_reason
    assert len(mail.outbox) == 1 and "disabled" in mail.outbox[0].subject
    rename(north.a1, system, "Two")
    rename(north.a1, system, "Three")
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {DeliveryStatus.HELD}
    assert dispatch.dispatch_once() == 0  # nothing goes to a disabled endpoint

    assert services.webhook_endpoint_enable(actor=system, endpoint=endpoint) == 3
    while dispatch.dispatch_once():
        pass
    names = [
        json.loads(r.body)["data"]["object"]["preferredName"] for r in receiver.wait_for(4)[1:]
    ]
    assert names == ["One", "Two", "Three"]
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {
        DeliveryStatus.SUCCEEDED
    }


def test_five_days_without_success_disables(north, system, receiver):
    endpoint, _ = make_endpoint(north, system, receiver.url)
    type(endpoint).objects.filter(pk=endpoint.pk).update(
        failing_since=timezone.now() - timedelta(days=5, minutes=1)
    )
    receiver.default = Answer(status=503)
    rename(north.a1, system, "Down")
    dispatch.dispatch_once()
    endpoint.refresh_from_db()
    assert not endpoint.active and "5 days" in endpoint.disabled_reason
    assert WebhookDelivery.objects.get().status == DeliveryStatus.HELD


def test_oversized_payloads_are_kept_and_explained(north, system, receiver, settings):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_PAYLOAD_BYTES": 100}
    make_endpoint(north, system, receiver.url)
    rename(north.a1, system, "Big")
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED
    assert "bytes; the most sent is 100" in delivery.last_error
    assert WebhookEvent.objects.filter(pk=delivery.event_id).exists()
    assert dispatch.dispatch_once() == 0


def test_deleting_an_endpoint_cancels_its_open_deliveries(north, system, receiver):
    endpoint, _ = make_endpoint(north, system, receiver.url)
    rename(north.a1, system, "Orphan")
    assert services.webhook_endpoint_delete(actor=system, endpoint=endpoint) == 1
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.CANCELLED and delivery.endpoint_id is None
    assert delivery.endpoint_name == "District data lake"


def test_expired_leases_are_reclaimed_and_resent_with_the_same_id(north, system, receiver):
    make_endpoint(north, system, receiver.url)
    rename(north.a1, system, "Lease")
    _lease, ids = dispatch.claim(10)
    assert len(ids) == 1 and dispatch.claim(10)[1] == []  # nobody else gets it
    WebhookDelivery.objects.filter(pk=ids[0]).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert dispatch.reap_expired_leases() == 1
    assert dispatch.dispatch_once() == 1
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert receiver.wait_for(1)[0].headers["webhook-id"] == delivery.event_id


def test_refused_urls_are_field_errors(north, system, receiver):
    for url in ("http://169.254.169.254/latest", "http://10.1.2.3/hook", "ftp://x.example/"):
        with pytest.raises(Exception) as caught:
            make_endpoint(north, system, url)
        assert "url" in caught.value.message_dict, url
    with pytest.raises(Exception) as caught:
        make_endpoint(north, system, receiver.url, event_types=["no.such"])
    assert "Unknown event type" in str(caught.value)
