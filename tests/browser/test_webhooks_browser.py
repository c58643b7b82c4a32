"""A district admin sets up a webhook endpoint in a real browser, sends a test event, and reads a
delivery with its attempts."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from bxos.common.services import model_update
from tests.browser.conftest import screenshot
from tests.browser.test_admin_browser import login
from tests.webhooks.receiver import Answer, Receiver
from webhooks import dispatch
from webhooks.models import WebhookDelivery, WebhookEndpoint

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def receiver(settings):
    # The receiver listens on 127.0.0.1, which the outbound guard refuses unless told.
    settings.OUTBOUND_HTTP = {**settings.OUTBOUND_HTTP, "ALLOW_LOOPBACK": True}
    with Receiver() as r:
        yield r


def test_district_admin_creates_an_endpoint_and_sends_a_test_event(
    page, live_server, north, receiver
):
    login(page, live_server, north.users["district_admin"].username)
    page.goto(f"{live_server.url}/admin/webhooks/")
    assert page.locator("#webhook-catalogue-link").count() == 1
    screenshot(page, "webhooks-app-index")

    page.goto(f"{live_server.url}/admin/webhooks/webhookendpoint/add/")
    page.fill("#id_name", "District data lake")
    # A refused address first: a field error, not a crash.
    page.fill("#id_url", "http://169.254.169.254/latest/meta-data")
    page.check("input[name=event_types][value='student.updated']")
    page.check("input[name=event_types][value='bsr.status_changed']")
    page.fill("#id_owner_email", "data@north.example.org")
    page.click("input[name=_save]")
    page.wait_for_selector(".errornote")
    assert page.locator(".field-url .errorlist").count() == 1
    screenshot(page, "webhook-endpoint-refused-url")

    page.fill("#id_url", receiver.url)
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist")
    messages = page.locator(".messagelist").inner_text()
    secret = re.search(r"whsec_[A-Za-z0-9+/=]+", messages).group(0)
    endpoint = WebhookEndpoint.objects.get(name="District data lake")
    assert endpoint.district == north.district
    assert endpoint.event_types == ["bsr.status_changed", "student.updated"]
    screenshot(page, "webhook-endpoint-created")

    page.click("#webhook-send-test")
    page.wait_for_selector("input[type=submit][value='Send test event']")
    receiver.answers.append(Answer(status=200, body=b'{"received": true}'))
    page.click("input[type=submit][value='Send test event']")
    page.wait_for_selector("#webhook-test-result")
    result = page.locator("#webhook-test-result").inner_text()
    assert "accepted" in result and "200" in result and '"received": true' in result
    (request,) = receiver.wait_for(1)
    assert Webhook(secret).verify(request.body, request.headers)["type"] == "webhook.test"
    screenshot(page, "webhook-send-test-result")

    page.goto(f"{live_server.url}/admin/webhooks/webhookendpoint/catalogue/#student.updated")
    entry = page.locator("details[id='student.updated']")
    assert entry.get_attribute("open") is not None  # the link opens its type
    assert '"preferredName"' in entry.inner_text()
    page.locator("details[id='bsr.status_changed'] summary").click()
    screenshot(page, "webhook-event-catalogue")


def test_district_admin_reads_a_delivery_and_its_attempts(page, live_server, north, receiver):
    from tests.webhooks.test_admin import endpoint_for

    endpoint, _ = endpoint_for(north, north.users["district_admin"], url=receiver.url)
    receiver.answers.append(Answer(status=503, body=b"Service unavailable: maintenance"))
    receiver.answers.append(Answer(status=200, body=b'{"ok": true}'))
    model_update(
        instance=north.a1, actor=north.users["district_admin"], data={"preferred_name": "Avi"}
    )
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert dispatch.dispatch_once() == 1
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert dispatch.dispatch_once() == 1
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and delivery.attempts == 2

    login(page, live_server, north.users["district_admin"].username)
    page.goto(f"{live_server.url}/admin/webhooks/webhookendpoint/")
    screenshot(page, "webhook-endpoint-list")
    page.goto(f"{live_server.url}/admin/webhooks/webhookdelivery/")
    rows = page.locator("#result_list tbody tr").all_inner_texts()
    assert len(rows) == 1 and "student.updated" in rows[0] and "Succeeded" in rows[0]
    screenshot(page, "webhook-delivery-list")

    page.locator("#result_list tbody tr a").first.click()
    page.wait_for_selector("#tries-group")
    text = page.locator("#content-main").inner_text()
    assert '"preferredName": "Avi"' in text
    assert "Service unavailable: maintenance" in text and "503" in text
    screenshot(page, "webhook-delivery-detail")

    page.click(".field-event_link a")
    page.wait_for_selector("#deliveries-group")
    assert "north data lake" in page.locator("#deliveries-group").inner_text()
    screenshot(page, "webhook-event-detail")
    page.goto(f"{live_server.url}/admin/webhooks/webhookevent/")
    screenshot(page, "webhook-event-list")

    page.goto(f"{live_server.url}/admin/webhooks/webhookendpoint/{endpoint.pk}/change/")
    health = page.locator(".field-last_day").inner_text()
    assert "2 attempts, 50.0% succeeded" in health
    screenshot(page, "webhook-endpoint-health")

    page.click("text=Rotate secret")
    assert page.locator("#id_grace_hours").input_value() == "24"
    page.fill("#id_grace_hours", "2")
    page.click("input[type=submit][value='Rotate secret']")
    new_secret = page.locator("#webhook-secret").inner_text()
    assert new_secret.startswith("whsec_") and "keeps signing" in page.content()
    screenshot(page, "webhook-rotated-secret")

    page.goto(f"{live_server.url}/admin/webhooks/webhookdelivery/")
    page.click("text=Recover failed since")
    page.click(".field-since .datetimeshortcuts a >> nth=0")  # "Today"
    page.click(".field-since .datetimeshortcuts a >> nth=2")  # "Now"
    screenshot(page, "webhook-recover-form")
    page.click("input[type=submit][value='Recover']")
    page.wait_for_selector(".messagelist")
    assert "nothing to recover" in page.locator(".messagelist").inner_text()
    screenshot(page, "webhook-recovered")


# --- the page a district admin reads ----------------------------------------------------------


def test_the_history_page_shows_what_the_system_did_and_why(
    north,
    receiver,
    live_server,
    page,
):
    """In a real browser: the endpoint's History names the system and says why it started
    failing and why it was disabled, next to the admin's own creation."""
    from tests.webhooks.test_health_audit import again, make_endpoint, rename

    person = north.users["district_admin"]
    endpoint, _ = make_endpoint(north, person, receiver.url)
    receiver.answers.extend([Answer(status=500, body=b"boom"), Answer(status=410)])
    rename(north, "One")
    dispatch.dispatch_once()
    again()
    dispatch.dispatch_once()
    endpoint.refresh_from_db()
    assert not endpoint.active

    login(page, live_server, person.username)
    page.goto(f"{live_server.url}/admin/webhooks/webhookendpoint/{endpoint.pk}/history/")
    entries_shown = page.locator(".auditlog-entry").all_inner_texts()
    disabled, failing = entries_shown[0], entries_shown[1]  # newest first
    assert "system" in disabled and "The receiver answered 410 Gone." in disabled
    assert "Started failing: The receiver answered 500." in failing and "system" in failing
    assert person.username in entries_shown[-1]  # the creation, by the admin
    screenshot(page, "webhook-endpoint-history")
