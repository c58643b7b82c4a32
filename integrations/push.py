"""Bidirectional syncs: hub incidents pushed to the source under the definition's conflict policy.

``run_push`` runs after a bidirectional run has merged what it pulled (see
``services.run_execute``). It sends the hub's ``behavior.Incident`` rows that changed since the
definition's ``push_cursor`` to the source through the connector's ``push("incident", rows)``
(today only Ed-Fi writes; its ``fetch_incident`` and ``incident_values`` give the source's side).

Which incidents: those of the run's district whose change version, or the change version of
one of their actions, is above ``push_cursor`` and at or below a safe upper bound taken first
(``safe_change_version``: a writer that has not committed yet cannot be skipped); and those an
action a push sent was deleted from within the same bounds (see "Actions" below). An incident
is pushable when its school and student both came from this integration's source system (their
``source_id`` is what the source knows them by); others are skipped, counted and logged.

What the source knows: an incident with lineage from this source (``source_id``
``schoolId|incidentIdentifier``) is an update of that record; any other is new and gets the
stable identifier ``BX{pk}``, so a push that is retried after a failure upserts the same record
instead of creating a second one. After a successful push a new incident gets its lineage. An
incident whose lineage is another system's keeps it (that system matches the incident by it):
the source has it under its stable identifier once a push sent it (``find_incident_key``), and
then it is an update of that record like a known one (compared, settled under the policy, sent
with ``If-Match``, in the school the source has it in), never a second POST.

Conflicts: ``push_at`` is when the last push step finished. A record changed in the hub
(its or its action's ``updated_at``) and in the source (``_lastModifiedDate``) after that time,
with values that now differ, is a conflict, settled by the definition's policy: source wins (the
hub takes the source's date, time and behavior through the incident services), hub wins (push),
newest wins (the side changed last; a tie goes to the source, the system of record), manual (a
:class:`SyncConflict` row; neither side changes, and the record is not pushed while the conflict
is open). A decision on a conflict moves that record's baseline to the decision time, so the
state the admin chose is not itself taken for a new change on both sides.

Why time is compared at all: the change version says the hub changed, but not when relative to
the source, and the push itself changes the source's ``_lastModifiedDate``. ``push_at`` is
therefore taken *after* the step's last write, and values are compared before anything is
called a conflict, so a record the two sides agree on never is one.

Optimistic writes: an update of a record the source has carries the version of it the engine
read and decided on (``sending_row``: its ETag, sent by the Ed-Fi connector as ``If-Match``).
When the source changed the record in between, it refuses the write (HTTP 412, a ``conflict``
push result), nothing is written, and the record is decided again on the version just read:
a change on both sides, settled by the policy (a second refusal in the same run is a failure,
retried next run).

Deletes: incidents the hub deleted after the cursor (their tombstones, stamped from the same
change version sequence) are deleted in the source with their discipline actions and student
behavior associations (``connector.delete_incident``), when the source knows them: the
tombstone's lineage is this source's, or (lineage from another system) the source has the
incident under its stable identifier. A record the source changed after the last push is a
conflict between the hub's delete and the source's change, under the same policy; source wins
keeps it in the source (the hub does not resurrect it), manual review records a
:class:`SyncConflict` whose hub side is ``{"deleted": true, ...}``. An incident the source no
longer has needs nothing.

Actions: the push sends an incident's first action as one source action per incident and
student (identifier ``incident identifier[:36]``) and records each it sent
(:class:`~integrations.models.PushedAction`: integration, hub incident and action ids, the
action's natural key and resource id), because the identifier alone cannot tell an action it
sent from one the source holds of its own under the same identifier, and the push must never
delete the source's own. The record is written ahead (``incident_send``): before the
connector sends anything, the key it is about to POST (``connector.planned_action``, computed
by the code that builds the POST) is committed as a pending record; when the connector answers,
the action it sent (``PushResult.sent_action``) is confirmed, the ones it dropped
(``dropped_actions``) are forgotten, and a pending record it did not send (it failed before the
POST, or the source refused it) is deleted again. A worker that dies after the source accepted
the POST leaves the pending record, never none, so the action can still be removed: a pending
record is taken as possibly sent. The next push of the incident sends the same key again (an
upsert: one action in the source) and confirms it; a removal in the hub deletes it in the
source (not there: gone already, nothing to do), without the conflict check of a confirmed
one, since the dead push's own write is newer than the last baseline (see
docs/development/decisions.md). A send carries the record, pending keys included
(``row["sent_actions"]``): an action moved to another day (or student) replaces only a
recorded one. When the hub no longer has an action for an incident, the recorded ones are
deleted in the source, each with ``If-Match`` on the version just read (gone already: nothing
to do). Deleting an action changes no version of its incident, so the incident is selected by
the action's tombstone, joined to the record by the hub action's id: every path that deletes
an action (a service, an admin inline, a cascade) writes a tombstone from the same change
version sequence, so the cursor and safe upper bound hold for it unchanged (a service that
touched the incident would miss the paths that bypass it). A sent action the source changed
after the baseline is a conflict between the hub's removal and the source's change, settled
as an incident delete is: hub wins deletes it, source wins keeps it and forgets it (the source's
own from then on, never removed by a later push), manual review records a
:class:`SyncConflict` of entity ``PushedAction.CONFLICT_ENTITY`` keyed by the hub action's id,
which holds that removal until decided. A refused delete is a ``RecordError`` (source id: the
action's natural key) and stays above the cursor. An incident deleted in the hub takes its
actions with it in the source (``delete_incident``), and its records go.

The cursor: per-row failures (the source refusing a record) become ``RecordError`` rows and stay
above the cursor, which advances only to just below the lowest failed change version, so they
are retried next run. When the source cannot be reached at all, nothing moves: the run's
message says so and the next run starts from the same point.
"""

from __future__ import annotations

import datetime as dt
import re
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from django.core.exceptions import ValidationError
from django.db.models import F, Max, Q, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from bxos.behavior import choices as bch
from bxos.behavior.models import Descriptor, Incident, IncidentAction
from bxos.common.audit import acting_as
from bxos.common.db import safe_change_version
from bxos.common.models import Tombstone
from bxos.common.services import model_save, model_update, write_as
from integrations import services
from integrations.choices import ConflictPolicy, ErrorStatus, RunStatus
from integrations.connectors.base import Connector, ConnectorError, PushResult
from integrations.models import (
    ConflictStatus,
    Integration,
    PushedAction,
    RecordError,
    SyncConflict,
    SyncDefinition,
    SyncRun,
)

ENTITY = "incident"
#: RecordError.file of errors the push wrote (the pipeline's own errors name the source file).
PUSH_FILE = "push"
#: Incidents read and pushed per batch (each needs a few requests to the source).
BATCH = 200
#: Samples kept in run.diff["push"] per outcome, and individual log lines per kind.
SAMPLES_PER_OUTCOME = 10
LOG_LINES_PER_KIND = 50

_PROBLEM_PATH = re.compile(r"\$\.([A-Za-z0-9_.\[\]]+)")


