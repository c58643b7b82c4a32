"""Audit registration and event catalogue of the behavior domain."""

from auditlog.registry import auditlog

from bxos.behavior import models as m
from bxos.common import events

AUDIT_EXCLUDE = ["change_version", "updated_at", "created_at"]

auditlog.register(m.Descriptor)
for model in (
    m.Incident,
    m.IncidentAction,
    m.IncidentParticipant,
    m.BehaviorSupportRequest,
    m.BsrTransition,
):
    auditlog.register(model, exclude_fields=AUDIT_EXCLUDE)
# Confidential notes are encrypted at rest; the audit log records that they changed, not what.
auditlog.register(m.Intervention, exclude_fields=AUDIT_EXCLUDE, mask_fields=["confidential_notes"])

for entity, label in (
    ("incident", "behavior incident"),
    ("incident_action", "incident action"),
    ("incident_participant", "incident participant"),
    ("bsr", "behavior support request"),
    ("intervention", "intervention"),
    ("descriptor", "code list entry"),
):
    events.register_crud_events(entity, label)
events.register_event_type("bsr.status_changed", "A behavior support request moved to a new state.")
events.register_event_type(
    "bsr_transition.created", "A behavior support request state change was recorded."
)
