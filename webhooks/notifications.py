"""Telling an endpoint's owner: at the first delivery that failed for good, and at disable."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail

from webhooks.models import WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)


def recipients(endpoint: WebhookEndpoint) -> list[str]:
    if endpoint.owner_email:
        return [endpoint.owner_email]
    if endpoint.client_id:
        return [endpoint.client.contact_email]
    return []


def notify(kind: str, *, endpoint_id: int, delivery_id: int | None = None) -> None:
    """Send the owner a plain email; a mail outage is logged, never raised into the sender."""
    endpoint = WebhookEndpoint.objects.select_related("client").get(pk=endpoint_id)
    to = recipients(endpoint)
    if not to:
        return
    if kind == "exhausted":
        delivery = WebhookDelivery.objects.select_related("event").get(pk=delivery_id)
        subject = f"Webhook delivery failed for good: {endpoint.name}"
        body = (
            f"The event {delivery.event_id} ({delivery.event.type}) could not be delivered to "
            f"{endpoint.url} after {delivery.attempts} attempts.\n"
            f"Last error: {delivery.last_error}\n\n"
            "It is kept and can be replayed from the admin or the API once the receiver works. "
            "This is the only such message until a delivery succeeds again."
        )
    else:
        subject = f"Webhook endpoint disabled: {endpoint.name}"
        body = (
            f"The endpoint {endpoint.name} ({endpoint.url}) was disabled: "
            f"{endpoint.disabled_reason}\n\n"
            "New events are held, not dropped; they are sent in order when it is enabled again."
        )
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, to)
    except Exception:
        logger.exception("could not email %s about webhook endpoint %s", to, endpoint.pk)
