"""The integration engine's rows: integrations, mappings, sync definitions, runs and their trail.

Rows here describe and record syncs; the synced data itself lives in the domain tables
(bxos.schools, bxos.behavior) with lineage columns (``source_system``, ``source_id``,
``last_run_id``). See shared/design/SYNC.md and integrations/pipeline.py.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from bxos.common.constraints import FieldConstraintErrors, in_range, valid_code
from bxos.common.fields import EncryptedTextField
from bxos.common.permissions import Gate
from integrations import choices


class Integration(FieldConstraintErrors, models.Model):
    """A connection to one source system of a district, of one connector type.

    Parameters the type declares are in ``params``; the secret ones in ``secrets``
    (encrypted, JSON), never shown again. ``state`` is the connector's own memory between runs
    (a cached token), encrypted as it may hold credentials. The circuit breaker lives here.
    """

    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=150)
    connector_type = models.CharField(max_length=40)
    source_system = models.SlugField(
        max_length=64,
        help_text="Short name recorded on every synced row (lineage), e.g. 'powerschool'.",
    )
    params = models.JSONField(default=dict, blank=True)
    secrets = EncryptedTextField(blank=True, default="")
    state = EncryptedTextField(blank=True, default="")
    is_active = models.BooleanField(default=True)
    circuit_state = models.CharField(
        max_length=10, choices=choices.CircuitState.choices, default=choices.CircuitState.CLOSED
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    circuit_opened_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_test_at = models.DateTimeField(null=True, blank=True)
    last_test_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    gate = Gate()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["district", "source_system"],
                name="integration_source_system_unique",
                violation_error_message="Another integration of this district already uses "
                "this source system name.",
            ),
            valid_code("circuit_state", choices.CircuitState, name="integration_circuit_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class Crosswalk(FieldConstraintErrors, models.Model):
    """A value table for mappings, e.g. the SIS's race codes to CEDS codes."""

    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    name = models.SlugField(max_length=64)
    description = models.CharField(max_length=300, blank=True)
    values = models.JSONField(default=dict, help_text='Source value to hub value: {"1": "HI7"}.')

    gate = Gate()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["district", "name"],
                name="crosswalk_name_unique",
                violation_error_message="This district already has a crosswalk with this name.",
            )
        ]

    def __str__(self) -> str:
        return self.name


