"""Audit registration and events of the API app."""

from bxos.api import models as m
from bxos.common import events
from bxos.common.audit import register_audit

register_audit(m.ApiClient)
register_audit(m.FieldProfile)
register_audit(m.ThrottleRule)
register_audit(m.ThrottleException)
events.register_crud_events("api_client", "API client")
events.register_crud_events("field_profile", "field profile")
events.register_crud_events("throttle_rule", "throttle rule")
events.register_crud_events("throttle_exception", "throttle exception")
