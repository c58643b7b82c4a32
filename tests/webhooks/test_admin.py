"""The district admin's webhooks pages, through Django's test client: endpoints (create, edit,
secret, test event, enable/disable, delete), deliveries (detail, replay, recovery, filters),
events, the catalogue, and the gate (another district's rows are a 404)."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from bxos.common.models import AccessLogEntry
from bxos.common.services import model_update
from tests.webhooks.receiver import Answer
from webhooks import catalogue, services
from webhooks.choices import STANDARD_SCHEDULE, DeliveryStatus
from webhooks.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

RECEIVER_URL = "http://127.0.0.1:9/hook"  # loopback, allowed by the fixture; nothing listens


def admin_url(name, *args):
    return reverse(f"admin:webhooks_{name}", args=[quote(a) for a in args])


def endpoint_for(world, actor, url=RECEIVER_URL, **overrides):
    fields = {
        "name": f"{world.code} data lake",
        "url": url,
        "event_types": ["student.updated", "incident.created"],
    }
    fields.update(overrides)
    return services.webhook_endpoint_create(actor=actor, district=world.district, **fields)


def rename(world, actor, name, student=None):
    model_update(instance=student or world.a1, actor=actor, data={"preferred_name": name})
    return WebhookDelivery.objects.filter(district=world.district).order_by("-id").first()


def form_data(**overrides) -> dict:
    data = {
        "name": "Data lake",
        "url": RECEIVER_URL,
        "method": "POST",
        "body_format": "json",
        "event_types": ["student.updated", "bsr.status_changed"],
        "payload_style": "full",
        "retry_schedule": ",".join(map(str, STANDARD_SCHEDULE)),
        "max_in_flight": "10",
        "rate_per_second": "50",
        "owner_email": "ops@north.example.org",
        "active": "on",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def change_data(endpoint, **overrides) -> dict:
    data = form_data(
        name=endpoint.name,
        url=endpoint.url,
        method=endpoint.method,
        body_format=endpoint.body_format,
        event_types=list(endpoint.event_types),
        payload_style=endpoint.payload_style,
        retry_schedule=",".join(map(str, endpoint.retry_schedule)),
        max_in_flight=str(endpoint.max_in_flight),
        rate_per_second=str(endpoint.rate_per_second),
        owner_email=endpoint.owner_email,
        active="on" if endpoint.active else None,
        schools=[s.pk for s in endpoint.schools.all()],
    )
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def admin_client(client, north):
    client.force_login(north.users["district_admin"])
    return client


# --- endpoints ------------------------------------------------------------------------------


def test_create_shows_the_secret_once_and_goes_to_the_endpoint(admin_client, north, loopback):
    page = admin_client.get(admin_url("webhookendpoint_add"))
    assert page.status_code == 200
    html = page.content.decode()
    # Event types are checkboxes grouped by what they are about, each with its description.
    for group in ("Roster", "Behavior", "Operations"):
        assert f"<h4>{group}" in html
    assert "A behavior support request moved to a new state." in html
    assert 'name="district"' not in html  # a district admin works in their own

    response = admin_client.post(
        admin_url("webhookendpoint_add"),
        form_data(schools=[north.school_a.pk]),
        follow=True,
    )
    endpoint = WebhookEndpoint.objects.get(name="Data lake")
    assert response.redirect_chain[-1][0] == admin_url("webhookendpoint_change", endpoint.pk)
    assert endpoint.district == north.district and endpoint.client is None
    assert endpoint.event_types == ["student.updated", "bsr.status_changed"]
    assert list(endpoint.schools.all()) == [north.school_a]
    secret = endpoint.secrets.get()
    shown = [m for m in messages_of(response) if "whsec_" in m]
    assert len(shown) == 1 and secret.secret in shown[0]
    assert secret.revealed_at is not None  # that was its one showing
    # The secret is in no later page, and Reveal says to rotate.
    again = admin_client.get(admin_url("webhookendpoint_change", endpoint.pk))
    assert "whsec_" not in again.content.decode()
    assert "Send test event" in again.content.decode()
    for reveal in (
        admin_client.get(admin_url("webhookendpoint_reveal", endpoint.pk)),
        admin_client.post(admin_url("webhookendpoint_reveal", endpoint.pk)),
    ):
        assert "whsec_" not in reveal.content.decode()
        assert "rotate it to get a new one" in reveal.content.decode()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://localhost/hook",
        "ftp://hooks.example.org/",
        "http://2130706433/hook",  # 127.0.0.1 spelt as a number (loopback not allowed here)
    ],
)
def test_a_refused_url_is_a_field_error(admin_client, url):
    response = admin_client.post(admin_url("webhookendpoint_add"), form_data(url=url))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"url"}, errors
    assert not WebhookEndpoint.objects.filter(name="Data lake").exists()


def test_other_bad_input_is_a_field_error(admin_client, north):
    response = admin_client.post(
        admin_url("webhookendpoint_add"),
        form_data(event_types=[], retry_schedule="5,soon", max_in_flight="0"),
    )
    errors = response.context["adminform"].form.errors
    assert {"event_types", "retry_schedule", "max_in_flight"} <= set(errors)
    response = admin_client.post(
        admin_url("webhookendpoint_add"), form_data(event_types=["no.such"])
    )
    assert "event_types" in response.context["adminform"].form.errors


def test_reveal_once_then_rotate_with_a_grace_period(admin_client, north, system, loopback):
    endpoint, secret = endpoint_for(north, system)  # created outside the admin: never shown
    page = admin_client.get(admin_url("webhookendpoint_reveal", endpoint.pk))
    assert page.status_code == 200 and "whsec_" not in page.content.decode()
    shown = admin_client.post(admin_url("webhookendpoint_reveal", endpoint.pk))
    assert secret in shown.content.decode()
    second = admin_client.post(admin_url("webhookendpoint_reveal", endpoint.pk))
    assert secret not in second.content.decode()
    assert "already revealed" in second.content.decode()
    assert admin_url("webhookendpoint_rotate", endpoint.pk) in second.content.decode()

    form = admin_client.get(admin_url("webhookendpoint_rotate", endpoint.pk))
    assert form.context["form"]["grace_hours"].value() == 24  # settings.WEBHOOKS default
    rotated = admin_client.post(
        admin_url("webhookendpoint_rotate", endpoint.pk), {"grace_hours": "2"}
    )
    html = rotated.content.decode()
    new = re.search(r"whsec_[A-Za-z0-9+/=]+", html).group(0)
    assert new != secret
    old_row, new_row = endpoint.secrets.order_by("created_at")
    assert old_row.secret == secret and new_row.secret == new
    assert (
        timedelta(hours=1, minutes=59) < old_row.expires_at - timezone.now() <= timedelta(hours=2)
    )
    assert new_row.expires_at is None and new_row.revealed_at is not None
    # The endpoint page says what signs now.
    change = admin_client.get(admin_url("webhookendpoint_change", endpoint.pk)).content.decode()
    assert "still signs until" in change and "whsec_" not in change


def test_send_test_event_shows_the_result(admin_client, north, system, receiver):
    endpoint, secret = endpoint_for(north, system, url=receiver.url)
    page = admin_client.get(admin_url("webhookendpoint_send_test", endpoint.pk))
    assert page.status_code == 200 and not receiver.received

    receiver.answers.append(Answer(status=200, body=b'{"received": true}'))
    response = admin_client.post(admin_url("webhookendpoint_send_test", endpoint.pk))
    html = response.content.decode()
    assert "The receiver accepted it" in html and "200" in html
    assert "{&quot;received&quot;: true}" in html
    assert re.search(r"\d+ ms", html)
    (request,) = receiver.wait_for(1)
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "webhook.test"
    assert not WebhookDelivery.objects.exists()  # nothing stored

    receiver.answers.append(Answer(status=500, body=b"\x00\x01\x02binary"))
    html = admin_client.post(admin_url("webhookendpoint_send_test", endpoint.pk)).content.decode()
    assert "answered with an error" in html and "500" in html
    assert "binary body" in html

    # Refused at connect time (the URL changed behind the form): the error class and reason.
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url="http://10.0.0.7/hook")
    html = admin_client.post(admin_url("webhookendpoint_send_test", endpoint.pk)).content.decode()
    assert "No answer" in html and "refused_address" in html


def test_edit_goes_through_the_service_and_unchecking_active_holds(
    admin_client, north, system, loopback
):
    endpoint, _ = endpoint_for(north, system)
    delivery = rename(north, system, "Before")
    assert delivery.status == DeliveryStatus.PENDING
    response = admin_client.post(
        admin_url("webhookendpoint_change", endpoint.pk),
        change_data(endpoint, name="Renamed lake", active=None, schools=[north.school_b.pk]),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    endpoint.refresh_from_db()
    assert endpoint.name == "Renamed lake" and not endpoint.active
    assert endpoint.disabled_reason == "Disabled by a person."
    assert list(endpoint.schools.all()) == [north.school_b]
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.HELD
    # Enabling again releases what was held, in order.
    response = admin_client.post(admin_url("webhookendpoint_enable", endpoint.pk), follow=True)
    assert any("1 held deliveries are being sent" in m for m in messages_of(response))
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    # The audit trail names the admin.
    history = admin_client.get(admin_url("webhookendpoint_history", endpoint.pk))
    assert north.users["district_admin"].username in history.content.decode()


def test_disable_and_enable_pages_and_actions(admin_client, north, system, loopback):
    endpoint, _ = endpoint_for(north, system)
    page = admin_client.get(admin_url("webhookendpoint_disable", endpoint.pk))
    assert "held, not dropped" in page.content.decode()
    admin_client.post(admin_url("webhookendpoint_disable", endpoint.pk))
    endpoint.refresh_from_db()
    assert not endpoint.active and "in the admin" in endpoint.disabled_reason
    admin_client.post(
        admin_url("webhookendpoint_changelist"),
        {"action": "enable_endpoints", "_selected_action": [endpoint.pk]},
    )
    endpoint.refresh_from_db()
    assert endpoint.active
    admin_client.post(
        admin_url("webhookendpoint_changelist"),
        {"action": "disable_endpoints", "_selected_action": [endpoint.pk]},
    )
    endpoint.refresh_from_db()
    assert not endpoint.active


def test_vendor_endpoints_can_be_switched_off_and_on_only(admin_client, north, system, loopback):
    endpoint, _ = endpoint_for(
        north,
        system,
        client=north.api_client,
        name="Reading app hook",
        event_types=["student.updated"],
    )
    page = admin_client.get(admin_url("webhookendpoint_change", endpoint.pk))
    html = page.content.decode()
    assert "Vendor: North Reading App" in html and "belongs to a vendor" in html
    assert set(page.context["adminform"].form.fields) == {"active"}
    assert "reveal-secret" not in html and "rotate-secret" not in html
    response = admin_client.post(
        admin_url("webhookendpoint_change", endpoint.pk), {"name": "Hijacked"}
    )
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.name == "Reading app hook" and not endpoint.active
    refused = admin_client.post(admin_url("webhookendpoint_reveal", endpoint.pk), follow=True)
    assert any("secret is the vendor's" in m for m in messages_of(refused))
    assert endpoint.secrets.get().revealed_at is None


def test_health_fields(admin_client, north, system, loopback):
    endpoint, _ = endpoint_for(north, system)
    delivery = rename(north, system, "Health")
    now = timezone.now()
    for number, (ms, ok) in enumerate([(100, True), (200, True), (3000, False)], start=1):
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=now - timedelta(minutes=number),
            duration_ms=ms,
            status_code=200 if ok else 503,
            succeeded=ok,
        )
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        failing_since=now - timedelta(hours=3), last_success_at=now - timedelta(hours=4)
    )
    html = admin_client.get(admin_url("webhookendpoint_change", endpoint.pk)).content.decode()
    assert "3 attempts, 66.7% succeeded; p95 duration 2720 ms" in html
    assert "1 open (pending or being sent)" in html and "0 held" in html
    listing = admin_client.get(admin_url("webhookendpoint_changelist")).content.decode()
    assert "Failing since" in listing


def test_delete_cancels_open_deliveries_and_keeps_them(admin_client, north, system, loopback):
    endpoint, _ = endpoint_for(north, system)
    delivery = rename(north, system, "Orphan")
    page = admin_client.get(admin_url("webhookendpoint_delete", endpoint.pk))
    assert "1 open delivery" in page.content.decode()
    response = admin_client.post(
        admin_url("webhookendpoint_delete", endpoint.pk), {"post": "yes"}, follow=True
    )
    assert any("1 open delivery" in m and "cancelled" in m for m in messages_of(response))
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.CANCELLED and delivery.endpoint_id is None
    listing = admin_client.get(admin_url("webhookdelivery_changelist")).content.decode()
    assert "north data lake <em>(deleted)</em>" in listing
    detail = admin_client.get(admin_url("webhookdelivery_change", delivery.pk)).content.decode()
    assert "(deleted)" in detail and ">Replay<" not in detail


def test_bulk_delete_uses_the_service(admin_client, north, system, loopback):
    first, _ = endpoint_for(north, system, name="one")
    second, _ = endpoint_for(north, system, name="two")
    rename(north, system, "Both")
    response = admin_client.post(
        admin_url("webhookendpoint_changelist"),
        {"action": "delete_selected", "_selected_action": [first.pk, second.pk], "post": "yes"},
        follow=True,
    )
    assert any("2 open deliveries" in m for m in messages_of(response))
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {
        DeliveryStatus.CANCELLED
    }


def test_superuser_chooses_the_district_and_schools_must_match(
    client, north, south, django_user_model, loopback
):
    root = django_user_model.objects.create_superuser("root", "root@example.org", "x")
    client.force_login(root)
    page = client.get(admin_url("webhookendpoint_add"))
    assert 'name="district"' in page.content.decode()
    response = client.post(
        admin_url("webhookendpoint_add"),
        form_data(district=south.district.pk, schools=[north.school_a.pk]),
    )
    assert "schools" in response.context["adminform"].form.errors
    response = client.post(
        admin_url("webhookendpoint_add"),
        form_data(district=south.district.pk, schools=[south.school_a.pk]),
    )
    assert response.status_code == 302
    assert WebhookEndpoint.objects.get(name="Data lake").district == south.district


# --- deliveries -----------------------------------------------------------------------------


def failed(delivery, finished_at):
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.FAILED,
        attempts=10,
        finished_at=finished_at,
        last_status_code=500,
        last_error="The receiver answered 500.",
    )


def test_delivery_detail_shows_payload_and_attempts(admin_client, north, system, loopback):
    _endpoint, _ = endpoint_for(north, system)
    delivery = rename(north, system, "Payload")
    now = timezone.now()
    WebhookAttempt.objects.create(
        delivery=delivery,
        number=1,
        started_at=now,
        duration_ms=812,
        error_class="timeout",
        error="The receiver did not answer within 15 s.",
    )
    WebhookAttempt.objects.create(
        delivery=delivery,
        number=2,
        started_at=now,
        duration_ms=45,
        status_code=502,
        response_body=b"\x89PNG\r\n\x1a\n\x00\x00binary",
    )
    WebhookAttempt.objects.create(
        delivery=delivery,
        number=3,
        started_at=now,
        duration_ms=30,
        status_code=400,
        response_body=b"x" * 16384,
        response_truncated=True,
    )
    WebhookAttempt.objects.create(
        delivery=delivery,
        number=4,
        started_at=now,
        duration_ms=20,
        status_code=422,
        response_body=b"<script>alert(1)</script>\x1b[31m",
    )
    response = admin_client.get(admin_url("webhookdelivery_change", delivery.pk))
    html = response.content.decode()
    assert response.status_code == 200
    assert '"preferredName": "Payload"' in unescape(html)  # indented JSON
    assert "timeout" in html and "did not answer within 15 s" in html
    assert "812 ms" in html
    assert "&lt;binary body, 16 bytes: 89 50 4e 47" in html
    assert "x" * 16384 in html and "16 KB kept" in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html
    assert "\x1b" not in html
    assert ">Replay<" in html and 'value="Save"' not in html
    # The payload is the student's record: opening it is logged like opening the record.
    entry = AccessLogEntry.objects.get(actor=north.users["district_admin"])
    assert entry.student_id == entry.object_id == north.a1.pk
    assert entry.object_table == "schools_student"
    assert f"/webhookdelivery/{delivery.pk}/" in entry.path


def test_xml_and_form_payloads_are_readable(admin_client, north, system, loopback):
    endpoint_for(north, system, name="xml", body_format="xml")
    xml = rename(north, system, "Xml")
    html = admin_client.get(admin_url("webhookdelivery_change", xml.pk)).content.decode()
    assert "&lt;preferredName&gt;Xml&lt;/preferredName&gt;" in html
    assert "\n    &lt;object&gt;" in html or "  &lt;object&gt;" in html  # indented
    WebhookEndpoint.objects.all().delete()
    endpoint_for(north, system, name="form", body_format="form")
    form = rename(north, system, "Form")
    html = admin_client.get(admin_url("webhookdelivery_change", form.pk)).content.decode()
    assert "type = student.updated" in html and '"preferredName": "Form"' in unescape(html)


def test_replay_one_and_a_selection(admin_client, north, system, loopback):
    _endpoint, _ = endpoint_for(north, system)
    one = rename(north, system, "One")
    two = rename(north, system, "Two")
    pending = rename(north, system, "Three")
    for d in (one, two):
        failed(d, timezone.now())
    page = admin_client.get(admin_url("webhookdelivery_replay", one.pk))
    assert "same webhook-id" in page.content.decode()
    admin_client.post(admin_url("webhookdelivery_replay", one.pk))
    one.refresh_from_db()
    assert one.status == DeliveryStatus.PENDING and one.attempts == 0

    failed(one, timezone.now())
    response = admin_client.post(
        admin_url("webhookdelivery_changelist"),
        {"action": "replay", "_selected_action": [one.pk, two.pk, pending.pk]},
        follow=True,
    )
    assert any(
        "Queued 2 deliveries" in m and "1 already waiting" in m for m in messages_of(response)
    )
    assert set(
        WebhookDelivery.objects.filter(pk__in=[one.pk, two.pk]).values_list("status", flat=True)
    ) == {DeliveryStatus.PENDING}


def test_replay_to_a_disabled_endpoint_is_held(admin_client, north, system, loopback):
    endpoint, _ = endpoint_for(north, system)
    delivery = rename(north, system, "Held")
    failed(delivery, timezone.now())
    services.webhook_endpoint_disable(actor=system, endpoint=endpoint, reason="test")
    admin_client.post(admin_url("webhookdelivery_replay", delivery.pk))
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.HELD


def test_recover_failed_since(admin_client, north, south, system, loopback):
    endpoint, _ = endpoint_for(north, system)
    other, _ = endpoint_for(north, system, name="other")
    old_event = rename(north, system, "Old").event
    WebhookDelivery.objects.filter(endpoint=other).delete()
    recent_event = rename(north, system, "Recent").event
    recent = WebhookDelivery.objects.get(event=recent_event, endpoint=endpoint)
    recent_other = WebhookDelivery.objects.get(event=recent_event, endpoint=other)
    now = timezone.now()
    failed(WebhookDelivery.objects.get(event=old_event, endpoint=endpoint), now - timedelta(days=3))
    failed(recent, now - timedelta(hours=1))
    failed(recent_other, now - timedelta(hours=1))
    south_endpoint, _ = endpoint_for(south, system)
    south_delivery = rename(south, system, "South")
    failed(south_delivery, now - timedelta(hours=1))

    page = admin_client.get(admin_url("webhookdelivery_recover"))
    options = page.context["form"].fields["endpoint"].queryset
    assert set(options) == {endpoint, other}  # never another district's
    since = timezone.localtime(now - timedelta(days=1))
    response = admin_client.post(
        admin_url("webhookdelivery_recover"),
        {"since_0": since.strftime("%Y-%m-%d"), "since_1": since.strftime("%H:%M:%S")},
        follow=True,
    )
    assert any("Queued 2 failed deliveries" in m for m in messages_of(response)), (
        messages_of(response),
        response.context.get("form") and response.context["form"].errors,
    )
    statuses = dict(WebhookDelivery.objects.values_list("pk", "status"))
    assert statuses[recent.pk] == statuses[recent_other.pk] == DeliveryStatus.PENDING
    old_delivery = WebhookDelivery.objects.get(event=old_event, endpoint=endpoint)
    assert statuses[old_delivery.pk] == DeliveryStatus.FAILED  # before "since"
    assert statuses[south_delivery.pk] == DeliveryStatus.FAILED  # another district

    # Only one endpoint's.
    failed(recent, now - timedelta(hours=1))
    failed(recent_other, now - timedelta(hours=1))
    admin_client.post(
        admin_url("webhookdelivery_recover"),
        {
            "since_0": since.strftime("%Y-%m-%d"),
            "since_1": since.strftime("%H:%M:%S"),
            "endpoint": other.pk,
        },
    )
    recent.refresh_from_db()
    recent_other.refresh_from_db()
    assert recent.status == DeliveryStatus.FAILED
    assert recent_other.status == DeliveryStatus.PENDING
    # Another district's endpoint is not a choice.
    response = admin_client.post(
        admin_url("webhookdelivery_recover"),
        {"since_0": "2026-01-01", "since_1": "00:00:00", "endpoint": south_endpoint.pk},
    )
    assert "endpoint" in response.context["form"].errors


def test_delivery_filters(admin_client, north, south, system, loopback):
    student_hook, _ = endpoint_for(north, system, name="students", event_types=["student.updated"])
    incident_hook, _ = endpoint_for(
        north, system, name="incidents", event_types=["incident.updated"]
    )
    endpoint_for(south, system, name="south secret hook")
    renamed = rename(north, system, "Filter")
    model_update(
        instance=north.incidents[north.a1.pk], actor=system, data={"narrative": "Filtered."}
    )
    incident = WebhookDelivery.objects.get(endpoint=incident_hook)
    failed(incident, timezone.now())
    rename(south, system, "Elsewhere")

    def listed(**params):
        response = admin_client.get(admin_url("webhookdelivery_changelist"), params)
        assert response.status_code == 200, response
        return {d.pk for d in response.context["cl"].result_list}

    assert listed() == {renamed.pk, incident.pk}
    assert listed(endpoint__id__exact=student_hook.pk) == {renamed.pk}
    assert listed(type="incident.updated") == {incident.pk}
    assert listed(status__exact="failed") == {incident.pk}
    assert listed(status__exact="pending") == {renamed.pk}
    today = timezone.localdate()
    assert listed(
        created_at__year=today.year, created_at__month=today.month, created_at__day=today.day
    ) == {renamed.pk, incident.pk}
    assert listed(created_at__year=today.year - 1) == set()
    assert listed(q=renamed.event_id) == {renamed.pk}
    html = admin_client.get(admin_url("webhookdelivery_changelist")).content.decode()
    assert "south secret hook" not in html  # the endpoint filter offers this district's only
    assert "Recover failed since" in html


def test_attempt_list_and_detail(admin_client, north, system, loopback):
    endpoint_for(north, system)
    delivery = rename(north, system, "Attempts")
    attempt = WebhookAttempt.objects.create(
        delivery=delivery,
        number=1,
        started_at=timezone.now(),
        duration_ms=91,
        status_code=503,
        response_body=b"busy",
    )
    timeout = WebhookAttempt.objects.create(
        delivery=delivery,
        number=2,
        started_at=timezone.now(),
        duration_ms=15000,
        error_class="timeout",
        error="The receiver did not answer in time.",
    )

    def listed(**params):
        response = admin_client.get(admin_url("webhookattempt_changelist"), params)
        return [a.pk for a in response.context["cl"].result_list]

    assert listed(outcome="http_error") == [attempt.pk]
    assert listed(outcome="no_answer") == listed(error_class="timeout") == [timeout.pk]
    assert listed(outcome="succeeded") == []
    detail = admin_client.get(admin_url("webhookattempt_change", attempt.pk)).content.decode()
    assert "busy" in detail and delivery.event_id in detail


# --- events and the catalogue ---------------------------------------------------------------


def test_event_page_lists_deliveries_and_sends_to_an_endpoint(
    admin_client, north, system, loopback
):
    _endpoint, _ = endpoint_for(north, system)
    delivery = rename(north, system, "Event")
    event = delivery.event
    later, _ = endpoint_for(north, system, name="subscribed later")
    unrelated, _ = endpoint_for(
        north, system, name="incidents only", event_types=["incident.created"]
    )
    listing = admin_client.get(admin_url("webhookevent_changelist"), {"type": "student.updated"})
    assert [e.pk for e in listing.context["cl"].result_list] == [event.pk]
    html = admin_client.get(admin_url("webhookevent_change", event.pk)).content.decode()
    assert "north data lake" in html and '"preferredName": "Event"' in unescape(html)
    assert f"students {north.a1.pk}" in html

    page = admin_client.get(admin_url("webhookevent_send", event.pk))
    choices = set(page.context["form"].fields["endpoint"].queryset)
    assert later in choices and unrelated not in choices  # only endpoints of this type
    response = admin_client.post(
        admin_url("webhookevent_send", event.pk), {"endpoint": later.pk}, follow=True
    )
    created = WebhookDelivery.objects.get(event=event, endpoint=later)
    assert created.status == DeliveryStatus.PENDING
    assert response.redirect_chain[-1][0] == admin_url("webhookdelivery_change", created.pk)


def test_catalogue_page_lists_every_type_with_schema_and_example(admin_client):
    index = admin_client.get(reverse("admin:app_list", args=["webhooks"])).content.decode()
    assert admin_url("catalogue") in index
    response = admin_client.get(admin_url("catalogue"))
    assert response.status_code == 200
    html = response.content.decode()
    for name, entry in catalogue.entries().items():
        assert f'id="{name}"' in html and entry.description in html
    assert "&quot;$schema&quot;: &quot;https://json-schema.org/draft/2020-12/schema&quot;" in html
    assert "evt_01JAB3C4D5E6F7G8H9J0K1M2N3" in html  # the examples


# --- the gate -------------------------------------------------------------------------------


def test_another_districts_rows_are_404(admin_client, north, south, system, loopback):
    endpoint, _ = endpoint_for(south, system)
    delivery = rename(south, system, "Foreign")
    attempt = WebhookAttempt.objects.create(
        delivery=delivery, number=1, started_at=timezone.now(), duration_ms=5, status_code=200
    )
    urls = [
        admin_url(name, endpoint.pk)
        for name in (
            "webhookendpoint_change",
            "webhookendpoint_delete",
            "webhookendpoint_history",
            "webhookendpoint_reveal",
            "webhookendpoint_rotate",
            "webhookendpoint_send_test",
            "webhookendpoint_enable",
            "webhookendpoint_disable",
        )
    ]
    urls += [
        admin_url("webhookdelivery_change", delivery.pk),
        admin_url("webhookdelivery_replay", delivery.pk),
        admin_url("webhookevent_send", delivery.event_id),
    ]
    for url in urls:
        assert admin_client.get(url).status_code == 404, url
        assert admin_client.post(url).status_code == 404, url
    # View-only pages refuse every POST before looking (403 whether the row exists or not).
    for url in (
        admin_url("webhookevent_change", delivery.event_id),
        admin_url("webhookattempt_change", attempt.pk),
    ):
        assert admin_client.get(url).status_code == 404, url
    endpoint.refresh_from_db()
    assert endpoint.active and endpoint.secrets.get().revealed_at is None
    # Actions on a forged selection skip rows the gate hides.
    failed(delivery, timezone.now())
    admin_client.post(
        admin_url("webhookdelivery_changelist"),
        {"action": "replay", "_selected_action": [delivery.pk]},
    )
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert WebhookEvent.objects.filter(district=south.district).count() == 1


@pytest.mark.parametrize("role", ["school_admin", "counselor", "teacher"])
def test_only_district_admins_hold_webhooks(client, north, system, role, loopback):
    endpoint, _ = endpoint_for(north, system)
    client.force_login(north.users[role])
    assert client.get(admin_url("webhookendpoint_changelist")).status_code == 403
    assert client.get(admin_url("webhookdelivery_recover")).status_code == 403
    assert client.get(admin_url("catalogue")).status_code == 403
    assert client.post(admin_url("webhookendpoint_send_test", endpoint.pk)).status_code in (
        403,
        404,
    )