class Mapping(FieldConstraintErrors, models.Model):
    """How one hub entity is filled from an integration's records; points at its current
    version. Versions are never edited: saving rules makes a new one."""

    integration = models.ForeignKey(Integration, on_delete=models.CASCADE, related_name="mappings")
    entity = models.CharField(max_length=40)
    current = models.ForeignKey(
        "MappingVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    gate = Gate(district="integration__district")

    class Meta:
        ordering = ["integration", "entity"]
        constraints = [
            models.UniqueConstraint(
                fields=["integration", "entity"],
                name="mapping_one_per_entity",
                violation_error_message="This integration already has a mapping for this entity.",
            )
        ]

    def __str__(self) -> str:
        return f"{self.integration}: {self.entity}"


class MappingVersion(models.Model):
    """One saved set of mapping rules (see integrations.transforms); a run records which."""

    mapping = models.ForeignKey(Mapping, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    rules = models.JSONField()
    note = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    gate = Gate(district="mapping__integration__district")

    class Meta:
        ordering = ["mapping", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["mapping", "number"], name="mapping_version_unique_number"
            )
        ]

    def __str__(self) -> str:
        return f"{self.mapping} v{self.number}"


class SyncDefinition(FieldConstraintErrors, models.Model):
    """What to sync, how, when, and when to stop and ask: a run is one execution of it."""

    integration = models.ForeignKey(
        Integration, on_delete=models.CASCADE, related_name="definitions"
    )
    name = models.CharField(max_length=150)
    entities = ArrayField(models.CharField(max_length=40), help_text="Hub entities to sync.")
    mode = models.CharField(
        max_length=12, choices=choices.SyncMode.choices, default=choices.SyncMode.FULL
    )
    direction = models.CharField(
        max_length=14, choices=choices.Direction.choices, default=choices.Direction.ONE_WAY
    )
    conflict_policy = models.CharField(
        max_length=12,
        choices=choices.ConflictPolicy.choices,
        default=choices.ConflictPolicy.SOURCE_WINS,
        help_text="Bidirectional syncs: which side wins when both changed a record.",
    )
    schedule_kind = models.CharField(
        max_length=10, choices=choices.ScheduleKind.choices, default=choices.ScheduleKind.MANUAL
    )
    interval_minutes = models.PositiveIntegerField(null=True, blank=True)
    crontab = models.CharField(
        max_length=100, blank=True, help_text="Five fields: minute hour day month weekday."
    )
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    inbound_secret = EncryptedTextField(blank=True, default="", editable=False)
    hold_removal_pct = models.PositiveSmallIntegerField(
        "hold when removing more than (%)",
        default=10,
        help_text="Hold the run for approval when it would remove more than this share of an "
        "entity's rows from this source.",
    )
    hold_change_pct = models.PositiveSmallIntegerField(
        "hold when changing more than (%)",
        default=100,
        help_text="Hold when updates plus removals exceed this share of existing rows (100: "
        "never).",
    )
    hold_min_rows = models.PositiveIntegerField(
        default=20, help_text="Thresholds apply once an entity has at least this many rows."
    )
    cursor = models.CharField(max_length=100, blank=True, editable=False)
    push_cursor = models.BigIntegerField(
        default=0,
        editable=False,
        help_text="Bidirectional syncs: hub changes up to this change version were pushed.",
    )
    push_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When the last push finished: changes after it count as new on either side.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    gate = Gate(district="integration__district")

    class Meta:
        ordering = ["integration", "name"]
        constraints = [
            valid_code("mode", choices.SyncMode, name="syncdef_mode_valid"),
            valid_code("direction", choices.Direction, name="syncdef_direction_valid"),
            valid_code("conflict_policy", choices.ConflictPolicy, name="syncdef_policy_valid"),
            valid_code("schedule_kind", choices.ScheduleKind, name="syncdef_schedule_valid"),
            in_range("hold_removal_pct", 0, 100, name="syncdef_removal_pct_range"),
            in_range("hold_change_pct", 0, 100, name="syncdef_change_pct_range"),
            models.CheckConstraint(
                condition=~Q(schedule_kind="interval") | Q(interval_minutes__gte=1),
                name="syncdef_interval_needs_minutes",
                violation_error_message="An interval schedule needs a number of minutes.",
            ),
            models.CheckConstraint(
                condition=~Q(schedule_kind="crontab") | ~Q(crontab=""),
                name="syncdef_crontab_needs_expression",
                violation_error_message="A crontab schedule needs an expression.",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class SyncRun(models.Model):
    """One execution of a sync definition: status, counts, progress, diff and log."""

    definition = models.ForeignKey(SyncDefinition, on_delete=models.CASCADE, related_name="runs")
    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(
        max_length=12, choices=choices.RunStatus.choices, default=choices.RunStatus.QUEUED
    )
    trigger = models.CharField(
        max_length=10, choices=choices.RunTrigger.choices, default=choices.RunTrigger.MANUAL
    )
    mode = models.CharField(max_length=12, choices=choices.SyncMode.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    phase = models.CharField(max_length=80, blank=True)
    total = models.BigIntegerField(default=0)
    processed = models.BigIntegerField(default=0)
    read_count = models.BigIntegerField("read", default=0)
    created_count = models.BigIntegerField("created", default=0)
    updated_count = models.BigIntegerField("updated", default=0)
    unchanged_count = models.BigIntegerField("unchanged", default=0)
    deleted_count = models.BigIntegerField("deleted", default=0)
    failed_count = models.BigIntegerField("failed", default=0)
    skipped_count = models.BigIntegerField("skipped", default=0)
    mapping_versions = models.JSONField(default=dict, blank=True)
    cursor_before = models.CharField(max_length=100, blank=True)
    cursor_after = models.CharField(max_length=100, blank=True)
    diff = models.JSONField(default=dict, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    message = models.TextField(blank=True)
    log = models.TextField(blank=True)
    upload = models.FileField(upload_to="sync-uploads/", blank=True)
    staging = models.JSONField(default=dict, blank=True, editable=False)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    # A rollback is asked for on a page and carried out by a worker, in the asker's name
    # (integrations.services.run_rollback): who asked and when stay on the run.
    rollback_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    rollback_requested_at = models.DateTimeField(null=True, blank=True)
    #: The finished status the run goes back to if its rollback fails.
    status_before_rollback = models.CharField(max_length=12, blank=True, editable=False)
    rolled_back_at = models.DateTimeField(null=True, blank=True)

    gate = Gate()

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["definition", "-id"], name="syncrun_definition_recent"),
            # The sweep for runs whose worker died (services.runs_reap_abandoned) reads only
            # these, every few minutes, among years of finished runs.
            models.Index(
                fields=["status"],
                condition=Q(status__in=[choices.RunStatus.RUNNING, choices.RunStatus.ROLLING_BACK]),
                name="syncrun_worked_on",
            ),
        ]
        constraints = [valid_code("status", choices.RunStatus, name="syncrun_status_valid")]

    def __str__(self) -> str:
        return f"Run #{self.pk} of {self.definition}"

    @property
    def percent(self) -> int:
        if self.status in choices.FINISHED:
            return 100
        if not self.total:
            return 0
        return min(100, int(self.processed * 100 / self.total))

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class RecordError(models.Model):
    """One record that could not be synced: where it was, which field, why, and its data.

    Open errors are retried on the next run of the same definition until they succeed or an
    admin dismisses them.
    """

    run = models.ForeignKey(SyncRun, on_delete=models.CASCADE, related_name="errors")
    definition = models.ForeignKey(
        SyncDefinition, on_delete=models.CASCADE, related_name="record_errors"
    )
    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    entity = models.CharField(max_length=40)
    file = models.CharField(max_length=200, blank=True)
    line = models.BigIntegerField(null=True, blank=True)
    field = models.CharField(max_length=100, blank=True)
    reason = models.TextField()
    source_id = models.CharField(max_length=255, blank=True)
    raw = models.JSONField(null=True, blank=True)
    status = models.CharField(
        max_length=10, choices=choices.ErrorStatus.choices, default=choices.ErrorStatus.OPEN
    )
    created_at = models.DateTimeField(auto_now_add=True)

    gate = Gate()

    class Meta:
        ordering = ["run", "entity", "line", "id"]
        indexes = [
            models.Index(fields=["definition", "entity", "status"], name="recorderror_open_by_def")
        ]

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file or self.entity
        return f"{where} {self.field}: {self.reason}"


class RunChange(models.Model):
    """A row a run changed, with its before-image, so the run can be rolled back exactly.

    Inserted rows need no image (rollback deletes them); updated and deleted rows keep their
    full row as JSON. Kept until the next run of the same definition succeeds.
    """

    run = models.ForeignKey(SyncRun, on_delete=models.CASCADE, related_name="changes")
    table_name = models.CharField(max_length=128)
    object_id = models.BigIntegerField()
    op = models.CharField(max_length=6, choices=choices.ChangeOp.choices)
    before = models.JSONField(null=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["run", "table_name"], name="runchange_run_table")]

    def __str__(self) -> str:
        return f"{self.op} {self.table_name} #{self.object_id}"


class RecordFingerprint(models.Model):
    """What a definition's last successful merge of one source record looked like, so the next
    run can skip mapping a record that cannot have changed (benchmark B2's re-run).

    ``fingerprint`` is a 64-bit hash of the mapping's signature (rules, crosswalks, read
    settings) plus the record's raw text and the text of the rows joined to it; ``hub_id``
    and ``hub_change_version`` name the hub row the merge left. A record is skipped only while
    both still hold: any hub-side write (an edit, a rollback's restore, a removal) changes the
    row's change version, so the record is mapped and compared again.

    Written and read only by set-wise SQL in integrations/pipeline.py; never per row.
    """

    pk = models.CompositePrimaryKey("definition", "entity", "source_id")
    # The primary key leads with the definition: a separate index on it would only slow the
    # merge's upserts.
    definition = models.ForeignKey(
        SyncDefinition, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    entity = models.CharField(max_length=40)
    source_id = models.CharField(max_length=255)
    fingerprint = models.BigIntegerField(
        help_text="64-bit hash of the signature, row and joined rows (see pipeline)."
    )
    hub_id = models.BigIntegerField()
    hub_change_version = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.entity} {self.source_id} -> #{self.hub_id}"


class FingerprintMark(models.Model):
    """The change version below which a definition's fingerprints of one entity are known to
    match the hub: every hub row of the entity's table in the district written at or below it
    was written before the fingerprints' last full check (a run that read the whole entity:
    each fingerprint was then kept, stored again or forgotten).

    Staging then checks only the district's rows written above it against their fingerprints,
    instead of reading every hub row (benchmark B2's re-run). Moved only by a complete read's
    merge, in its transaction, to the safe change version its staging saw; a delta leaves most
    fingerprints unchecked, so it keeps the mark where it was. An older mark is never wrong,
    only slower. See Stager._keep_unchanged and docs/development/decisions.md.
    """

    pk = models.CompositePrimaryKey("definition", "entity")
    definition = models.ForeignKey(
        SyncDefinition, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    entity = models.CharField(max_length=40)
    change_version = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.entity} checked to #{self.change_version}"


class PushedAction(FieldConstraintErrors, models.Model):
    """A discipline action a bidirectional push sent to the source for a hub incident.

    Why a record: the source may hold actions under the same identifier that it owns itself
    (another date, another student, entered by the district in the SIS), and the push must
    never delete those. A removal in the hub is carried to the source only for the actions
    recorded here, found by their natural key (``identifier``, ``student``, ``action_date``:
    the Ed-Fi disciplineAction key). Replaced when a new date or student replaces the action,
    deleted when the action is deleted in the source (or the source keeps it under the conflict
    policy: it is the source's then). See integrations/push.py.

    Written ahead: the record is committed *before* the POST that sends the action, pending
    (``sent_at`` null), and confirmed (``sent_at`` set) when the source accepted it, or deleted
    again when the connector reports it sent nothing. A worker that dies between the source
    accepting the POST and the confirmation leaves a pending record, never none: a pending
    record is taken as possibly sent, so a later push sends the same natural key again (an
    upsert) and confirms it, or deletes the action in the source when the hub removed it (a
    404 there: gone already, or never sent). A pending record has no ``resource_id``: that is
    the source's answer, which it has not had.

    ``incident_id`` and ``hub_action_id`` are plain ids, not foreign keys: the record has to
    outlive the hub rows until the delete has reached the source. A tombstone of
    ``hub_action_id`` (the hub action last sent) is how the push finds an incident whose action
    was removed (deleting an action does not change the incident's change version).
    """

    #: SyncConflict.entity of a removal that conflicts with a change in the source.
    CONFLICT_ENTITY = "discipline_action"

    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    integration = models.ForeignKey(
        Integration, on_delete=models.CASCADE, related_name="pushed_actions"
    )
    run = models.ForeignKey(
        SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    incident_id = models.BigIntegerField(help_text="The hub incident the action was sent for.")
    hub_action_id = models.BigIntegerField(help_text="The hub incident action last sent.")
    incident_key = models.CharField(
        max_length=255, help_text="The source id the incident was sent under."
    )
    identifier = models.CharField(max_length=36)
    student = models.CharField(max_length=64, help_text="The student's id in the source.")
    action_date = models.DateField()
    resource_id = models.CharField(
        max_length=64, blank=True, help_text="The source's resource id, when it said."
    )
    sent_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the source accepted the action; empty while its send is pending.",
    )

    gate = Gate()

    class Meta:
        ordering = ["integration", "incident_id", "action_date"]
        constraints = [
            models.UniqueConstraint(
                fields=["integration", "identifier", "student", "action_date"],
                name="pushed_action_natural_key_unique",
                violation_error_message="This action is already recorded as sent.",
            ),
            models.CheckConstraint(
                condition=~Q(identifier="") & ~Q(student="") & ~Q(incident_key=""),
                name="pushed_action_keys_not_blank",
                violation_error_message="A sent action needs its identifier, student and "
                "incident key.",
            ),
            models.CheckConstraint(
                condition=Q(sent_at__isnull=False) | Q(resource_id=""),
                name="pushed_action_pending_has_no_resource_id",
                violation_error_message="An action whose send is pending has no resource id "
                "yet: the source's answer gives it.",
            ),
        ]
        indexes = [
            models.Index(fields=["integration", "incident_id"], name="pushedaction_by_incident"),
            models.Index(
                fields=["integration", "hub_action_id"], name="pushedaction_by_hub_action"
            ),
        ]

    def __str__(self) -> str:
        pending = ", send pending" if self.pending else ""
        return f"{self.source_id} (incident #{self.incident_id}{pending})"

    @property
    def pending(self) -> bool:
        """Recorded ahead of its send, not confirmed: possibly in the source."""
        return self.sent_at is None

    @property
    def source_id(self) -> str:
        """The action's natural key as one string (as the Ed-Fi pull composes it)."""
        return f"{self.identifier}|{self.action_date.isoformat()}|{self.student}"

    @property
    def key(self) -> dict[str, str]:
        """The natural key in the vocabulary of push rows and PushResult.sent_action."""
        return {
            "identifier": self.identifier,
            "student": self.student,
            "date": self.action_date.isoformat(),
        }


class IdentityReview(FieldConstraintErrors, models.Model):
    """An incoming person who may be someone the hub already has: a person decides.

    Same name and birth date as an existing person but different identifiers. Never merged
    automatically. A merge links the existing row to the source record (keeping the prior
    lineage in ``before`` so it can be reversed); "distinct" lets the next run create a new
    person.
    """

    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    integration = models.ForeignKey(
        Integration, on_delete=models.CASCADE, related_name="identity_reviews"
    )
    run = models.ForeignKey(
        SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    entity = models.CharField(max_length=40)
    source_id = models.CharField(max_length=255)
    incoming = models.JSONField(help_text="The incoming record's mapped fields.")
    candidate_id = models.BigIntegerField(help_text="The existing row it may be.")
    reason = models.CharField(max_length=300)
    status = models.CharField(
        max_length=10, choices=choices.ReviewStatus.choices, default=choices.ReviewStatus.OPEN
    )
    before = models.JSONField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    gate = Gate()

    class Meta:
        ordering = ["status", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["integration", "entity", "source_id"],
                condition=Q(status="open"),
                name="identity_review_one_open",
            ),
            valid_code("status", choices.ReviewStatus, name="identity_review_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.entity} {self.source_id}: {self.reason}"


class ConflictStatus(models.TextChoices):
    OPEN = "open", "Waiting for a decision"
    RESOLVED_HUB = "resolved_hub", "Resolved: the hub's version was kept"
    RESOLVED_SOURCE = "resolved_source", "Resolved: the source's version was kept"
    DISMISSED = "dismissed", "Dismissed (left as it is on both sides)"


class SyncConflict(FieldConstraintErrors, models.Model):
    """A record a bidirectional sync found changed on both sides, under the manual policy.

    Neither side is changed until an admin decides (integrations.push.conflict_resolve):
    ``hub`` is the row the hub would push, ``source`` the source's record as it was read.
    While a conflict is open the record is not pushed; a later run refreshes both snapshots.
    """

    district = models.ForeignKey("schools.District", on_delete=models.PROTECT, related_name="+")
    definition = models.ForeignKey(
        SyncDefinition, on_delete=models.CASCADE, related_name="conflicts"
    )
    run = models.ForeignKey(
        SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="conflicts"
    )
    entity = models.CharField(max_length=40)
    object_id = models.BigIntegerField(help_text="The hub row (e.g. the incident's id).")
    source_id = models.CharField(max_length=255, help_text="The record's id in the source.")
    hub = models.JSONField(help_text="The hub's values, as they would be pushed.")
    source = models.JSONField(help_text="The source's record when the conflict was found.")
    status = models.CharField(
        max_length=16, choices=ConflictStatus.choices, default=ConflictStatus.OPEN
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    gate = Gate()

    class Meta:
        ordering = ["status", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["definition", "entity", "object_id"],
                condition=Q(status="open"),
                name="sync_conflict_one_open",
                violation_error_message="This record already has an open conflict.",
            ),
            valid_code("status", ConflictStatus, name="sync_conflict_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.entity} {self.source_id or self.object_id}: {self.get_status_display()}"