@dataclass
class PushStats:
    """What one push step did; ``as_dict`` is stored as ``run.diff["push"]``."""

    pushed_created: int = 0
    pushed_updated: int = 0
    pushed_deleted: int = 0
    actions_deleted: int = 0  # discipline actions the push had sent, removed in the hub since
    conflicts: int = 0
    source_won: int = 0
    failed: int = 0
    skipped: int = 0
    unchanged: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    _per_outcome: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def sample(self, outcome: str, incident_id: int, source_id: str, note: str = "") -> None:
        self._per_outcome[outcome] += 1
        if self._per_outcome[outcome] <= SAMPLES_PER_OUTCOME:
            item = {"outcome": outcome, "id": incident_id, "source_id": source_id}
            if note:
                item["note"] = note[:300]
            self.samples.append(item)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pushed_created": self.pushed_created,
            "pushed_updated": self.pushed_updated,
            "pushed_deleted": self.pushed_deleted,
            "actions_deleted": self.actions_deleted,
            "conflicts": self.conflicts,
            "source_won": self.source_won,
            "failed": self.failed,
            "skipped": self.skipped,
            "unchanged": self.unchanged,
            "samples": self.samples,
        }

    def summary(self) -> str:
        return (
            f"push: {self.pushed_created} created, {self.pushed_updated} updated, "
            f"{self.pushed_deleted} deleted, "
            f"{self.actions_deleted} discipline action(s) deleted, "
            f"{self.conflicts} conflicts ({self.source_won} taken from the source), "
            f"{self.failed} failed, {self.skipped} skipped, {self.unchanged} unchanged"
        )


class _Capped:
    """Log lines of one kind, individually up to a limit, then counted."""

    def __init__(self, log: Callable[[str], None], kind: str) -> None:
        self.log, self.kind, self.count = log, kind, 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count <= LOG_LINES_PER_KIND:
            self.log(message)

    def close(self) -> None:
        if self.count > LOG_LINES_PER_KIND:
            self.log(f"... and {self.count - LOG_LINES_PER_KIND} more {self.kind}")


# --- The push step of a run ---------------------------------------------------------------------


def run_push(*, run: SyncRun, connector: Connector, actor, log) -> PushStats:
    """Push the hub's changed incidents to the source and record the outcome on ``run``.

    Never raises for the source or a record: a source that cannot be reached leaves the cursor
    where it was and says so in the run's message (the pull of this run stays committed).
    """
    definition = SyncDefinition.objects.select_related("integration").get(pk=run.definition_id)
    integration = definition.integration
    first_line = len(getattr(log, "lines", ()))
    stats = PushStats()
    failure = ""
    with acting_as(actor):
        if ENTITY not in connector.writes:
            failure = f"{integration.name} cannot receive incidents"
        else:
            try:
                _Push(run, definition, integration, connector, actor, log, stats).execute()
            except ConnectorError as exc:
                failure = f"{integration.name} could not be reached: {exc}"
            except Exception as exc:  # a bug must not undo the committed pull or hide the cause
                log(traceback.format_exc(limit=8))
                failure = f"unexpected error: {type(exc).__name__}: {exc}"
        if failure:
            log(f"push failed: {failure}; the push cursor stays, the next run retries")
        else:
            log(stats.summary())
        services.connector_state_save(integration, connector)
        _record_on_run(run, stats, failure, log, first_line)
        if failure:
            services.integration_health_record(
                integration, ok=False, error=f"push: {failure}", counts=False
            )
    return stats


def _record_on_run(run: SyncRun, stats: PushStats, failure: str, log, first_line: int) -> None:
    lines = list(getattr(log, "lines", ()))[first_line:]
    run.diff = {**(run.diff or {}), "push": stats.as_dict()}
    message = stats.summary()
    if failure:
        message += (
            f"; the push did not finish: {failure}. Nothing more was sent; the next run "
            "pushes from the same point"
        )
    run.message = f"{run.message}; {message}" if run.message else message
    if lines:
        run.log = (run.log + "\n" if run.log else "") + "\n".join(lines)
    if (failure or stats.failed) and run.status == RunStatus.SUCCEEDED:
        run.status = RunStatus.PARTIAL
    run.failed_count = (run.failed_count or 0) + stats.failed
    SyncRun.objects.filter(pk=run.pk).update(
        diff=run.diff,
        message=run.message,
        log=run.log,
        status=run.status,
        failed_count=run.failed_count,
    )


@dataclass
class _Candidate:
    incident: Incident
    version: int
    changed_at: dt.datetime
    row: dict[str, Any]
    key: str
    known: bool  # the incident has lineage from this source
    action_id: int | None = None  # the hub action the row carries (the incident's first)
    # An action a push sent was deleted in the hub within this push's bounds (see
    # _Push._removed_actions): the incident as pushed changed, whatever the clocks say.
    action_removed: bool = False


