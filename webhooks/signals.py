"""The webhook app's event types, audit registration and the outbox subscriber."""

from auditlog.registry import auditlog
from django.db.models.signals import m2m_changed, post_delete, post_save

from bxos.api.models import ApiClient, FieldProfile
from bxos.common import events
from webhooks import catalogue, outbox
from webhooks.models import WebhookEndpoint

catalogue.register_types()
events.register_crud_events("webhook_endpoint", "webhook endpoint")
# Secrets are never written to the audit log, only that they changed.
auditlog.register(WebhookEndpoint, exclude_fields=["updated_at"])
events.subscribe(events.WILDCARD, outbox.on_domain_event, in_transaction=True)

# Who receives what is memoised per transaction (outbox._subscriptions); a change to any of
# its inputs in the same transaction must be seen by the next event.
for _model in (WebhookEndpoint, ApiClient, FieldProfile):
    post_save.connect(outbox.forget_subscriptions, sender=_model, weak=False)
    post_delete.connect(outbox.forget_subscriptions, sender=_model, weak=False)
for _through in (WebhookEndpoint.schools.through, ApiClient.allowed_schools.through):
    m2m_changed.connect(outbox.forget_subscriptions, sender=_through, weak=False)
