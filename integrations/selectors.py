"""Reads of the integration engine for people: each takes the actor and passes the gate.

The admin and the pages call these; another district's row is simply absent (a 404 in the
faces), never a 403. Health and progress are small, indexed reads: the admin polls progress
every second or two while a run is going.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.functions import JSONObject
from django.utils import timezone

from bxos.common.permissions import VIEW, restrict
from integrations import entities as ent
from integrations.choices import ACTIVE, FINISHED, RunStatus
from integrations.connectors import registry
from integrations.models import (
    IdentityReview,
    Integration,
    Mapping,
    MappingVersion,
    PushedAction,
    RecordError,
    SyncConflict,
    SyncDefinition,
    SyncRun,
)

#: How many of an integration's latest finished runs its success rate is taken over.
HEALTH_WINDOW = 20
#: Runs that ran to the end count as successes; a run rolled back (or being rolled back) had
#: succeeded.
SUCCESSFUL = (
    RunStatus.SUCCEEDED,
    RunStatus.PARTIAL,
    RunStatus.ROLLING_BACK,
    RunStatus.ROLLED_BACK,
)
#: A run's counts, in the order the admin shows them.
COUNT_NAMES = ("read", "created", "updated", "unchanged", "deleted", "failed", "skipped")
#: The columns of a run's error CSV, in order.
ERROR_CSV_COLUMNS = ("entity", "file", "line", "field", "reason", "source_id", "status")
#: The fields of a person an identity review compares, incoming and existing side by side.
IDENTITY_FIELDS = (
    ("student_number", "Student number"),
    ("state_id", "State id"),
    ("first_name", "First name"),
    ("middle_name", "Middle name"),
    ("last_name", "Last name"),
    ("birth_date", "Birth date"),
    ("grade_level", "Grade"),
)


#: The fields of an incident a conflict compares, hub and source side by side: (name in the
#: push row and in ``incident_values``, label). The connector compares exactly these.
CONFLICT_FIELDS = (
    ("occurred_on", "Date"),
    ("occurred_at", "Time of day"),
    ("behavior_code", "Problem behavior"),
)


def integrations_for(*, actor, action: str = VIEW) -> QuerySet[Integration]:
    return restrict(Integration.objects.all(), actor, action)


def integrations_with_last_run(queryset: QuerySet[Integration]) -> QuerySet[Integration]:
    """Annotate each integration with the status of its latest run (one subquery, on the
    runs' (definition, -id) index through the definitions)."""
    latest = SyncRun.objects.filter(definition__integration=OuterRef("pk")).order_by("-id")
    return queryset.annotate(
        last_run_status=Subquery(latest.values("status")[:1]),
        last_run_id=Subquery(latest.values("id")[:1]),
    )


@dataclass(frozen=True)
class IntegrationHealth:
    """How an integration's recent runs went."""

    finished: int  # runs in the window
    succeeded: int
    last_run: SyncRun | None

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.finished if self.finished else None


def integration_health(*, integration: Integration) -> IntegrationHealth:
    """Success rate over the latest finished runs (discarded runs decided nothing about the
    source's health and are left out), and the latest run of any status."""
    runs = SyncRun.objects.filter(definition__integration=integration)
    window = list(
        runs.filter(status__in=[*SUCCESSFUL, RunStatus.FAILED])
        .order_by("-id")
        .values_list("status", flat=True)[:HEALTH_WINDOW]
    )
    return IntegrationHealth(
        finished=len(window),
        succeeded=sum(1 for s in window if s in SUCCESSFUL),
        last_run=runs.select_related("definition").order_by("-id").first(),
    )


def connector_entities(integration: Integration) -> tuple[str, ...]:
    """The hub entities this integration's connector reads (none if its type is gone)."""
    try:
        return registry.get(integration.connector_type).entities
    except LookupError:
        return ()


def mappings_of(*, actor, integration: Integration) -> dict[str, Mapping]:
    """The integration's mappings the actor may see, by entity, with their current version."""
    mappings = restrict(Mapping.objects.filter(integration=integration), actor, VIEW)
    return {m.entity: m for m in mappings.select_related("current")}


def mapping_versions(*, actor, mapping: Mapping) -> QuerySet[MappingVersion]:
    versions = restrict(MappingVersion.objects.filter(mapping=mapping), actor, VIEW)
    return versions.select_related("created_by").order_by("-number")


def definitions_of(*, actor, integration: Integration) -> QuerySet[SyncDefinition]:
    return restrict(SyncDefinition.objects.filter(integration=integration), actor, VIEW)


def definition_needs_upload(definition: SyncDefinition) -> bool:
    """Whether a run of this definition needs a file from the person starting it (a OneRoster
    CSV integration whose zip is uploaded with each run)."""
    integration = definition.integration
    try:
        connector_cls = registry.get(integration.connector_type)
    except LookupError:
        return False
    return hasattr(connector_cls, "use_upload") and (
        integration.params.get("source", "upload") == "upload"
    )


def recent_runs(*, actor, definition: SyncDefinition, limit: int = 10) -> list[SyncRun]:
    runs = restrict(SyncRun.objects.filter(definition=definition), actor, VIEW)
    return list(runs.defer("log", "diff", "staging").order_by("-id")[:limit])


def run_progress(run: SyncRun) -> dict[str, Any]:
    """What the admin's progress bar shows; the caller has checked the run is the actor's."""
    fresh = (
        SyncRun.objects.filter(pk=run.pk)
        .only(
            "status",
            "processed",
            "total",
            "phase",
            "message",
            *(f"{k}_count" for k in COUNT_NAMES),
        )
        .get()
    )
    return {
        "id": fresh.pk,
        "status": fresh.status,
        "status_label": fresh.get_status_display(),
        "active": fresh.status in ACTIVE,
        "finished": fresh.status in FINISHED,
        "processed": fresh.processed,
        "total": fresh.total,
        "percent": fresh.percent,
        "phase": fresh.phase,
        "message": fresh.message[:500],
        "counts": {k: getattr(fresh, f"{k}_count") for k in COUNT_NAMES},
    }


def run_errors(*, actor, run: SyncRun) -> QuerySet[RecordError]:
    errors = restrict(RecordError.objects.filter(run=run), actor, VIEW)
    return errors.defer("raw").order_by("entity", "line", "id")


class _Echo:
    """A file-like object whose write returns what it was given (for streaming csv)."""

    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> Any:
    # A cell starting with = + - @ is run as a formula by spreadsheets (CSV injection); the
    # reasons and source values are the source system's text, so neutralise them.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def run_errors_csv(*, actor, run: SyncRun) -> Iterator[str]:
    """Every record error of the run as CSV lines, header first, read in chunks."""
    writer = csv.writer(_Echo())
    yield writer.writerow(ERROR_CSV_COLUMNS)
    rows = run_errors(actor=actor, run=run).values_list(*ERROR_CSV_COLUMNS)
    for row in rows.iterator(chunk_size=2000):
        yield writer.writerow([_cell(v) for v in row])


def parse_sample_csv(text: str, *, limit: int = 50) -> list[dict[str, str]]:
    """Sample rows an admin pasted (a header and a few rows) as source records."""
    reader = csv.DictReader(io.StringIO(text.strip()))
    rows = []
    for row in reader:
        if len(rows) >= limit:
            break
        rows.append({k.strip(): (v or "") for k, v in row.items() if k is not None})
    return rows


def reviews_with_candidates(queryset: QuerySet[IdentityReview]) -> QuerySet[IdentityReview]:
    """Annotate each review with its candidate student's compared fields (one subquery).

    The candidate is read within the review's own district; the review itself has passed the
    gate, so its candidate is a student of the actor's district.
    """
    from bxos.schools.models import Student

    fields = {name: name for name, _ in IDENTITY_FIELDS}
    candidate = Student.objects.filter(pk=OuterRef("candidate_id"), district=OuterRef("district"))
    return queryset.annotate(
        candidate=Subquery(candidate.values(json=JSONObject(id="id", **fields))[:1])
    )


def review_rows(review: IdentityReview, candidate: dict | None) -> list[dict[str, Any]]:
    """Incoming and existing values side by side, with whether they differ."""
    incoming = review.incoming or {}
    candidate = candidate or {}
    rows = []
    for name, label in IDENTITY_FIELDS:
        mine, theirs = incoming.get(name), candidate.get(name)
        rows.append(
            {
                "label": label,
                "incoming": _text(mine),
                "existing": _text(theirs),
                "differs": _text(mine) != _text(theirs),
            }
        )
    return rows


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def diff_tables(diff: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's diff (per entity: counts and samples) as tables: inserts with their fields,
    updates as field: before -> after, removals by id and source id."""
    known = ent.in_merge_order(e for e in diff if e in ent.BY_NAME)
    tables = []
    for entity in [*known, *(e for e in diff if e not in ent.BY_NAME and e != "push")]:
        item = diff.get(entity) or {}
        samples = item.get("samples") or {}
        if not isinstance(samples, dict):
            continue
        inserts = samples.get("insert") or []
        columns: list[str] = []
        for sample in inserts:
            for name in sample.get("after") or {}:
                if name not in columns:
                    columns.append(name)
        updates = []
        for sample in samples.get("update") or []:
            changes = []
            for name, pair in (sample.get("changes") or {}).items():
                before, after = (
                    pair if isinstance(pair, list | tuple) and len(pair) == 2 else (None, pair)
                )
                changes.append({"field": name, "before": _text(before), "after": _text(after)})
            updates.append(
                {"source_id": sample.get("source_id"), "id": sample.get("id"), "changes": changes}
            )
        removals = samples.get("remove") or []
        counts = {k: item.get(k, 0) or 0 for k in COUNT_NAMES}
        tables.append(
            {
                "entity": entity,
                "label": ent.BY_NAME[entity].label if entity in ent.BY_NAME else entity,
                "counts": [(k, f"{counts[k]:,}") for k in COUNT_NAMES],
                "existing": None if item.get("existing") is None else f"{item['existing']:,}",
                "insert_columns": columns,
                "inserts": [
                    {
                        "source_id": s.get("source_id"),
                        "values": [_text((s.get("after") or {}).get(c)) for c in columns],
                    }
                    for s in inserts
                ],
                "inserts_more": _more(counts["created"], inserts),
                "updates": updates,
                "updates_more": _more(counts["updated"], updates),
                "removals": removals,
                "removals_more": _more(counts["deleted"], removals),
                "changed": bool(inserts or updates or removals),
            }
        )
    return tables


def _more(count: int, shown: list) -> str:
    """How many more rows than the samples shown, as text ('' when none)."""
    more = count - len(shown)
    return f"{more:,}" if more > 0 else ""


def conflicts_for(*, actor, action: str = VIEW) -> QuerySet[SyncConflict]:
    """The sync conflicts the actor may ``action`` (their district's, for district admins)."""
    return restrict(SyncConflict.objects.all(), actor, action)


@dataclass(frozen=True)
class ConflictRow:
    """One line of a conflict's comparison: the hub's value, the source's, and whether the two
    differ (``compared`` False: shown for context, not part of what the sync compares)."""

    name: str
    label: str
    hub: str
    source: str
    differs: bool
    compared: bool = True


def conflict_source_values(conflict: SyncConflict) -> dict[str, Any]:
    """The source's side of a conflict in the vocabulary of the hub's push rows.

    The connector that read it translates (``incident_values`` of the Ed-Fi connector); when
    its type is gone, the fields common to both snapshots are taken as they are.
    """
    source = conflict.source or {}
    try:
        connector_cls = registry.get(conflict.definition.integration.connector_type)
    except LookupError:
        connector_cls = None
    translate = getattr(connector_cls, "incident_values", None)
    if translate is None:
        return {k: v for k, v in source.items() if k in (conflict.hub or {})}
    try:
        return dict(translate(source))
    except (TypeError, ValueError, AttributeError):
        return {}


def conflict_rows(conflict: SyncConflict) -> list[ConflictRow]:
    """The hub's and the source's values of a conflict side by side, differences marked.

    A conflict about a record the hub deleted (``hub["deleted"]``) compares existence: the
    hub no longer has it, the source still does (and changed it since the last push). One
    about a discipline action a push sent and the hub removed names the action instead of the
    incident's fields.
    """
    hub = conflict.hub or {}
    source = conflict_source_values(conflict)
    modified = source.get("modified_at")
    rows: list[ConflictRow] = []
    if conflict.entity == PushedAction.CONFLICT_ENTITY:
        rows.append(
            ConflictRow(
                name="exists",
                label="Discipline action",
                hub=f"Removed in the hub ({_when_text(hub.get('deleted_at'))}), incident "
                f"#{hub.get('incident_id', '')}",
                source=f"Still in the source ({conflict.source_id}), changed since the last push",
                differs=True,
            )
        )
    elif hub.get("deleted"):
        rows.append(
            ConflictRow(
                name="exists",
                label="Record",
                hub=f"Deleted in the hub ({_when_text(hub.get('deleted_at'))})",
                source="Still in the source, changed since the last push",
                differs=True,
            )
        )
        for name, label in CONFLICT_FIELDS:
            rows.append(
                ConflictRow(name, label, "—", _text(source.get(name)), False, compared=False)
            )
    else:
        for name, label in CONFLICT_FIELDS:
            mine, theirs = _text(hub.get(name)), _text(source.get(name))
            rows.append(ConflictRow(name, label, mine, theirs, mine != theirs))
        action = " · ".join(
            x
            for x in (
                _text(hub.get("action_code")),
                _text(hub.get("action_date")),
                f"{hub['duration_days']:g} day(s)" if hub.get("duration_days") else "",
            )
            if x
        )
        rows.append(
            ConflictRow(
                "action",
                "Discipline action",
                action or "none",
                "(kept in the source's own action records)",
                False,
                compared=False,
            )
        )
    rows.append(
        ConflictRow(
            "modified_at",
            "Source last changed",
            "",
            _when_text(modified),
            False,
            compared=False,
        )
    )
    return rows


def _when_text(value: Any) -> str:
    if value in (None, ""):
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        if timezone.is_aware(value):
            value = timezone.localtime(value)
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return str(value)