class _Push:
    """One push step: select, decide per incident, send, then move the cursor."""

    def __init__(self, run, definition, integration, connector, actor, log, stats) -> None:
        self.run: SyncRun = run
        self.definition: SyncDefinition = definition
        self.integration: Integration = integration
        self.connector = connector
        self.actor = actor
        self.log = log
        self.stats: PushStats = stats
        self.source = integration.source_system
        self.push_at: dt.datetime | None = definition.push_at
        self.failed_versions: list[int] = []
        self.skips: dict[str, list[int]] = defaultdict(list)
        self.log_conflict = _Capped(log, "conflicts")
        self.log_failure = _Capped(log, "failures")
        #: hub incidents deleted here that the source did not have (any more)
        self.gone: list[int] = []
        #: incidents whose sent action was deleted in the hub within this push's bounds:
        #: incident id -> (the tombstone's change version, when it was deleted)
        self.removed: dict[int, tuple[int, dt.datetime]] = {}
        #: incidents of the current batch that have actions recorded as sent
        self.with_records: set[int] = set()
        self.log_action = _Capped(log, "discipline action removals")

    # -- selection

    def execute(self) -> None:
        cursor = self.definition.push_cursor
        upper = safe_change_version()
        self.log(
            f"push: incidents changed after change version {cursor} (up to {upper}) to "
            f"{self.integration.name}; policy for conflicts: "
            f"{self.definition.get_conflict_policy_display()}"
        )
        earlier = RecordError.objects.filter(
            definition=self.definition, entity=ENTITY, file=PUSH_FILE
        ).exclude(run=self.run)
        self.retry_keys = set(
            earlier.filter(status=ErrorStatus.OPEN).values_list("source_id", flat=True)
        )
        self.dismissed = dict(
            earlier.filter(status=ErrorStatus.DISMISSED)
            .values_list("source_id")
            .annotate(last=Max("created_at"))
        )
        self.open_conflicts, self.decided = self._conflicts(ENTITY)
        # Conflicts about a sent action removed in the hub are keyed by the hub action's id.
        self.open_action_conflicts, self.decided_actions = self._conflicts(
            PushedAction.CONFLICT_ENTITY
        )
        self.removed = self._removed_actions(cursor, upper)
        incidents = (
            Incident.objects.filter(district_id=self.run.district_id)
            .annotate(
                action_version=Coalesce(Max("actions__change_version"), Value(0)),
                action_changed=Max("actions__updated_at"),
            )
            .annotate(version=Greatest(F("change_version"), F("action_version")))
            .select_related("school", "student", "problem_behavior")
        )
        candidates = incidents.filter(version__gt=cursor, version__lte=upper).order_by("version")
        seen: set[int] = set()
        last = cursor
        while True:
            batch = list(candidates.filter(version__gt=last)[:BATCH])
            if not batch:
                break
            last = batch[-1].version
            self._batch(batch)
            seen.update(i.pk for i in batch)
        # Incidents selected only because an action the push had sent was deleted in the hub
        # (deleting an action changes no version of its incident; its tombstone is in the
        # bounds). One whose own version is above the upper bound is the next run's.
        rest = sorted(set(self.removed) - seen)
        for start in range(0, len(rest), BATCH):
            self._batch(
                list(
                    incidents.filter(
                        pk__in=rest[start : start + BATCH], version__lte=cursor
                    ).order_by("pk")
                )
            )
        self._push_deletes(cursor, upper)
        if self.gone:
            shown = ", ".join(f"#{i}" for i in self.gone[:20]) + (
                " ..." if len(self.gone) > 20 else ""
            )
            self.log(
                f"{len(self.gone)} incident(s) deleted in the hub were not in the source (any "
                f"more): nothing to delete ({shown})"
            )
        for reason, ids in self.skips.items():
            shown = ", ".join(f"#{i}" for i in ids[:20]) + (" ..." if len(ids) > 20 else "")
            self.log(f"skipped {len(ids)} incident(s): {reason} ({shown})")
        self.log_conflict.close()
        self.log_failure.close()
        self.log_action.close()
        self._commit(cursor, upper)

    def _conflicts(self, entity: str) -> tuple[dict[int, SyncConflict], dict[int, dt.datetime]]:
        """This definition's open conflicts about ``entity`` by hub id, and when each hub id's
        conflicts were last decided."""
        conflicts = SyncConflict.objects.filter(definition=self.definition, entity=entity)
        open_ = {c.object_id: c for c in conflicts.filter(status=ConflictStatus.OPEN)}
        decided = dict(
            conflicts.filter(decided_at__isnull=False)
            .values_list("object_id")
            .annotate(last=Max("decided_at"))
        )
        return open_, decided

    def _batch(self, batch: list[Incident]) -> None:
        ids = [i.pk for i in batch]
        actions = _first_actions(ids)
        self.with_records = set(
            PushedAction.objects.filter(
                integration=self.integration, incident_id__in=ids
            ).values_list("incident_id", flat=True)
        )
        for incident in batch:
            self._one(incident, actions.get(incident.pk))

    def _removed_actions(self, cursor: int, upper: int) -> dict[int, tuple[int, dt.datetime]]:
        """Incidents an action the push sent was deleted from, in the hub, within the bounds:
        incident id -> (the highest such tombstone's change version, when it was deleted).

        Why tombstones: every way an action is deleted (a service, an admin inline, a cascade,
        SQL) writes one, from the same change version sequence as the incidents' versions, so
        the cursor and the safe upper bound hold for them as they do for incidents. The
        tombstone does not say which incident the action was on; the record of sent actions
        does (``PushedAction.hub_action_id``), and only a sent action needs anything done in
        the source."""
        sent = PushedAction.objects.filter(
            integration=self.integration, district_id=self.run.district_id
        )
        by_action: dict[int, tuple[int, dt.datetime]] = {}
        tombstones = Tombstone.objects.filter(
            table_name=IncidentAction._meta.db_table,
            change_version__gt=cursor,
            change_version__lte=upper,
            object_id__in=sent.values("hub_action_id"),
        ).values_list("object_id", "change_version", "deleted_at")
        for object_id, version, at in tombstones:
            if object_id not in by_action or version > by_action[object_id][0]:
                by_action[object_id] = (version, at)
        removed: dict[int, tuple[int, dt.datetime]] = {}
        pairs = sent.filter(hub_action_id__in=list(by_action)).values_list(
            "incident_id", "hub_action_id"
        )
        for incident_id, action_id in pairs:
            found = by_action[action_id]
            if incident_id not in removed or found[0] > removed[incident_id][0]:
                removed[incident_id] = found
        return removed

    def _commit(self, cursor: int, upper: int) -> None:
        # Everything up to the upper bound was decided, except failed rows: they stay above.
        new_cursor = min(self.failed_versions) - 1 if self.failed_versions else upper
        new_cursor = max(new_cursor, cursor)
        SyncDefinition.objects.filter(pk=self.definition.pk).update(
            push_cursor=new_cursor, push_at=timezone.now()
        )
        # Every earlier failure was above the cursor, so it was tried again just now; one that
        # failed again has a new open error from this run.
        RecordError.objects.filter(
            definition=self.definition, entity=ENTITY, file=PUSH_FILE, status=ErrorStatus.OPEN
        ).exclude(run=self.run).update(status=ErrorStatus.RETRIED)
        self.log(f"push cursor: change version {cursor} -> {new_cursor}")

    # -- one incident

    def _one(self, incident: Incident, action: IncidentAction | None) -> None:
        reason = self._unpushable(incident)
        if reason:
            self.skips[reason].append(incident.pk)
            self.stats.skipped += 1
            self.stats.sample("skipped", incident.pk, "", reason)
            return
        c = self._candidate(incident, action)
        self._push_incident(c, action)
        if action is None and incident.pk in self.with_records:
            # The hub has no action for it any more: the ones pushes sent go. (With an action,
            # sending it replaces a sent one whose key differs: see _send.)
            self._remove_actions(c)

    def _push_incident(self, c: _Candidate, action: IncidentAction | None) -> None:
        incident = c.incident
        dismissed_at = self.dismissed.get(c.key)
        if dismissed_at and c.changed_at <= dismissed_at:
            self.skips["an admin dismissed its push error and it has not changed since"].append(
                incident.pk
            )
            self.stats.skipped += 1
            self.stats.sample("skipped", incident.pk, c.key, "push error dismissed")
            return
        if not c.known:
            found = self._sent_before(incident, action, c)
            if found is None:
                self._send(c)
                return
            c = found
        try:
            record = self.connector.fetch_incident(c.key)
        except ValueError as exc:  # a lineage source id that is not schoolId|identifier
            self._failed(c, str(exc), field_name="source_id")
            return
        self._decide(c, record)

    def _decide(self, c: _Candidate, record: dict[str, Any] | None, *, again: bool = False) -> None:
        """Send, hold, take the source's side or skip a known incident, given the source's
        record as just read (``again``: read anew after the source refused a write because
        it had changed; a second refusal is a failure, retried next run)."""
        incident = c.incident
        if record is None:
            self.log(
                f"incident #{incident.pk}: {c.key} is not in the source (any more); sent again"
            )
            self._send(c)
            return
        values = self.connector.incident_values(record)
        baseline = self._baseline(incident.pk)
        hub_changed = baseline is None or c.changed_at > baseline or c.action_removed
        modified = values.get("modified_at")
        source_changed = baseline is not None and modified is not None and modified > baseline
        conflict = self.open_conflicts.get(incident.pk)
        if conflict is not None:
            # Waiting for an admin: keep both sides as they are, show the latest of each.
            self._hold(c, record, conflict)
            return
        if _same(c.row, values):
            # Both sides agree on what the source compares. Pushing still carries what it
            # cannot compare (the student link and the action) when the hub changed.
            if c.key in self.retry_keys or again or (hub_changed and self.push_at is not None):
                self._send(c, record=record, again=again)
            else:
                self.stats.unchanged += 1
            return
        if (hub_changed and source_changed) or again:
            # A write refused because the source changed since it was read is a change on
            # both sides by definition: the hub's write was underway.
            self._conflict(c, record, values, again=again)
        elif source_changed:
            # Only the source changed since the last push: its newer values stand; the hub's
            # older ones are not sent over them.
            self.skips["changed only in the source since the last push"].append(incident.pk)
            self.stats.skipped += 1
            self.stats.sample("skipped", incident.pk, c.key, "changed only in the source")
        else:
            self._send(c, record=record)

    def _baseline(self, incident_id: int) -> dt.datetime | None:
        """Changes after this time are new: the last push, or a later decision on a conflict."""
        decided = self.decided.get(incident_id)
        if self.push_at is None:
            return decided
        return max(self.push_at, decided) if decided else self.push_at

    def _sent_before(
        self, incident: Incident, action: IncidentAction | None, c: _Candidate
    ) -> _Candidate | None:
        """The source's record of an incident whose lineage is another system's, if an earlier
        push sent it; as a candidate keyed by the source id the source has it under.

        Such an incident keeps its lineage after a push (that system matches it by it), so it
        never becomes one this source knows; the source has it under its stable identifier
        (see the module docstring, and ``_deleted_key`` for deletes). Found, it is an update of
        that record, decided like any known incident: compared, settled under the conflict
        policy, written with ``If-Match`` over the source's own fields. A plain POST would
        overwrite changes made in the source unchecked, and, once the hub moved the incident
        to another school (part of the natural key), create a second incident there.
        """
        if not incident.source_system or not hasattr(self.connector, "find_incident_key"):
            return None  # no lineage: a successful push gives it this source's
        key = self.connector.find_incident_key(new_identifier(incident))
        if key is None:
            return None  # never sent (or deleted in the source since): created anew
        return _Candidate(
            incident=incident,
            version=c.version,
            changed_at=c.changed_at,
            row=incident_row(incident, action, key=key),
            key=key,
            known=False,
            action_id=c.action_id,
            action_removed=c.action_removed,
        )

    def _unpushable(self, incident: Incident) -> str:
        if incident.school.source_system != self.source or not incident.school.source_id:
            return f"its school is not from {self.source}"
        if incident.student.source_system != self.source or not incident.student.source_id:
            return f"its student is not from {self.source}"
        return ""

    def _candidate(self, incident: Incident, action: IncidentAction | None) -> _Candidate:
        known = incident.source_system == self.source and bool(incident.source_id)
        key = (
            incident.source_id
            if known
            else f"{incident.school.source_id}|{new_identifier(incident)}"
        )
        changed_at = incident.updated_at
        if incident.action_changed and incident.action_changed > changed_at:
            changed_at = incident.action_changed
        version = incident.version
        removed = self.removed.get(incident.pk)
        if removed is not None:
            # Removing the action the source has is a change of the incident as pushed. (The
            # tombstone's time is its transaction's start, so it is not what says it is new:
            # its change version is, being above the cursor.)
            version, changed_at = max(version, removed[0]), max(changed_at, removed[1])
        return _Candidate(
            incident=incident,
            version=version,
            changed_at=changed_at,
            row=incident_row(incident, action, key=key if known else ""),
            key=key,
            known=known,
            action_id=action.pk if action else None,
            action_removed=removed is not None,
        )

    # -- deletes

    def _push_deletes(self, cursor: int, upper: int) -> None:
        """Incidents the hub deleted after the cursor (their tombstones, stamped from the same
        change version sequence, so the same bounds hold) are deleted in the source, with
        their discipline actions, under the same conflict rules as updates: a record the
        source changed after the last push is a conflict between the hub's delete and the
        source's change."""
        if not hasattr(self.connector, "delete_incident"):
            return
        tombstones = Tombstone.objects.filter(
            table_name=Incident._meta.db_table,
            district_id=self.run.district_id,
            change_version__gt=cursor,
            change_version__lte=upper,
        ).order_by("change_version")
        for tomb in tombstones.iterator(chunk_size=BATCH):
            self._delete_one(tomb)

    def _deleted_key(self, tomb: Tombstone) -> str | None:
        """What the source knows a deleted incident by, or None when it never went there."""
        if tomb.source_system == self.source and tomb.source_id:
            return tomb.source_id
        if tomb.source_system and hasattr(self.connector, "find_incident_key"):
            # Lineage from another system: the incident kept it and was sent under its
            # stable identifier, if it was sent at all.
            return self.connector.find_incident_key(new_identifier_of(tomb.object_id))
        # No lineage: it never reached the source (a successful push gives it this source's).
        return None

    def _delete_one(self, tomb: Tombstone) -> None:
        key = self._deleted_key(tomb)
        if key is None:
            return
        dismissed_at = self.dismissed.get(key)
        if dismissed_at and tomb.deleted_at <= dismissed_at:
            self.skips["an admin dismissed its push error"].append(tomb.object_id)
            self.stats.skipped += 1
            self.stats.sample("skipped", tomb.object_id, key, "push error dismissed")
            return
        try:
            record = self.connector.fetch_incident(key)
        except ValueError as exc:
            self._record_failure(
                tomb.object_id, key, tomb.change_version, str(exc), field_name="source_id"
            )
            return
        if record is None:
            self.gone.append(tomb.object_id)
            self.stats.unchanged += 1
            self._forget_incident(tomb.object_id)
            return
        conflict = self.open_conflicts.get(tomb.object_id)
        if conflict is not None:
            # An admin was to decide about a change; the hub has deleted the record since, so
            # the decision is now about the delete.
            self.stats.conflicts += 1
            self.log_conflict(
                f"incident #{tomb.object_id} ({key}) was deleted in the hub while its conflict "
                f"#{conflict.pk} waits for a decision; not deleted in the source"
            )
            conflict.hub = deleted_row(key, tomb)
            conflict.source, conflict.run = _jsonable(record), self.run
            model_save(
                instance=conflict, actor=self.actor, fields=["hub", "source", "run"], emit=False
            )
            self.stats.sample("conflict", tomb.object_id, key, f"conflict #{conflict.pk} open")
            return
        values = self.connector.incident_values(record)
        baseline = self._baseline(tomb.object_id)
        modified = values.get("modified_at")
        if baseline is not None and modified is not None and modified > baseline:
            self._delete_conflict(tomb, key, record, values)
        else:
            self._delete(tomb, key, record)

    def _delete(
        self, tomb: Tombstone, key: str, record: dict[str, Any], *, again: bool = False
    ) -> None:
        result = self.connector.delete_incident(key, etag=record.get("_etag"))
        if result.action == "deleted":
            self.stats.pushed_deleted += 1
            self.stats.sample("pushed_deleted", tomb.object_id, key)
            self._forget_incident(tomb.object_id)  # its actions went with it
        elif result.action == "unchanged":
            self.gone.append(tomb.object_id)
            self.stats.unchanged += 1
            self._forget_incident(tomb.object_id)
        elif result.action == "conflict" and not again:
            self.log(
                f"incident #{tomb.object_id} ({key}) changed in the source while its delete "
                "was being sent; nothing was deleted, deciding again on the source's new version"
            )
            fresh = self.connector.fetch_incident(key)
            if fresh is None:
                self.gone.append(tomb.object_id)
                self.stats.unchanged += 1
                self._forget_incident(tomb.object_id)
                return
            self._delete_conflict(
                tomb, key, fresh, self.connector.incident_values(fresh), again=True
            )
        else:
            message = result.message
            if result.action == "conflict":
                message = (
                    f"the source changed the record again while it was being deleted: {message}"
                )
            self._record_failure(
                tomb.object_id,
                key,
                tomb.change_version,
                message,
                field_name=problem_field(message),
            )

    def _delete_conflict(
        self,
        tomb: Tombstone,
        key: str,
        record: dict[str, Any],
        values: dict[str, Any],
        *,
        again: bool = False,
    ) -> None:
        self.stats.conflicts += 1
        policy = self.definition.conflict_policy
        winner = self._winner(tomb.deleted_at, values.get("modified_at"))
        where = (
            f"incident #{tomb.object_id} ({key}) was deleted in the hub and changed in the source"
        )
        if winner == "hub":
            self.log_conflict(f"{where}; {policy_label(policy)}: it is deleted in the source")
            self._delete(tomb, key, record, again=again)
        elif winner == "source":
            self.log_conflict(
                f"{where}; {policy_label(policy)}: it stays in the source (the hub's copy is "
                "not restored: a pull of incidents brings it back)"
            )
            self.stats.source_won += 1
            self.stats.sample("source_won", tomb.object_id, key, "kept in the source")
            # Its actions stay with it, the source's from now on.
            self._forget_incident(tomb.object_id)
        else:
            self.log_conflict(f"{where}; waiting for an admin's decision (manual review)")
            with write_as(self.actor):
                conflict = SyncConflict(
                    district_id=self.run.district_id,
                    definition=self.definition,
                    run=self.run,
                    entity=ENTITY,
                    object_id=tomb.object_id,
                    source_id=key,
                    hub=deleted_row(key, tomb),
                    source=_jsonable(record),
                )
                model_save(instance=conflict, actor=self.actor, emit=False)
            self.open_conflicts[tomb.object_id] = conflict
            self.stats.sample("conflict", tomb.object_id, key, "manual review (deleted in the hub)")

    def _forget_incident(self, incident_id: int) -> None:
        pushed_actions_forget(
            records=PushedAction.objects.filter(
                integration=self.integration, incident_id=incident_id
            ),
            actor=self.actor,
        )

    # -- sent actions removed in the hub

    def _remove_actions(self, c: _Candidate) -> None:
        """Delete in the source the actions pushes sent for ``c``'s incident (the record),
        which the hub no longer has. Never an action absent from the record: the source may
        hold actions of its own under the same identifier."""
        if not hasattr(self.connector, "fetch_action"):
            return
        records = PushedAction.objects.filter(
            integration=self.integration, incident_id=c.incident.pk
        ).order_by("action_date", "pk")
        for record in records:
            self._remove_action(c, record)

    def _remove_action(self, c: _Candidate, record: PushedAction) -> None:
        removed_at = self._removed_at(c, record)
        dismissed_at = self.dismissed.get(record.source_id)
        if dismissed_at and removed_at <= dismissed_at:
            # The admin let the source keep it: the source's own from now on, as when the
            # source wins a conflict over the removal. Forgotten, so no later push deletes it
            # or reports it skipped again.
            self.skips["an admin dismissed the error of removing its discipline action"].append(
                c.incident.pk
            )
            self.stats.skipped += 1
            self.stats.sample("skipped", c.incident.pk, record.source_id, "push error dismissed")
            self.log_action(
                f"incident #{c.incident.pk}: its discipline action {record.source_id} is kept "
                "in the source as its own (an admin dismissed the error of removing it)"
            )
            pushed_actions_forget(records=[record], actor=self.actor)
            return
        item = self.connector.fetch_action(record.key)
        if item is None:
            self.log_action(
                f"incident #{c.incident.pk}: its discipline action {record.source_id} is not in "
                "the source (any more): nothing to delete"
            )
            pushed_actions_forget(records=[record], actor=self.actor)
            return
        conflict = self.open_action_conflicts.get(record.hub_action_id)
        if conflict is not None:
            self.stats.conflicts += 1
            self.log_conflict(
                f"incident #{c.incident.pk}: the removal of its discipline action "
                f"{record.source_id} waits for a decision (conflict #{conflict.pk}); not deleted"
            )
            conflict.source, conflict.run = _jsonable(item), self.run
            model_save(instance=conflict, actor=self.actor, fields=["source", "run"], emit=False)
            self.stats.sample("conflict", c.incident.pk, record.source_id, f"#{conflict.pk} open")
            return
        modified = self.connector.incident_values(item).get("modified_at")
        baseline = self._action_baseline(record)
        # A pending record's action was written, if at all, by a push that died before it
        # confirmed the send and before it moved the baseline: its own write is newer than
        # the baseline and cannot be told from a change in the source, so it is no conflict.
        # (The edge this accepts: docs/development/decisions.md.)
        changed = baseline is not None and modified is not None and modified > baseline
        if changed and not record.pending:
            self._action_conflict(c, record, item, removed_at)
        else:
            self._delete_action(c, record, item)

    def _removed_at(self, c: _Candidate, record: PushedAction) -> dt.datetime:
        """When the hub removed the sent action: its tombstone's time (the incident's last
        change when there is none, e.g. the action was moved to another incident)."""
        removed = self.removed.get(c.incident.pk)
        if removed is not None:
            return removed[1]
        tomb = (
            Tombstone.objects.filter(
                table_name=IncidentAction._meta.db_table, object_id=record.hub_action_id
            )
            .order_by("-change_version")
            .first()
        )
        return tomb.deleted_at if tomb is not None else c.changed_at

    def _action_baseline(self, record: PushedAction) -> dt.datetime | None:
        """As :meth:`_baseline`, with the decisions on conflicts about this action."""
        decided = self.decided_actions.get(record.hub_action_id)
        if self.push_at is None:
            return decided
        return max(self.push_at, decided) if decided else self.push_at

    def _delete_action(
        self, c: _Candidate, record: PushedAction, item: dict[str, Any], *, again: bool = False
    ) -> None:
        result = self.connector.delete_action(str(item["id"]), etag=item.get("_etag"))
        if result.action in ("deleted", "unchanged"):
            pushed_actions_forget(records=[record], actor=self.actor)
            if result.action == "deleted":
                self.stats.actions_deleted += 1
                self.stats.sample("actions_deleted", c.incident.pk, record.source_id)
                self.log_action(
                    f"incident #{c.incident.pk}: its discipline action {record.source_id}, "
                    "removed in the hub, was deleted in the source"
                )
            return
        if result.action == "conflict" and not again:
            self.log(
                f"incident #{c.incident.pk}: its discipline action {record.source_id} changed in "
                "the source while its delete was being sent; nothing was deleted, deciding again "
                "on the source's new version"
            )
            fresh = self.connector.fetch_action(record.key)
            if fresh is None:
                pushed_actions_forget(records=[record], actor=self.actor)
                return
            self._action_conflict(c, record, fresh, self._removed_at(c, record), again=True)
            return
        message = f"its discipline action {record.source_id} could not be deleted: "
        if result.action == "conflict":
            message += "the source changed it again while it was being deleted: "
        message += result.message
        self._record_failure(
            c.incident.pk,
            record.source_id,
            c.version,
            message,
            field_name=problem_field(result.message) or "disciplineAction",
        )

    def _action_conflict(
        self,
        c: _Candidate,
        record: PushedAction,
        item: dict[str, Any],
        removed_at: dt.datetime,
        *,
        again: bool = False,
    ) -> None:
        """The hub removed a sent action the source changed after the last push: settled as
        a delete of an incident the source changed is (see _delete_conflict)."""
        self.stats.conflicts += 1
        policy = self.definition.conflict_policy
        modified = self.connector.incident_values(item).get("modified_at")
        winner = self._winner(removed_at, modified)
        where = (
            f"incident #{c.incident.pk}: its discipline action {record.source_id} was removed in "
            "the hub and changed in the source"
        )
        if winner == "hub":
            self.log_conflict(f"{where}; {policy_label(policy)}: it is deleted in the source")
            self._delete_action(c, record, item, again=again)
        elif winner == "source":
            self.log_conflict(
                f"{where}; {policy_label(policy)}: it stays in the source, whose action it is "
                "from now on (pushes no longer remove it)"
            )
            pushed_actions_forget(records=[record], actor=self.actor)
            self.stats.source_won += 1
            self.stats.sample("source_won", c.incident.pk, record.source_id, "action kept")
        else:
            self.log_conflict(f"{where}; waiting for an admin's decision (manual review)")
            with write_as(self.actor):
                conflict = SyncConflict(
                    district_id=self.run.district_id,
                    definition=self.definition,
                    run=self.run,
                    entity=PushedAction.CONFLICT_ENTITY,
                    object_id=record.hub_action_id,
                    source_id=record.source_id,
                    hub=removed_action_row(record, removed_at),
                    source=_jsonable(item),
                )
                model_save(instance=conflict, actor=self.actor, emit=False)
            self.open_action_conflicts[record.hub_action_id] = conflict
            self.stats.sample(
                "conflict", c.incident.pk, record.source_id, "manual review (action removed)"
            )

    # -- outcomes

    def _send(
        self,
        c: _Candidate,
        note: str = "",
        *,
        record: dict[str, Any] | None = None,
        again: bool = False,
    ) -> None:
        """Send the hub's row. With the source's ``record`` as read, the write is an update
        of that version only (its ETag goes along as ``If-Match``): when the source changed
        the record since, nothing is written and the record is decided again on its new
        version (once; a second refusal in the same run is a failure retried next run).

        The row carries the actions pushes sent for the incident (the record): the connector
        replaces those whose key differs from the action sent now, and only those. The action
        it is about to send is recorded before it is sent (pending), and what it sent and
        dropped when it answers, whatever the outcome (see :func:`incident_send`)."""
        row = with_sent_actions(sending_row(c.row, record), self.integration, c.incident.pk)
        result = incident_send(
            connector=self.connector,
            integration=self.integration,
            incident=c.incident,
            hub_action_id=c.action_id,
            row=row,
            run=self.run,
            actor=self.actor,
        )
        if result.action == "conflict":
            if again:
                self._failed(
                    c,
                    f"the source changed the record again while it was being sent: "
                    f"{result.message}",
                )
                return
            self.log(
                f"incident #{c.incident.pk} ({c.key}) changed in the source while the hub's "
                "version was being sent; nothing was written, deciding again on the source's "
                "new version"
            )
            self._decide(c, self.connector.fetch_incident(c.key), again=True)
            return
        if result.action == "failed":
            self._failed(c, result.message, field_name=problem_field(result.message))
            return
        if result.action == "created":
            self.stats.pushed_created += 1
        else:
            self.stats.pushed_updated += 1
        self.stats.sample(f"pushed_{result.action}", c.incident.pk, result.source_id, note)
        if not c.incident.source_system and not c.incident.source_id:
            self._set_lineage(c, result)
        elif not c.known:
            # Lineage from another system stays: that system matches the incident by it. The
            # stable identifier makes the next push an update of the same source record.
            self.log(
                f"incident #{c.incident.pk} came from {c.incident.source_system}; it was sent "
                f"as {result.source_id} and keeps its lineage"
            )

    def _set_lineage(self, c: _Candidate, result: PushResult) -> None:
        try:
            with write_as(self.actor):
                model_update(
                    instance=c.incident,
                    actor=self.actor,
                    data={"source_system": self.source, "source_id": result.source_id},
                    # Bookkeeping of where the record lives, not a change of the incident:
                    # audited, but no event for subscribers.
                    emit=False,
                )
        except ValidationError as exc:
            self.log(
                f"incident #{c.incident.pk} was sent as {result.source_id}, but its lineage "
                f"could not be saved ({'; '.join(exc.messages)}); the next run sends it again"
            )

    def _failed(self, c: _Candidate, message: str, *, field_name: str = "") -> None:
        self._record_failure(c.incident.pk, c.key, c.version, message, field_name=field_name)

    def _record_failure(
        self, incident_id: int, key: str, version: int, message: str, *, field_name: str = ""
    ) -> None:
        self.stats.failed += 1
        self.failed_versions.append(version)
        self.stats.sample("failed", incident_id, key, message)
        self.log_failure(f"incident #{incident_id} ({key}) failed: {message}")
        RecordError.objects.create(
            run=self.run,
            definition=self.definition,
            district_id=self.run.district_id,
            entity=ENTITY,
            file=PUSH_FILE,
            field=field_name[:100],
            reason=message,
            source_id=key,
        )

    def _winner(self, hub_changed_at: dt.datetime, modified: dt.datetime | None) -> str | None:
        """ "hub", "source", or None (manual review) under the definition's policy."""
        policy = self.definition.conflict_policy
        if policy == ConflictPolicy.NEWEST_WINS:
            # A tie, or a source that did not say when, goes to the source (the system of
            # record).
            return "hub" if modified is not None and hub_changed_at > modified else "source"
        return {ConflictPolicy.SOURCE_WINS: "source", ConflictPolicy.HUB_WINS: "hub"}.get(policy)

    def _conflict(
        self, c: _Candidate, record: dict[str, Any], values: dict[str, Any], *, again=False
    ) -> None:
        self.stats.conflicts += 1
        policy = self.definition.conflict_policy
        winner = self._winner(c.changed_at, values.get("modified_at"))
        where = f"incident #{c.incident.pk} ({c.key}) changed in the hub and in the source"
        if winner == "hub":
            self.log_conflict(f"{where}; {policy_label(policy)}: the hub's version is sent")
            self._send(c, note="conflict: hub kept", record=record, again=again)
        elif winner == "source":
            self.log_conflict(f"{where}; {policy_label(policy)}: the source's version is taken")
            try:
                take_source(c.incident, values, actor=self.actor, log=self.log)
            except ValidationError as exc:
                self._failed(
                    c,
                    "the source's version could not be saved in the hub: "
                    + "; ".join(exc.messages),
                    field_name=next(iter(getattr(exc, "error_dict", {}) or {}), ""),
                )
                return
            self.stats.source_won += 1
            self.stats.sample("source_won", c.incident.pk, c.key)
        else:
            self.log_conflict(f"{where}; waiting for an admin's decision (manual review)")
            with write_as(self.actor):
                conflict = SyncConflict(
                    district_id=self.run.district_id,
                    definition=self.definition,
                    run=self.run,
                    entity=ENTITY,
                    object_id=c.incident.pk,
                    source_id=c.key,
                    hub=c.row,
                    source=_jsonable(record),
                )
                model_save(instance=conflict, actor=self.actor, emit=False)
            self.open_conflicts[c.incident.pk] = conflict
            self.stats.sample("conflict", c.incident.pk, c.key, "manual review")

    def _hold(self, c: _Candidate, record: dict[str, Any], conflict: SyncConflict) -> None:
        self.stats.conflicts += 1
        self.log_conflict(
            f"incident #{c.incident.pk} ({c.key}) changed again while its conflict "
            f"#{conflict.pk} waits for a decision; not sent"
        )
        conflict.hub, conflict.source, conflict.run = c.row, _jsonable(record), self.run
        model_save(instance=conflict, actor=self.actor, fields=["hub", "source", "run"], emit=False)
        self.stats.sample("conflict", c.incident.pk, c.key, f"conflict #{conflict.pk} open")


