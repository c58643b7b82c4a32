"""Audit registration and events of the API app."""

from bxos.api import models as m
from bxos.common import events
from bxos.common.audit import register_audit

register_audit(m.ApiClient)
register_audit(m.FieldProfile)
events.register_crud_events("api_client", "API client")
events.register_crud_events("field_profile", "field profile")
