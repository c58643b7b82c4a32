"""The webhook app's event types, audit registration and the outbox subscriber."""

from auditlog.registry import auditlog

from bxos.common import events
from webhooks import catalogue, outbox
from webhooks.models import WebhookEndpoint

catalogue.register_types()
events.register_crud_events("webhook_endpoint", "webhook endpoint")
# Secrets are never written to the audit log, only that they changed.
auditlog.register(WebhookEndpoint, exclude_fields=["updated_at"])
events.subscribe(events.WILDCARD, outbox.on_domain_event, in_transaction=True)