# --- Rows and values ----------------------------------------------------------------------------


def new_identifier(incident: Incident) -> str:
    """The source identifier of an incident the source does not know yet: stable, so a retry
    after a failure updates the record the failed attempt may have left."""
    return new_identifier_of(incident.pk)


def new_identifier_of(incident_id: int) -> str:
    return f"BX{incident_id}"


def deleted_row(key: str, tomb: Tombstone) -> dict[str, Any]:
    """The hub's side of a conflict about an incident the hub deleted."""
    return {"deleted": True, "source_id": key, "deleted_at": tomb.deleted_at.isoformat()}


def removed_action_row(record: PushedAction, removed_at: dt.datetime) -> dict[str, Any]:
    """The hub's side of a conflict about a sent action the hub removed."""
    return {
        "deleted": True,
        "source_id": record.source_id,
        "deleted_at": removed_at.isoformat(),
        "incident_id": record.incident_id,
        "incident_key": record.incident_key,
        "action": record.key,
    }


def sending_row(row: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """The push row with the version of the source's record it replaces: the connector sends
    an update only if the source still has that version (``If-Match`` with its ETag)."""
    if not record or not record.get("_etag") or not record.get("id"):
        return row
    return {**row, "source_etag": str(record["_etag"]), "source_resource_id": str(record["id"])}


def incident_row(incident: Incident, action: IncidentAction | None, *, key: str) -> dict[str, Any]:
    """The row ``connector.push("incident", ...)`` expects (narratives are never included)."""
    identifier = key.partition("|")[2] if key else new_identifier(incident)
    return {
        "source_id": key,
        "school_source_id": incident.school.source_id,
        "student_source_id": incident.student.source_id,
        "incident_identifier": identifier,
        "occurred_on": incident.occurred_on.isoformat(),
        "occurred_at": incident.occurred_at.strftime("%H:%M:%S"),
        "behavior_code": incident.problem_behavior.code,
        "action_code": action.action.code if action else "",
        "action_date": (action.start_date.isoformat() if action and action.start_date else None),
        "duration_days": float(action.duration_days) if action else None,
    }


# --- The record of sent actions -----------------------------------------------------------------


def with_sent_actions(row: dict[str, Any], integration: Integration, incident_id: int) -> dict:
    """The push row with the natural keys of the actions pushes sent for the incident, pending
    ones included (possibly sent): the connector replaces only those (never an action the
    source holds of its own)."""
    sent = PushedAction.objects.filter(integration=integration, incident_id=incident_id)
    return {**row, "sent_actions": [record.key for record in sent.order_by("pk")]}


def incident_send(
    *,
    connector: Connector,
    integration: Integration,
    incident: Incident,
    hub_action_id: int | None,
    row: dict[str, Any],
    run: SyncRun | None,
    actor,
) -> PushResult:
    """Send one push row to the source, its discipline action recorded ahead: the record is
    committed pending before the connector sends anything (``connector.planned_action``, the
    key the connector is about to POST), then confirmed, or deleted when the connector
    reports nothing was sent. A worker that dies in between leaves the pending record, so
    an action the source took is never without one (see ``PushedAction``). Called outside a
    transaction (the push step, an admin's decision): inside one, the record would commit only
    with it, after the send."""
    planned = pushed_action_plan(
        integration=integration,
        incident=incident,
        hub_action_id=hub_action_id,
        planned=connector.planned_action(row),
        run=run,
        actor=actor,
    )
    [result] = connector.push(ENTITY, [row])
    pushed_action_record(
        integration=integration,
        incident=incident,
        hub_action_id=hub_action_id,
        result=result,
        run=run,
        actor=actor,
        planned=planned,
    )
    return result


def pushed_action_plan(
    *,
    integration: Integration,
    incident: Incident,
    hub_action_id: int | None,
    planned: dict[str, str] | None,
    run: SyncRun | None,
    actor,
) -> PushedAction | None:
    """Record the action a push is about to send (``planned``: natural key and ``incident``,
    the source id of its incident, from ``connector.planned_action``) as pending, committed
    before the send. Returns the record made; None when nothing is planned, or when the key
    is recorded already (sent by an earlier push, or pending since one died): that record
    stays as it is until the source answers."""
    if hub_action_id is None or not planned:
        return None
    if not all(planned.get(name) for name in ("identifier", "student", "date", "incident")):
        return None  # not a complete key: the source refuses such an action
    natural = _natural(planned)
    with write_as(actor):
        if PushedAction.objects.filter(integration=integration, **natural).exists():
            return None
        record = PushedAction(
            district_id=integration.district_id,
            integration=integration,
            incident_id=incident.pk,
            hub_action_id=hub_action_id,
            incident_key=str(planned["incident"]),
            run=run,
            sent_at=None,
            **natural,
        )
        return model_save(instance=record, actor=actor, emit=False)


def pushed_action_record(
    *,
    integration: Integration,
    incident: Incident,
    hub_action_id: int | None,
    result: PushResult,
    run: SyncRun | None,
    actor,
    planned: PushedAction | None = None,
) -> None:
    """Record what a push of ``incident`` did to its discipline actions in the source: the
    actions it dropped are forgotten, the one it sent (POSTed, so created or upserted) is
    confirmed, or recorded when nothing was written ahead; ``planned``, the pending record
    :func:`pushed_action_plan` made for this send, is deleted when the connector sent a
    different key or none (it failed before the POST, or the source refused it). Written
    as soon as the source answered, whatever the incident's outcome, so the record never
    claims less than the source holds from pushes (a forgotten action could never be
    removed)."""
    sent = result.sent_action
    if not result.dropped_actions and not sent and planned is None:
        return
    with write_as(actor):
        for key in result.dropped_actions:
            pushed_actions_forget(
                records=PushedAction.objects.filter(integration=integration, **_natural(key)),
                actor=actor,
            )
        natural = _natural(sent) if sent else None
        if planned is not None and natural != _natural(planned.key):
            pushed_actions_forget(
                records=PushedAction.objects.filter(pk=planned.pk, sent_at__isnull=True),
                actor=actor,
            )
        if natural is None or hub_action_id is None:
            return
        record = PushedAction.objects.filter(integration=integration, **natural).first()
        if record is None:
            record = PushedAction(
                district_id=integration.district_id, integration=integration, **natural
            )
        record.incident_id = incident.pk
        record.hub_action_id = hub_action_id
        record.incident_key = result.source_id
        record.run = run
        record.sent_at = timezone.now()
        if sent.get("resource_id"):
            record.resource_id = str(sent["resource_id"])
        model_save(instance=record, actor=actor, emit=False)


def pushed_actions_forget(*, records: Iterable[PushedAction], actor) -> None:
    """Drop records of sent actions: the source no longer has them, or keeps them as its own."""
    with write_as(actor):
        for record in list(records):
            record.delete()


def _natural(key: dict[str, Any]) -> dict[str, Any]:
    return {
        "identifier": str(key["identifier"]),
        "student": str(key["student"]),
        "action_date": dt.date.fromisoformat(str(key["date"])),
    }


def _first_actions(incident_ids: Iterable[int]) -> dict[int, IncidentAction]:
    first: dict[int, IncidentAction] = {}
    actions = (
        IncidentAction.objects.filter(incident_id__in=list(incident_ids))
        .select_related("action")
        .order_by("incident_id", F("start_date").asc(nulls_last=True), "id")
    )
    for action in actions:
        first.setdefault(action.incident_id, action)
    return first


def _same(row: dict[str, Any], values: dict[str, Any]) -> bool:
    return all(
        row[name] == values.get(name) for name in ("occurred_on", "occurred_at", "behavior_code")
    )


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if v is None or isinstance(v, str | int | float | bool) else str(v)
        for k, v in record.items()
    }


