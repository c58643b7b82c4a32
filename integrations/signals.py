"""Audit registration of the engine's configuration rows (secrets masked)."""

from bxos.common.audit import register_audit
from integrations.models import (
    Crosswalk,
    IdentityReview,
    Integration,
    Mapping,
    MappingVersion,
    SyncConflict,
    SyncDefinition,
)

register_audit(Integration, mask=("secrets", "state"), exclude=("state",))
register_audit(Crosswalk)
register_audit(Mapping)
register_audit(MappingVersion)
register_audit(SyncDefinition, mask=("inbound_secret",))
register_audit(IdentityReview)
register_audit(SyncConflict)
