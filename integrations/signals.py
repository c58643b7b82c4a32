"""Audit registration of the engine's configuration rows (secrets masked)."""

from bxos.common.audit import register_audit
from integrations.models import (
    Crosswalk,
    IdentityReview,
    Integration,
    Mapping,
    MappingVersion,
    PushedAction,
    SyncConflict,
    SyncDefinition,
)

# Secrets never reach the audit log: auditlog masks only part of a value.
register_audit(Integration, exclude=("secrets", "state"))
register_audit(Crosswalk)
register_audit(Mapping)
register_audit(MappingVersion)
register_audit(SyncDefinition, exclude=("inbound_secret",))
register_audit(IdentityReview)
register_audit(SyncConflict)
register_audit(PushedAction)