def problem_field(message: str) -> str:
    """The first field an Ed-Fi problem detail names (``$.incidentDate`` -> ``incidentDate``)."""
    match = _PROBLEM_PATH.search(message or "")
    return match.group(1) if match else ""


def policy_label(policy: str) -> str:
    return str(ConflictPolicy(policy).label).lower()


def take_source(incident: Incident, values: dict[str, Any], *, actor, log=None) -> Incident:
    """Give the hub incident the source's date, time of day and (when the hub has the same
    problem behavior at the incident's level) behavior, through the validated, audited write
    the incident services use."""
    data: dict[str, Any] = {}
    if values.get("occurred_on"):
        data["occurred_on"] = dt.date.fromisoformat(values["occurred_on"])
    if values.get("occurred_at"):
        data["occurred_at"] = dt.time.fromisoformat(values["occurred_at"])
    code = values.get("behavior_code")
    if code and code != incident.problem_behavior.code:
        category = (
            bch.DescriptorCategory.PROBLEM_BEHAVIOR_MAJOR
            if incident.level == bch.IncidentLevel.MAJOR
            else bch.DescriptorCategory.PROBLEM_BEHAVIOR_MINOR
        )
        descriptor = (
            Descriptor.objects.filter(
                Q(district=None) | Q(district_id=incident.district_id),
                category=category,
                code=code,
                is_active=True,
            )
            .order_by(F("district_id").desc(nulls_last=True))
            .first()
        )
        if descriptor is not None:
            data["problem_behavior"] = descriptor
        elif log is not None:
            log(
                f"incident #{incident.pk}: the source's behavior {code!r} has no {incident.level} "
                "problem behavior in the hub; the hub's is kept"
            )
    with write_as(actor):
        return model_update(instance=incident, actor=actor, data=data)


# --- Conflicts an admin decides -----------------------------------------------------------------


def conflict_resolve(
    *, conflict: SyncConflict, keep: Literal["hub", "source"], actor
) -> SyncConflict:
    """Settle an open conflict: ``keep="hub"`` pushes the hub's current incident to the source,
    ``keep="source"`` gives the hub the source's current values. Raises ValidationError saying
    why when it cannot (the conflict then stays open).

    The hub's version replaces only the version of the source's record read just before (an
    ``If-Match`` write): when the source changes it in between, nothing is written, the
    conflict's snapshot of the source is refreshed and the admin is asked to decide again.

    A conflict about an incident the hub deleted (``hub["deleted"]``): keeping the hub's side
    deletes the record in the source (with its actions); keeping the source's leaves it there
    (the hub does not bring the deleted incident back; a pull of incidents does).

    A conflict about a discipline action a push sent, which the hub removed and the source
    changed (entity ``PushedAction.CONFLICT_ENTITY``): keeping the hub's side deletes it in the
    source (``If-Match``); keeping the source's leaves it there as the source's own (pushes no
    longer remove it).
    """
    if keep not in ("hub", "source"):
        raise ValidationError({"keep": f"keep must be 'hub' or 'source', not {keep!r}"})
    conflict = SyncConflict.objects.select_related("definition__integration").get(pk=conflict.pk)
    if conflict.status != ConflictStatus.OPEN:
        raise ValidationError(f"This conflict is already {conflict.get_status_display().lower()}.")
    if conflict.entity == PushedAction.CONFLICT_ENTITY:
        return _resolve_action(conflict, keep, actor)
    if conflict.entity != ENTITY:
        raise ValidationError(f"Conflicts of {conflict.entity} cannot be resolved here.")
    integration = conflict.definition.integration
    deleted = bool((conflict.hub or {}).get("deleted"))
    incident = None
    if not deleted:
        incident = (
            Incident.objects.filter(pk=conflict.object_id, district_id=conflict.district_id)
            .select_related("school", "student", "problem_behavior")
            .first()
        )
        if incident is None:
            raise ValidationError(
                f"Hub incident #{conflict.object_id} no longer exists; dismiss this conflict."
            )
    if deleted and keep == "source":
        # Nothing to write on either side: the source keeps its record, the hub its delete.
        # Its actions stay with it, the source's from now on.
        pushed_actions_forget(
            records=PushedAction.objects.filter(
                integration=integration, incident_id=conflict.object_id
            ),
            actor=actor,
        )
        return _decide(conflict, ConflictStatus.RESOLVED_SOURCE, actor)
    connector = services.connector_for(integration)
    try:
        with acting_as(actor):
            if deleted:
                result = connector.delete_incident(conflict.source_id)
                if result.action in ("failed", "conflict"):
                    raise ValidationError(
                        f"{integration.name} refused to delete {conflict.source_id}: "
                        f"{result.message}"
                    )
                pushed_actions_forget(
                    records=PushedAction.objects.filter(
                        integration=integration, incident_id=conflict.object_id
                    ),
                    actor=actor,
                )
                status = ConflictStatus.RESOLVED_HUB
            elif keep == "hub":
                record = connector.fetch_incident(conflict.source_id)
                action = _first_actions([incident.pk]).get(incident.pk)
                row = incident_row(incident, action, key=conflict.source_id)
                row = with_sent_actions(sending_row(row, record), integration, incident.pk)
                result = incident_send(
                    connector=connector,
                    integration=integration,
                    incident=incident,
                    hub_action_id=action.pk if action else None,
                    row=row,
                    run=None,
                    actor=actor,
                )
                _raise_if_refused(
                    result,
                    conflict,
                    refetch=lambda: connector.fetch_incident(conflict.source_id),
                    not_done="the hub's version was not sent",
                    refused=f"{integration.name} refused the hub's version",
                    actor=actor,
                )
                status = ConflictStatus.RESOLVED_HUB
            else:
                record = connector.fetch_incident(conflict.source_id)
                if record is None:
                    raise ValidationError(
                        f"{integration.name} no longer has {conflict.source_id}; keep the hub's "
                        "version or dismiss this conflict."
                    )
                take_source(incident, connector.incident_values(record), actor=actor)
                status = ConflictStatus.RESOLVED_SOURCE
    except ConnectorError as exc:
        raise ValidationError(f"{integration.name} could not be reached: {exc}") from exc
    finally:
        services.connector_state_save(integration, connector)
        connector.close()
    return _decide(conflict, status, actor)


def _raise_if_refused(
    result: PushResult,
    conflict: SyncConflict,
    *,
    refetch: Callable[[], dict[str, Any] | None],
    not_done: str,
    refused: str,
    actor,
) -> None:
    """An admin's decision the source did not take: it changed the record again since it was
    read (its new version is stored on the conflict, to decide on again), or it refused."""
    integration = conflict.definition.integration
    if result.action == "conflict":
        fresh = refetch()
        if fresh is not None:
            conflict.source = _jsonable(fresh)
            model_save(instance=conflict, actor=actor, fields=["source"], emit=False)
        raise ValidationError(
            f"{integration.name} changed {conflict.source_id} again just now, so {not_done}; "
            "its new version is shown: decide again."
        )
    if result.action == "failed":
        raise ValidationError(f"{refused}: {result.message}")


def _resolve_action(conflict: SyncConflict, keep: str, actor) -> SyncConflict:
    """``conflict_resolve`` of a removed sent action (see there)."""
    integration = conflict.definition.integration
    record = next(
        (
            r
            for r in PushedAction.objects.filter(
                integration=integration, hub_action_id=conflict.object_id
            )
            if r.source_id == conflict.source_id
        ),
        None,
    )
    if keep == "source":
        if record is not None:
            pushed_actions_forget(records=[record], actor=actor)
        return _decide(conflict, ConflictStatus.RESOLVED_SOURCE, actor)
    if record is None:
        raise ValidationError(
            f"No push is recorded as having sent {conflict.source_id} any more, so it is not "
            "deleted; dismiss this conflict."
        )
    connector = services.connector_for(integration)
    try:
        with acting_as(actor):
            item = connector.fetch_action(record.key)
            if item is not None:
                result = connector.delete_action(str(item["id"]), etag=item.get("_etag"))
                _raise_if_refused(
                    result,
                    conflict,
                    refetch=lambda: connector.fetch_action(record.key),
                    not_done="it was not deleted",
                    refused=f"{integration.name} refused to delete {conflict.source_id}",
                    actor=actor,
                )
            pushed_actions_forget(records=[record], actor=actor)
    except ConnectorError as exc:
        raise ValidationError(f"{integration.name} could not be reached: {exc}") from exc
    finally:
        services.connector_state_save(integration, connector)
        connector.close()
    return _decide(conflict, ConflictStatus.RESOLVED_HUB, actor)


def conflict_dismiss(*, conflict: SyncConflict, actor) -> SyncConflict:
    """Leave both sides as they are and close the conflict (the record is pushed again when
    the hub changes it next)."""
    conflict = SyncConflict.objects.get(pk=conflict.pk)
    if conflict.status != ConflictStatus.OPEN:
        raise ValidationError(f"This conflict is already {conflict.get_status_display().lower()}.")
    return _decide(conflict, ConflictStatus.DISMISSED, actor)


def _decide(conflict: SyncConflict, status: str, actor) -> SyncConflict:
    # The decision time becomes this record's baseline (see _Push._baseline), so taken after
    # the write the decision made.
    conflict.status = status
    conflict.decided_by = actor if getattr(actor, "pk", None) else None
    conflict.decided_at = timezone.now()
    return model_save(
        instance=conflict,
        actor=actor,
        fields=["status", "decided_by", "decided_at"],
        emit=False,
    )
