"""Writes of the integration engine: integrations, mappings, definitions, runs and reviews.

Every function takes the acting user (or the system actor) and records it in the audit log;
the admin, the tasks and the inbound endpoint only call these.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets as pysecrets
import time
import traceback
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
from auditlog.models import LogEntry
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from bxos.common import events
from bxos.common.audit import acting_as, audit_bulk
from bxos.common.db import own_connection
from bxos.common.services import model_create, model_save, write_as
from integrations import entities as ent
from integrations import pipeline, transforms
from integrations.choices import (
    ACTIVE,
    CircuitState,
    Direction,
    ErrorStatus,
    ReviewStatus,
    RunStatus,
    RunTrigger,
    ScheduleKind,
    SyncMode,
)
from integrations.connectors import registry
from integrations.connectors.base import Connector, ConnectorError
from integrations.models import (
    Crosswalk,
    IdentityReview,
    Integration,
    Mapping,
    MappingVersion,
    RecordError,
    RunChange,
    SyncDefinition,
    SyncRun,
)

logger = logging.getLogger(__name__)

RUN_TASK = "integrations.run_sync"
SCHEDULE_TASK = "integrations.scheduled_sync"


def _conf(name: str):
    return settings.INTEGRATIONS[name]


# --- integrations -------------------------------------------------------------------------------


def _split_params(connector_cls: type[Connector], values: dict[str, Any]) -> tuple[dict, dict]:
    """Check values against the type's declared parameters; return (plain, secret)."""
    errors: dict[str, str] = {}
    declared = {p.name: p for p in connector_cls.params}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        errors["params"] = f"unknown parameter(s) for {connector_cls.label}: {', '.join(unknown)}"
    plain, secret = {}, {}
    for name, param in declared.items():
        value = values.get(name)
        if value in (None, ""):
            value = param.default
        if param.required and value in (None, ""):
            errors[name] = f"{param.label} is required"
            continue
        if value in (None, ""):
            continue
        if param.kind == "int":
            try:
                value = int(value)
            except (TypeError, ValueError):
                errors[name] = f"{param.label} must be a whole number, not {value!r}"
                continue
        if param.kind == "url":
            from bxos.common.outbound import validate_outbound_url

            try:
                validate_outbound_url(str(value), resolve=False)
            except ValidationError as exc:
                errors[name] = f"{param.label}: {'; '.join(exc.messages)}"
                continue
        if param.kind == "choice" and param.choices and value not in dict(param.choices):
            errors[name] = f"{param.label} must be one of {', '.join(dict(param.choices))}"
            continue
        (secret if param.kind == "secret" else plain)[name] = value
    if errors:
        raise ValidationError(errors)
    return plain, secret


def integration_create(
    *,
    district,
    name: str,
    connector_type: str,
    source_system: str,
    params: dict[str, Any],
    actor,
) -> Integration:
    try:
        connector_cls = registry.get(connector_type)
    except LookupError as exc:
        raise ValidationError({"connector_type": str(exc)}) from exc
    plain, secret = _split_params(connector_cls, params)
    with write_as(actor):
        integration = model_create(
            model=Integration,
            actor=actor,
            data={
                "district": district,
                "name": name,
                "connector_type": connector_type,
                "source_system": source_system,
                "params": plain,
                "secrets": json.dumps(secret) if secret else "",
            },
            emit=False,
        )
        ensure_default_mappings(integration=integration, actor=actor)
    return integration


def integration_update(
    *, integration: Integration, actor, data: dict[str, Any], params: dict[str, Any]
) -> Integration:
    """Change an integration. A secret left empty keeps its stored value."""
    connector_cls = registry.get(integration.connector_type)
    secret_names = {p.name for p in connector_cls.params if p.kind == "secret"}
    merged = {**integration.params, **integration_secrets(integration)}
    for name, value in params.items():
        if name in secret_names and value in (None, ""):
            continue  # an empty secret field keeps the stored value
        merged[name] = value
    plain, secret = _split_params(connector_cls, merged)
    for name, value in data.items():
        setattr(integration, name, value)
    integration.params = plain
    integration.secrets = json.dumps(secret) if secret else ""
    return model_save(instance=integration, actor=actor, emit=False)


def integration_secrets(integration: Integration) -> dict[str, Any]:
    return json.loads(integration.secrets) if integration.secrets else {}


def _state(integration: Integration) -> dict[str, Any]:
    return json.loads(integration.state) if integration.state else {}


def connector_for(integration: Integration, *, log=None, progress=None) -> Connector:
    connector_cls = registry.get(integration.connector_type)
    params = {**integration.params, **integration_secrets(integration)}
    return connector_cls(params=params, state=_state(integration), log=log, progress=progress)


def connector_state_save(integration: Integration, connector: Connector) -> None:
    """Keep the connector's memory between runs (a cached token)."""
    # The connector's memory (a cached token) is not an edit worth an audit entry.
    # update() encrypts through the field, like save().
    Integration.objects.filter(pk=integration.pk).update(state=json.dumps(connector.state))


def integration_test(*, integration: Integration, actor) -> tuple[bool, str]:
    """Press "Test connection": returns (ok, message) and records it on the integration."""
    connector = connector_for(integration)
    try:
        message, ok = connector.test(), True
    except ConnectorError as exc:
        message, ok = str(exc), False
    except Exception as exc:  # a bug in a connector must still answer the admin
        message, ok = f"unexpected error: {type(exc).__name__}: {exc}", False
    finally:
        connector.close()
    connector_state_save(integration, connector)
    integration.last_test_at = timezone.now()
    integration.last_test_message = ("OK: " if ok else "Failed: ") + message
    model_save(
        instance=integration,
        actor=actor,
        fields=["last_test_at", "last_test_message"],
        emit=False,
    )
    return ok, message


# --- mappings -----------------------------------------------------------------------------------


def crosswalks_of(district_id: int) -> dict[str, dict[str, str]]:
    return {c.name: c.values for c in Crosswalk.objects.filter(district_id=district_id)}


def mapping_validate(*, integration: Integration, entity: str, rules: list[dict]) -> None:
    spec = ent.spec(entity)
    try:
        transforms.validate_rules(
            rules,
            targets={t.name for t in spec.targets},
            crosswalk_names=set(crosswalks_of(integration.district_id)),
        )
    except transforms.MappingError as exc:
        raise ValidationError({"rules": exc.problems}) from exc
    missing = [
        t.name
        for t in spec.targets
        if t.required and not t.default_sql and t.name not in {r.get("target") for r in rules}
    ]
    if missing:
        raise ValidationError(
            {
                "rules": [
                    f"the {entity} mapping must fill the required field(s) {', '.join(missing)}"
                ]
            }
        )


def mapping_save(
    *, integration: Integration, entity: str, rules: list[dict], actor, note: str = ""
) -> MappingVersion:
    """Save rules as the entity's next mapping version (versions are never edited)."""
    if entity not in registry.get(integration.connector_type).entities:
        raise ValidationError({"entity": f"{integration.connector_type} does not read {entity}"})
    mapping_validate(integration=integration, entity=entity, rules=rules)
    with write_as(actor):
        mapping, _ = Mapping.objects.select_for_update().get_or_create(
            integration=integration, entity=entity
        )
        if mapping.current and mapping.current.rules == rules:
            return mapping.current
        number = (
            mapping.versions.order_by("-number").values_list("number", flat=True).first() or 0
        ) + 1
        version = model_create(
            model=MappingVersion,
            actor=actor,
            data={
                "mapping": mapping,
                "number": number,
                "rules": rules,
                "note": note,
                "created_by": actor if getattr(actor, "pk", None) else None,
            },
            emit=False,
        )
        mapping.current = version
        model_save(instance=mapping, actor=actor, fields=["current"], emit=False)
    return version


def mapping_restore(*, version: MappingVersion, actor) -> MappingVersion:
    """Make an earlier version current again (as a new version, so history stays linear)."""
    mapping = version.mapping
    return mapping_save(
        integration=mapping.integration,
        entity=mapping.entity,
        rules=version.rules,
        actor=actor,
        note=f"restored from v{version.number}",
    )


def ensure_default_mappings(*, integration: Integration, actor) -> None:
    connector_cls = registry.get(integration.connector_type)
    for entity, rules in connector_cls.default_mappings.items():
        if (
            entity in ent.BY_NAME
            and not Mapping.objects.filter(
                integration=integration, entity=entity, current__isnull=False
            ).exists()
        ):
            mapping_save(
                integration=integration,
                entity=entity,
                rules=rules,
                actor=actor,
                note="connector default",
            )


def current_rules(integration: Integration, entity: str) -> tuple[list[dict], int | None]:
    mapping = (
        Mapping.objects.filter(integration=integration, entity=entity)
        .select_related("current")
        .first()
    )
    if mapping and mapping.current:
        return mapping.current.rules, mapping.current.pk
    rules = registry.get(integration.connector_type).default_mappings.get(entity)
    if rules is None:
        raise ValidationError({"entities": f"no mapping for {entity}"})
    return rules, None


def mapping_preview(
    *, integration: Integration, entity: str, rules: list[dict], rows: list[dict]
) -> list[dict]:
    mapping_validate(integration=integration, entity=entity, rules=rules)
    return transforms.preview(rules, rows, crosswalks=crosswalks_of(integration.district_id))


# --- sync definitions and their schedules -------------------------------------------------------


def definition_save(*, definition: SyncDefinition, actor) -> SyncDefinition:
    """Save a definition and make its beat schedule match (create, change or remove it)."""
    connector_cls = registry.get(definition.integration.connector_type)
    unknown = [e for e in definition.entities if e not in connector_cls.entities]
    if unknown:
        raise ValidationError(
            {"entities": f"{connector_cls.label} cannot read: {', '.join(unknown)}"}
        )
    if not definition.entities:
        raise ValidationError({"entities": "Choose at least one entity."})
    if definition.mode == SyncMode.INCREMENTAL and connector_cls.cursor_kind is None:
        raise ValidationError(
            {"mode": f"{connector_cls.label} has no change tracking; use full or delta"}
        )
    if definition.direction == "bidirectional" and not connector_cls.writes:
        raise ValidationError({"direction": f"{connector_cls.label} cannot write back"})
    if definition.schedule_kind == ScheduleKind.CRONTAB:
        _check_crontab(definition.crontab)
    definition.entities = ent.in_merge_order(definition.entities)
    with write_as(actor):
        if definition.schedule_kind == ScheduleKind.EVENT and not definition.inbound_secret:
            # Standard Webhooks form: whsec_ and base64 of 32 random bytes.
            definition.inbound_secret = (
                "whsec_" + base64.b64encode(pysecrets.token_bytes(32)).decode()
            )
        model_save(instance=definition, actor=actor, emit=False)
        _sync_schedule(definition)
    return definition


def _check_crontab(expression: str) -> None:
    parts = expression.split()
    if len(parts) != 5:
        raise ValidationError(
            {
                "crontab": f"a crontab has five fields (minute hour day month weekday); "
                f"{expression!r} has {len(parts)}"
            }
        )
    from celery.schedules import crontab

    try:
        crontab(*parts)
    except (ValueError, TypeError) as exc:
        raise ValidationError({"crontab": f"{expression!r}: {exc}"}) from exc


def _sync_schedule(definition: SyncDefinition) -> None:
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

    kind = definition.schedule_kind
    task = definition.periodic_task
    if kind not in (ScheduleKind.INTERVAL, ScheduleKind.CRONTAB) or not definition.is_active:
        if task is not None:
            definition.periodic_task = None
            SyncDefinition.objects.filter(pk=definition.pk).update(periodic_task=None)
            task.delete()
        return
    if task is None:
        task = PeriodicTask(name=f"Sync: {definition.name} (#{definition.pk})", task=SCHEDULE_TASK)
    task.args = json.dumps([definition.pk])
    task.enabled = True
    if kind == ScheduleKind.INTERVAL:
        task.interval, _ = IntervalSchedule.objects.get_or_create(
            every=definition.interval_minutes, period=IntervalSchedule.MINUTES
        )
        task.crontab = None
    else:
        minute, hour, day, month, weekday = definition.crontab.split()
        task.crontab, _ = CrontabSchedule.objects.get_or_create(
            minute=minute,
            hour=hour,
            day_of_month=day,
            month_of_year=month,
            day_of_week=weekday,
            timezone=_district_zone(definition),
        )
        task.interval = None
    task.save()
    if definition.periodic_task_id != task.pk:
        definition.periodic_task = task
        SyncDefinition.objects.filter(pk=definition.pk).update(periodic_task=task)


def _district_zone(definition: SyncDefinition) -> str:
    return definition.integration.district.time_zone or "UTC"


# --- runs ---------------------------------------------------------------------------------------


def run_start(
    *,
    definition: SyncDefinition,
    actor,
    trigger: str = RunTrigger.MANUAL,
    upload=None,
    mode: str | None = None,
    enqueue: bool = True,
) -> SyncRun:
    """Queue a run; a worker executes it after this transaction commits (``enqueue=False``:
    the caller, already a worker, executes it)."""
    if not definition.is_active:
        raise ValidationError("This sync definition is switched off.")
    # A run whose worker died would otherwise keep the definition from ever running again.
    runs_reap_abandoned(actor=actor, definition=definition)
    busy = definition.runs.filter(status__in=ACTIVE).first()
    # A re-run of failed records may queue behind a run; nothing starts while a rollback
    # restores the rows it would read and write.
    if busy and (trigger != RunTrigger.RETRY or busy.status == RunStatus.ROLLING_BACK):
        raise ValidationError(
            f"Run #{busy.pk} of this definition is still {busy.get_status_display().lower()}."
        )
    with write_as(actor):
        run = SyncRun(
            definition=definition,
            district_id=definition.integration.district_id,
            trigger=trigger,
            mode=mode or definition.mode,
            requested_by=actor
            if getattr(actor, "pk", None) and not actor.is_system_actor
            else None,
            cursor_before=definition.cursor,
        )
        if upload is not None:
            run.upload.save(upload.name, upload, save=False)
        run.save()
        if enqueue:
            transaction.on_commit(lambda: _enqueue(run.pk))
    return run


def _enqueue(run_id: int) -> None:
    from integrations.tasks import run_sync

    run_sync.delay(run_id)


# --- a run's worker lock: a worker is at work on a run while it holds it ---------------------

#: The advisory-lock key space of a run's worker ("RUN1"), the two-int form: (this, run id).
#: The other spaces are the webhooks' claims ("WHK1"); the one-bigint form is another key space.
RUN_LOCK_SPACE = 0x5255_4E31
#: The phases of a run waiting in the broker's queue for a worker (approved, or asked to be
#: rolled back): no worker has it yet, so a free lock does not mean that one died.
PHASE_APPLY_WAITING = "Approved; waiting for a worker to apply it"
PHASE_ROLLBACK_WAITING = "Rollback requested"
#: What a worker writes when it takes up one of those runs, under the lock.
PHASE_APPLYING = "Applying the approved changes"
PHASE_ROLLING_BACK = "Rolling back"
#: Runs a worker holds the lock of while it works on them.
_WORKED_ON = Q(status__in=(RunStatus.RUNNING, RunStatus.ROLLING_BACK)) & ~Q(
    phase__in=(PHASE_APPLY_WAITING, PHASE_ROLLBACK_WAITING)
)


def _run_key(run_id: int) -> tuple[int, int]:
    # Ids from 2**31 - 1 on share keys with smaller ones: such a pair can only make a dead run
    # look alive while the other one runs, never a live run look dead.
    return RUN_LOCK_SPACE, run_id % 2147483647


def _take_worker_lock(run_id: int) -> psycopg.Connection | None:
    """The connection holding the run's worker lock (closing it releases the lock), or None
    when another session holds it (another worker: a message delivered twice).

    Its own connection, never Django's: Django may close and reopen that one while the task
    runs, which would drop the lock while the run lives. A process that dies has its
    connections closed by PostgreSQL, which releases the lock.
    """
    conn = own_connection(application_name=f"bxos worker of sync run #{run_id}", keepalive=True)
    try:
        taken = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", _run_key(run_id)).fetchone()
    except BaseException:
        conn.close()
        raise
    if not taken[0]:
        conn.close()
        return None
    return conn


@contextlib.contextmanager
def _taken_up(
    run: SyncRun,
    lock: psycopg.Connection | None,
    *,
    phase: str,
    refused: type[ValidationError],
    busy: str,
    gone: str,
    still: Q,
) -> Iterator[None]:
    """A waiting run (an approved run, a rollback asked for) taken up by this worker under
    its worker lock (``lock``, from :func:`_take_worker_lock`; None: another worker holds it):
    its phase leaves the waiting one while the run is ``still`` so, and from then on a free
    lock means that this worker died. The lock is let go when the block ends. ``refused``
    (with ``busy`` or ``gone``) when another worker has it or it no longer waits."""
    if lock is None:
        raise refused(f"Run #{run.pk} is {busy}.")
    try:
        if not SyncRun.objects.filter(still, pk=run.pk).update(phase=phase):
            raise refused(f"Run #{run.pk} is {gone}.")
        run.phase = phase
        yield
    finally:
        lock.close()


def _no_lock_message(exc: psycopg.Error) -> str:
    return (
        "The worker could not open the database connection that shows it is at work on this "
        f"run ({pipeline._first_line(exc)}); it did not start."
    )


def runs_reap_abandoned(*, actor, definition: SyncDefinition | None = None) -> list[SyncRun]:
    """Finish the runs whose worker is gone (of ``definition``, or of every definition), in
    ``actor``'s name; returns them.

    A worker takes a run's lock before the run becomes running (or, for an approved run or a
    rollback, before it leaves its waiting phase) and holds it until the run's outcome is
    committed, so a run worked on whose lock is free was left by a worker that died (killed,
    out of memory, a deploy). No timeout: a run blocked in one long statement is as alive as
    any (docs/development/decisions.md). Each run is checked under its lock, which is held
    until it is marked, so a worker cannot take it up in between.
    """
    runs = SyncRun.objects.filter(_WORKED_ON)
    if definition is not None:
        runs = runs.filter(definition=definition)
    ids = list(runs.values_list("pk", flat=True))
    if not ids:
        return []
    reaped = []
    try:
        conn = own_connection(application_name="bxos reaper of abandoned sync runs")
    except psycopg.Error:
        # Not a reason to fail the caller (a run's start): the next sweep tries again.
        logger.exception("cannot check sync runs %s for a live worker", ids)
        return []
    try:
        for run_id in ids:
            key = _run_key(run_id)
            if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()[0]:
                continue  # a worker holds it: alive, however long it takes
            try:
                run = _reap(run_id, actor=actor)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)
            if run is not None:
                reaped.append(run)
    finally:
        conn.close()
    return reaped


#: A queued run no worker has taken for this long is sent to the workers again.
QUEUED_RESEND_AFTER = timedelta(minutes=10)


def runs_resend_queued(*, after=QUEUED_RESEND_AFTER) -> list[int]:
    """Send the task of every run queued for longer than ``after`` again; returns their ids.

    A queued run's message can be lost: the broker was down when the run's transaction
    committed, Redis lost its data, or ``scheduled_sync`` died between creating the run and
    executing it (its redelivery then finds the run "still queued" and starts nothing). The
    run would stay queued, and ``run_start`` refuses a new run of its definition while one is.
    A second message is harmless: ``run_execute`` runs a run only while it is queued, under
    its worker lock, so of two deliveries one works and the other finds it taken (a run still
    waiting behind a busy worker gets a spare message, no more: one per sweep)."""
    cutoff = timezone.now() - after
    ids = list(
        SyncRun.objects.filter(status=RunStatus.QUEUED, queued_at__lte=cutoff).values_list(
            "pk", flat=True
        )
    )
    stamp = timezone.localtime().strftime("%H:%M")
    # Bookkeeping the runs' pages show, not a change of the runs: no audit entry.
    SyncRun.objects.filter(pk__in=ids, status=RunStatus.QUEUED).update(
        phase=f"No worker had taken it; sent to the workers again at {stamp}"
    )
    for run_id in ids:
        _enqueue(run_id)
    return ids


def _reap(run_id: int, *, actor) -> SyncRun | None:
    """Finish one abandoned run, saying what its worker's death left: nothing merged (a
    merge, an apply) or nothing undone (a rollback), each being one transaction that commits
    the run's outcome with its data. None when the run is no longer worked on."""
    with write_as(actor):
        run = (
            SyncRun.objects.select_for_update(of=("self",))
            .select_related("definition__integration")
            .filter(_WORKED_ON, pk=run_id)
            .first()
        )
        if run is None:  # finished before the lock was free
            return None
        was = run.status
        log = _Log(run)
        log(f"{actor} found that no worker holds this run any more")
        if run.status == RunStatus.ROLLING_BACK:
            reason = "The worker undoing it stopped before it finished (its process ended)."
            run = _rollback_failed(run, log, reason)
        elif run.decided_at is not None:
            reason = (
                "The worker applying this approved run stopped before it finished; nothing of "
                "it was merged. Start a new run to preview its changes again."
            )
            run = _finish_failed(run, log, reason, counts=False, warnings=run.warnings)
        else:
            reason = (
                "The worker running this run stopped before it finished (its process ended); "
                "nothing of it was merged and the cursor did not move."
            )
            run = _finish_failed(run, log, reason, counts=False)
        LogEntry.objects.log_create(
            run,
            force_log=True,
            action=LogEntry.Action.UPDATE,
            changes={"status": [was, run.status], "reason": ["", reason]},
            additional_data={"reason": reason},
        )
    return run


class _Log:
    def __init__(self, run: SyncRun) -> None:
        self.run = run
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {message}")

    def text(self) -> str:
        return "\n".join(self.lines)


def _circuit_allows(integration: Integration) -> str | None:
    """None when a run may go ahead; otherwise why not."""
    if integration.circuit_state != CircuitState.OPEN:
        return None
    cooldown = _conf("CIRCUIT_COOLDOWN_SECONDS")
    opened = integration.circuit_opened_at or timezone.now()
    if (timezone.now() - opened).total_seconds() >= cooldown:
        Integration.objects.filter(pk=integration.pk).update(circuit_state=CircuitState.HALF_OPEN)
        integration.circuit_state = CircuitState.HALF_OPEN
        return None
    retry_at = opened + timedelta(seconds=cooldown)
    return (
        f"circuit open after {integration.consecutive_failures} consecutive failures; "
        f"the next trial run is allowed after {retry_at:%Y-%m-%d %H:%M} UTC"
    )


def integration_health_record(
    integration: Integration, *, ok: bool, error: str = "", counts: bool
) -> None:
    """A run's outcome on the integration's health; ``counts``: it counts for the circuit."""
    now = timezone.now()
    if ok:
        Integration.objects.filter(pk=integration.pk).update(
            consecutive_failures=0,
            circuit_state=CircuitState.CLOSED,
            circuit_opened_at=None,
            last_success_at=now,
        )
        return
    if not counts:
        Integration.objects.filter(pk=integration.pk).update(
            last_failure_at=now, last_error=error[:2000]
        )
        return
    failures = integration.consecutive_failures + 1
    state = integration.circuit_state
    opened = integration.circuit_opened_at
    if failures >= _conf("CIRCUIT_FAILURES") or state == CircuitState.HALF_OPEN:
        state, opened = CircuitState.OPEN, now
    Integration.objects.filter(pk=integration.pk).update(
        consecutive_failures=failures,
        circuit_state=state,
        circuit_opened_at=opened,
        last_failure_at=now,
        last_error=error[:2000],
    )


def run_execute(*, run: SyncRun, actor=None) -> SyncRun:
    """Run a queued sync: read, stage, merge (or hold). Called by the worker, which holds the
    run's worker lock until the outcome is committed (see :func:`runs_reap_abandoned`)."""
    from bxos.common.audit import system_actor

    actor = actor or system_actor()
    run = SyncRun.objects.select_related("definition__integration").get(pk=run.pk)
    if run.status != RunStatus.QUEUED:
        return run
    log = _Log(run)
    try:
        lock = _take_worker_lock(run.pk)
    except psycopg.Error as exc:
        # Without its lock the run would look abandoned to the next sweep: it does not start.
        run.started_at = timezone.now()
        failed = SyncRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
            status=RunStatus.FAILED, started_at=run.started_at
        )
        if not failed:
            return SyncRun.objects.get(pk=run.pk)
        return _finish_failed(run, log, _no_lock_message(exc), counts=False)
    if lock is None:  # another worker has this run (its message was delivered twice)
        return SyncRun.objects.get(pk=run.pk)
    try:
        return _execute_claimed(run, actor, log)
    finally:
        lock.close()  # after the run's outcome committed: from here a sweep may finish it


def _execute_claimed(run: SyncRun, actor, log: _Log) -> SyncRun:
    """The body of :func:`run_execute`, under the run's worker lock."""
    definition = run.definition
    integration = definition.integration
    # Claim the run: of two workers handed the same run, one goes ahead.
    claimed = SyncRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        return SyncRun.objects.get(pk=run.pk)
    run.status, run.started_at = RunStatus.RUNNING, timezone.now()
    refused = _circuit_allows(integration)
    if refused:
        return _finish_failed(run, log, refused, counts=False)
    progress = pipeline.Progress(run)
    connector = connector_for(
        integration, log=log, progress=lambda n: progress.update(processed=run.processed + n)
    )
    stager = pipeline.Stager(run, progress=progress, log=log)
    try:
        with acting_as(actor):
            staged = _read_and_stage(run, connector, stager, progress, log)
            connector_state_save(integration, connector)
            pushes = definition.direction == Direction.BIDIRECTIONAL and bool(connector.writes)
            run = _merge(
                run,
                staged,
                actor=actor,
                progress=progress,
                log=log,
                warnings=stager.warnings,
                announce=not pushes,
            )
            if pushes:
                _push_and_announce(run, connector, actor, log)
            return run
    except ConnectorError as exc:
        connector_state_save(integration, connector)
        counts = exc.kind in ("credentials", "unavailable")
        return _finish_failed(run, log, str(exc), counts=counts, warnings=stager.warnings)
    except ValidationError as exc:
        return _finish_failed(run, log, "; ".join(exc.messages), counts=False)
    except Exception as exc:
        log(traceback.format_exc(limit=8))
        return _finish_failed(
            run, log, f"unexpected error: {type(exc).__name__}: {exc}", counts=True
        )
    finally:
        connector.close()
        progress.close()


def _read_and_stage(run, connector, stager, progress, log) -> list[pipeline.Staged]:
    definition = run.definition
    integration = definition.integration
    if run.upload and hasattr(connector, "use_upload"):
        connector.use_upload(run.upload.path)
    elif run.trigger == RunTrigger.RETRY and hasattr(connector, "retry_only"):
        # A file source has nothing new to read for a re-run of failed records (an upload
        # integration has no zip at all): only the records that failed are retried.
        connector.retry_only()
        log("re-run of failed records: no new file is read; the failed records are retried")
    mode = run.mode
    if mode == SyncMode.INCREMENTAL and not definition.cursor:
        log("no cursor yet: this first incremental run reads everything")
    window = connector.begin(mode=mode, cursor=definition.cursor or None)
    SyncRun.objects.filter(pk=run.pk).update(cursor_after=window.cursor_after or "")
    run.cursor_after = window.cursor_after or ""
    crosswalks = crosswalks_of(integration.district_id)
    versions: dict[str, int | None] = {}
    staged = []
    for entity in ent.in_merge_order(definition.entities):
        rules, version = current_rules(integration, entity)
        versions[entity] = version
        progress.update(phase=f"Reading {entity}", force=True)
        read = connector.read(entity, window)
        item = stager.stage(read, rules=rules, crosswalks=crosswalks)
        staged.append(item)
        progress.update(total=run.total + item.rows, processed=run.processed + item.rows)
    run.mapping_versions = versions
    run.staging = {"entities": [s.to_json() for s in staged]}
    # The merge counts again from zero for its own share of the bar.
    run.total = run.total * 2
    SyncRun.objects.filter(pk=run.pk).update(
        mapping_versions=versions, staging=run.staging, total=run.total, log=log.text()
    )
    return staged


def _staged_from(run: SyncRun) -> list[pipeline.Staged]:
    return [pipeline.Staged.from_json(item) for item in run.staging.get("entities", [])]


def _merge(
    run, staged, *, actor, progress, log, warnings=(), approved=False, announce=True
) -> SyncRun:
    merger = pipeline.Merger(run, actor=actor, progress=progress, log=log, approved=approved)
    definition = run.definition
    try:
        with write_as(actor):
            results = merger.merge(staged)
            if (run.cursor_after and run.mode != SyncMode.FULL) or run.cursor_after:
                SyncDefinition.objects.filter(pk=definition.pk).update(cursor=run.cursor_after)
            pipeline.errors_superseded(run, staged)
            pipeline.forget_older_images(run)
            totals = _totals(results)
            run.refresh_from_db(fields=["failed_count"])
            failed = RecordError.objects.filter(run=run).exclude(status=ErrorStatus.DISMISSED)
            totals["failed"] = failed.values("line", "source_id", "entity").distinct().count()
            status = RunStatus.PARTIAL if totals["failed"] else RunStatus.SUCCEEDED
            _set_finished(run, status, totals, results, log, warnings, message=_summary(totals))
            if announce:
                _emit_run(run, "sync_run.completed")
    except pipeline.Held as held:
        results = merger.results
        totals = _totals(results)
        log("held for approval: " + "; ".join(held.reasons))
        _set_finished(
            run,
            RunStatus.HELD,
            totals,
            results,
            log,
            warnings,
            message="Held for approval: " + "; ".join(held.reasons),
            finished=False,
        )
        with write_as(actor):
            _emit_run(run, "sync_run.held")
        integration_health_record(definition.integration, ok=True, counts=False)
        return run
    pipeline.drop_staging(run)
    pipeline.analyze_written(results)
    integration_health_record(definition.integration, ok=True, counts=False)
    return run


def _totals(results: dict[str, pipeline.EntityResult]) -> dict[str, int]:
    keys = ("read", "created", "updated", "unchanged", "deleted", "failed", "skipped")
    return {k: sum(getattr(r, k) for r in results.values()) for k in keys}


def _summary(totals: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in totals.items())


def _set_finished(run, status, totals, results, log, warnings, *, message, finished=True):
    run.status = status
    for key, value in totals.items():
        setattr(run, f"{key}_count", value)
    run.diff = {name: r.as_dict() for name, r in results.items()}
    run.warnings = list(warnings)
    run.message = message
    run.log = (run.log + "\n" if run.log else "") + log.text()
    if finished:
        run.finished_at = timezone.now()
        run.processed = run.total
    run.phase = "" if finished else "Waiting for approval"
    run.save()


def _finish_failed(run, log, message: str, *, counts: bool, warnings=()) -> SyncRun:
    log(f"failed: {message}")
    run.status = RunStatus.FAILED
    run.finished_at = timezone.now()
    run.message = message
    run.warnings = list(warnings)
    run.phase = ""
    run.log = (run.log + "\n" if run.log else "") + log.text()
    run.save()
    pipeline.drop_staging(run)
    integration = Integration.objects.get(pk=run.definition.integration_id)
    integration_health_record(integration, ok=False, error=message, counts=counts)
    from bxos.common.audit import system_actor

    with write_as(system_actor()):
        _emit_run(run, "sync_run.failed")
    return run


def _emit_run(run: SyncRun, event_type: str) -> None:
    events.emit(
        event_type,
        None,
        data={
            "id": run.pk,
            "districtId": run.district_id,
            "connector": run.definition.integration.connector_type,
            "status": run.status,
            "startedAt": run.started_at.isoformat() if run.started_at else None,
            "finishedAt": run.finished_at.isoformat() if run.finished_at else None,
            "counts": {
                k: getattr(run, f"{k}_count")
                for k in ("read", "created", "updated", "unchanged", "deleted", "failed", "skipped")
            },
            "message": run.message[:500],
        },
    )


def run_approve(*, run: SyncRun, actor, enqueue: bool = True) -> SyncRun:
    """Approve a held run: it is applied as previewed (its staged data was kept while it
    waited) by a worker, once this transaction commits, so that applying a district's worth
    of changes never runs inside a web request (``enqueue=False``: applied here and now, by a
    caller that already is a worker). Approving twice is refused."""
    with transaction.atomic():
        run = (
            SyncRun.objects.select_for_update(of=("self",))
            .select_related("definition__integration")
            .get(pk=run.pk)
        )
        if run.status != RunStatus.HELD:
            raise ValidationError(f"Only a held run can be approved; this one is {run.status}.")
        with write_as(actor):
            run.decided_by, run.decided_at = actor, timezone.now()
            run.status = RunStatus.RUNNING
            run.phase = PHASE_APPLY_WAITING
            run.save(update_fields=["decided_by", "decided_at", "status", "phase"])
        if enqueue:
            transaction.on_commit(lambda: _enqueue_apply(run.pk))
    if enqueue:
        return run
    return run_apply_approved(run=run, actor=actor)


def _enqueue_apply(run_id: int) -> None:
    from integrations.tasks import apply_approved_run

    apply_approved_run.delay(run_id)


def run_apply_approved(*, run: SyncRun, actor) -> SyncRun:
    """Apply an approved run (the worker's half of ``run_approve``): the merge as previewed,
    then, for a bidirectional sync, the push. A run that is no longer waiting for it (applied
    already, by a task delivered twice) is refused."""
    run = SyncRun.objects.select_related("definition__integration").get(pk=run.pk)
    if run.status != RunStatus.RUNNING or run.decided_at is None:
        raise ValidationError(f"Run #{run.pk} is not an approved run waiting to be applied.")
    log = _Log(run)
    try:
        lock = _take_worker_lock(run.pk)
    except psycopg.Error as exc:
        return _finish_failed(run, log, _no_lock_message(exc), counts=False, warnings=run.warnings)
    with _taken_up(
        run,
        lock,
        phase=PHASE_APPLYING,
        refused=ValidationError,
        busy="being applied by another worker",
        gone="not an approved run waiting to be applied",
        still=Q(status=RunStatus.RUNNING, decided_at__isnull=False),
    ):
        return _apply_claimed(run, actor, log)


def _apply_claimed(run: SyncRun, actor, log: _Log) -> SyncRun:
    """The body of :func:`run_apply_approved`, under the run's worker lock."""
    log(f"approved by {run.decided_by or actor}")
    progress = pipeline.Progress(run)
    integration = run.definition.integration
    pushes = run.definition.direction == Direction.BIDIRECTIONAL and bool(
        registry.get(integration.connector_type).writes
    )
    try:
        with acting_as(actor):
            run = _merge(
                run,
                _staged_from(run),
                actor=actor,
                progress=progress,
                log=log,
                warnings=run.warnings,
                approved=True,
                announce=not pushes,
            )
            if pushes:
                connector = connector_for(integration, log=log)
                try:
                    _push_and_announce(run, connector, actor, log)
                finally:
                    connector.close()
            return run
    finally:
        progress.close()


def _push_and_announce(run: SyncRun, connector, actor, log) -> None:
    """Bidirectional syncs: after the pull committed, push the hub's changes back, then
    announce the run with its final status."""
    if run.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL):
        from integrations import push

        push.run_push(run=run, connector=connector, actor=actor, log=log)
    if run.status != RunStatus.HELD:
        with write_as(actor):
            _emit_run(run, "sync_run.completed")


def run_discard(*, run: SyncRun, actor) -> SyncRun:
    """Throw a held run away: nothing changes, the cursor stays where it was."""
    if run.status != RunStatus.HELD:
        raise ValidationError(f"Only a held run can be discarded; this one is {run.status}.")
    with write_as(actor):
        run.status = RunStatus.DISCARDED
        run.decided_by, run.decided_at = actor, timezone.now()
        run.finished_at = timezone.now()
        run.message = f"Discarded by {actor}. " + run.message
        run.save()
        RecordError.objects.filter(run=run).delete()
        transaction.on_commit(lambda: pipeline.drop_staging(run))
    return run


class _NotWaiting(ValidationError):
    """A rollback task for a run that is not (or no longer) waiting for one: a message
    delivered twice, or a second worker while the first one is at it. Nothing is recorded."""


def _rollback_blockers(run: SyncRun) -> None:
    """Refuse a rollback that could not restore exactly: a later run of the same definition
    replaced this run's before-images, or is about to change the same rows."""
    later = (
        run.definition.runs.filter(pk__gt=run.pk)
        .exclude(status__in=[RunStatus.FAILED, RunStatus.DISCARDED, RunStatus.ROLLED_BACK])
        .order_by("pk")
        .first()
    )
    if later is None:
        return
    if later.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL):
        raise ValidationError(
            f"Run #{later.pk} ran after this one; roll that back first (its before-images "
            "replaced this run's)."
        )
    raise ValidationError(
        f"Run #{later.pk} of this definition is {later.get_status_display().lower()}; wait for "
        "it to finish (or discard it) and roll that back first."
    )


def run_rollback(*, run: SyncRun, actor, enqueue: bool = True) -> SyncRun:
    """Ask for a finished run to be undone exactly (see :func:`run_rollback_apply`).

    Records who asked and when, marks the run "rolling back" (no new run of its definition
    starts meanwhile) and, once this transaction commits, queues a worker to do it in the
    asker's name: undoing a district's worth of changes must not hang on a web request.
    ``enqueue=False``: undone here and now, by a caller that is a worker already (or a test);
    a failure then raises, after it was recorded on the run.

    Only the latest finished run of a definition can be rolled back; asking twice is refused.
    """
    with transaction.atomic():
        run = (
            SyncRun.objects.select_for_update(of=("self",))
            .select_related("definition__integration")
            .get(pk=run.pk)
        )
        if run.status not in (RunStatus.SUCCEEDED, RunStatus.PARTIAL):
            raise ValidationError(
                f"Only a finished run can be rolled back; this one is "
                f"{run.get_status_display().lower()}."
            )
        _rollback_blockers(run)
        with write_as(actor):
            run.status_before_rollback = run.status
            run.status = RunStatus.ROLLING_BACK
            run.rollback_requested_by = actor if getattr(actor, "pk", None) else None
            run.rollback_requested_at = timezone.now()
            run.phase = PHASE_ROLLBACK_WAITING
            # The bar counts the rollback's own rows from here on (the worker sets the total).
            run.processed, run.total = 0, 0
            run.save(
                update_fields=[
                    "status_before_rollback",
                    "status",
                    "rollback_requested_by",
                    "rollback_requested_at",
                    "phase",
                    "processed",
                    "total",
                ]
            )
        if enqueue:
            transaction.on_commit(lambda: _enqueue_rollback(run.pk))
    if enqueue:
        return run
    run = run_rollback_apply(run=run, actor=actor)
    if run.status != RunStatus.ROLLED_BACK:
        raise ValidationError(run.message.split("\n", 1)[0])
    return run


def _enqueue_rollback(run_id: int) -> None:
    from integrations.tasks import rollback_run

    rollback_run.delay(run_id)


def run_rollback_apply(*, run: SyncRun, actor) -> SyncRun:
    """Undo a run a person asked to roll back (the worker's half of :func:`run_rollback`):
    delete what it inserted, restore what it changed or removed, reset the cursor, all in one
    transaction, with a live phase and bar on the run's page.

    A run that is not waiting for its rollback (undone already, by a task delivered twice; or
    being undone by another worker right now) is refused with a ValidationError and nothing
    is written. A rollback that fails changes no data: the run goes back to its finished status
    with the reason at the top of its message and log, and can be asked for again.
    """
    run = SyncRun.objects.select_related("definition__integration").get(pk=run.pk)
    if run.status != RunStatus.ROLLING_BACK:
        raise _NotWaiting(f"Run #{run.pk} is not waiting to be rolled back; it is {run.status}.")
    log = _Log(run)
    try:
        lock = _take_worker_lock(run.pk)
    except psycopg.Error as exc:
        return _rollback_failed(run, log, _no_lock_message(exc))
    with _taken_up(  # one worker at a time undoes a run
        run,
        lock,
        phase=PHASE_ROLLING_BACK,
        refused=_NotWaiting,
        busy="being rolled back by another worker",
        gone="not waiting to be rolled back any more",  # undone while this task waited
        still=Q(status=RunStatus.ROLLING_BACK),
    ):
        return _rollback_claimed(run, actor, log)


def _rollback_claimed(run: SyncRun, actor, log: _Log) -> SyncRun:
    """The body of :func:`run_rollback_apply`, under the run's worker lock."""
    log(f"rollback requested by {run.rollback_requested_by or actor}; undoing")
    # A caller's open transaction holds the run's row (it asked for the rollback in it): the
    # side connection's progress writes would wait for it forever.
    progress = pipeline.Progress(run) if not connection.in_atomic_block else None
    try:
        with write_as(actor):
            run.refresh_from_db()
            if run.status != RunStatus.ROLLING_BACK:  # undone while this task waited
                raise _NotWaiting(
                    f"Run #{run.pk} is not waiting to be rolled back; it is {run.status}."
                )
            _rollback_blockers(run)
            counts = _undo(run, actor=actor, progress=progress, log=log)
            run.status = RunStatus.ROLLED_BACK
            run.rolled_back_at = timezone.now()
            run.phase = ""
            run.processed = run.total
            summary = (
                f"Rolled back by {run.rollback_requested_by or actor}: {counts['deleted']} "
                f"inserted rows deleted, {counts['restored']} rows restored, "
                f"{counts['reinserted']} removed rows put back."
            )
            log(summary)
            run.message = f"{summary} {run.message}"
            run.log = (run.log + "\n" if run.log else "") + log.text()
            run.save()
        return run
    except _NotWaiting:
        raise
    except ValidationError as exc:
        return _rollback_failed(run, log, "; ".join(exc.messages))
    except Exception as exc:  # a bug must still leave the run finished, saying why
        log(traceback.format_exc(limit=8))
        return _rollback_failed(run, log, f"unexpected error: {type(exc).__name__}: {exc}")
    finally:
        if progress is not None:
            progress.close()


def _rollback_failed(run: SyncRun, log: _Log, reason: str) -> SyncRun:
    """Nothing was undone (the transaction rolled back): the run is finished as before, and
    says why its rollback failed."""
    reason = " ".join(reason.split())  # one line: the message's first line is the verdict
    log(f"rollback failed: {reason}")
    run = SyncRun.objects.get(pk=run.pk)
    run.status = run.status_before_rollback or RunStatus.SUCCEEDED
    run.phase = ""
    run.processed = run.total
    run.message = (
        f"Rollback failed: {reason} Nothing was undone; the run's changes stay.\n" + run.message
    )
    run.log = (run.log + "\n" if run.log else "") + log.text()
    run.save(update_fields=["status", "phase", "processed", "message", "log"])
    return run


def _undo(run: SyncRun, *, actor, progress, log) -> dict[str, int]:
    """The rollback's writes, inside the caller's transaction."""
    merged = [e for e in run.diff if e in ent.BY_NAME] or run.definition.entities
    specs = [ent.spec(e) for e in ent.in_merge_order(merged)]
    counts = {"deleted": 0, "restored": 0, "reinserted": 0}
    note = f"rollback of sync run #{run.pk}"

    def audit(spec, action, count: int) -> None:
        if count:
            audit_bulk(
                model=spec.model, action=action, object_ids=[], count=count, actor=actor, note=note
            )

    def step(phase: str, done: int = 0) -> None:
        run.processed += done
        if progress is not None:
            progress.update(phase=phase, processed=run.processed, total=run.total, force=True)

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM integrations_runchange WHERE run_id = %s", [run.pk])
        run.total = cur.fetchone()[0] + run.created_count
        # Inserted rows: this run wrote them and kept no before-image. Children first.
        for spec in reversed(specs):
            step(f"Rolling back: deleting the {spec.label.lower()} the run created")
            try:
                with transaction.atomic():
                    cur.execute(
                        f"DELETE FROM {pipeline.q(spec.table)} t WHERE t.last_run_id = %s "
                        f"AND NOT EXISTS (SELECT 1 FROM integrations_runchange c WHERE "
                        f"c.run_id = %s AND c.table_name = %s AND c.object_id = t.id)",
                        [run.pk, run.pk, spec.table],
                    )
                    counts["deleted"] += cur.rowcount
                    audit(spec, LogEntry.Action.DELETE, cur.rowcount)
                    step(f"Rolling back: deleted {cur.rowcount} {spec.label.lower()}", cur.rowcount)
            except DatabaseError as exc:
                raise ValidationError(
                    f"Cannot roll back: {spec.label.lower()} this run created are now used by "
                    f"other records ({pipeline._first_line(exc)})."
                ) from exc
        for spec in specs:
            step(f"Rolling back: restoring {spec.label.lower()}")
            columns = [
                f.column
                for f in spec.model._meta.concrete_fields
                if f.column not in ("id", "change_version")
            ]
            table = pipeline.q(spec.table)
            assignments = ", ".join(f"{pipeline.q(c)} = (p).{pipeline.q(c)}" for c in columns)
            cur.execute(
                f"UPDATE {table} t SET {assignments} FROM ("
                f"SELECT jsonb_populate_record(NULL::{table}, before) AS p, object_id "
                f"FROM integrations_runchange WHERE run_id = %s AND table_name = %s "
                f"AND op = 'update' ORDER BY id DESC) x WHERE t.id = x.object_id",
                [run.pk, spec.table],
            )
            counts["restored"] += cur.rowcount
            audit(spec, LogEntry.Action.UPDATE, cur.rowcount)
            step(f"Rolling back: restored {cur.rowcount} {spec.label.lower()}", cur.rowcount)
            names = ", ".join(pipeline.q(c) for c in ["id", *columns])
            picks = ", ".join(f"(p).{pipeline.q(c)}" for c in ["id", *columns])
            cur.execute(
                f"INSERT INTO {table} ({names}) SELECT {picks} FROM ("
                f"SELECT jsonb_populate_record(NULL::{table}, before) AS p "
                f"FROM integrations_runchange WHERE run_id = %s AND table_name = %s "
                f"AND op = 'delete') x",
                [run.pk, spec.table],
            )
            counts["reinserted"] += cur.rowcount
            audit(spec, LogEntry.Action.CREATE, cur.rowcount)
            step(f"Rolling back: put back {cur.rowcount} {spec.label.lower()}", cur.rowcount)
        # Foreign keys are checked at commit (deferred), so that a row restored later may
        # still point at a row deleted earlier. Check them now, while a refusal can still be
        # told apart from a failure to commit and named: a row this run created that a person
        # has since used (an incident for a new student) keeps the rollback from happening.
        try:
            with transaction.atomic():
                cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
        except IntegrityError as exc:
            detail = getattr(getattr(exc.__cause__, "diag", None), "message_detail", None)
            raise ValidationError(
                "Cannot roll back: rows this run created are now used by other records "
                f"({pipeline._first_line(exc)}{'; ' + detail if detail else ''})."
            ) from exc
        cur.execute("SET CONSTRAINTS ALL DEFERRED")
    SyncDefinition.objects.filter(pk=run.definition_id).update(cursor=run.cursor_before)
    RunChange.objects.filter(run=run).delete()
    log(
        f"undone: {counts['deleted']} inserted rows deleted, {counts['restored']} restored, "
        f"{counts['reinserted']} put back; cursor back to {run.cursor_before or '(none)'}"
    )
    return counts


def run_rerun_failed(*, run: SyncRun, actor) -> SyncRun:
    """Start a run that retries the failed records of ``run`` (and every other open error of
    its definition). A file source reads nothing new (``retry_only``); an API source reads
    again from its cursor, and its failed records are retried alongside."""
    if not RecordError.objects.filter(run=run, status=ErrorStatus.OPEN).exists():
        raise ValidationError("This run has no open record errors to retry.")
    return run_start(definition=run.definition, actor=actor, trigger=RunTrigger.RETRY)


def record_errors_dismiss(*, errors, actor) -> int:
    with write_as(actor):
        ids = list(errors.filter(status=ErrorStatus.OPEN).values_list("pk", flat=True))
        RecordError.objects.filter(pk__in=ids).update(status=ErrorStatus.DISMISSED)
        if ids:
            audit_bulk(
                model=RecordError,
                action=LogEntry.Action.UPDATE,
                object_ids=ids,
                actor=actor,
                note="dismissed: will not be retried",
            )
    return len(ids)


# --- identity review ----------------------------------------------------------------------------


def identity_merge(*, review: IdentityReview, actor) -> IdentityReview:
    """Link the existing person to the incoming source record; reversible by unmerge."""
    from bxos.schools.models import Student

    if review.status != ReviewStatus.OPEN:
        raise ValidationError(f"This review is already {review.status}.")
    with write_as(actor):
        student = Student.objects.select_for_update().get(
            pk=review.candidate_id, district_id=review.district_id
        )
        review.before = {
            "source_system": student.source_system,
            "source_id": student.source_id,
        }
        student.source_system = review.integration.source_system
        student.source_id = review.source_id
        model_save(instance=student, actor=actor, fields=["source_system", "source_id"])
        review.status = ReviewStatus.MERGED
        review.decided_by, review.decided_at = actor, timezone.now()
        model_save(instance=review, actor=actor, emit=False)
    return review


def identity_unmerge(*, review: IdentityReview, actor) -> IdentityReview:
    from bxos.schools.models import Student

    if review.status != ReviewStatus.MERGED:
        raise ValidationError("Only a merged review can be reversed.")
    with write_as(actor):
        student = Student.objects.select_for_update().get(pk=review.candidate_id)
        student.source_system = review.before.get("source_system", "")
        student.source_id = review.before.get("source_id", "")
        model_save(instance=student, actor=actor, fields=["source_system", "source_id"])
        review.status = ReviewStatus.UNMERGED
        review.decided_by, review.decided_at = actor, timezone.now()
        model_save(instance=review, actor=actor, emit=False)
    return review


def identity_distinct(*, review: IdentityReview, actor) -> IdentityReview:
    """Not the same person: the next run creates the incoming record as a new person."""
    if review.status != ReviewStatus.OPEN:
        raise ValidationError(f"This review is already {review.status}.")
    review.status = ReviewStatus.DISTINCT
    review.decided_by, review.decided_at = actor, timezone.now()
    return model_save(instance=review, actor=actor, emit=False)


# --- event-driven syncs: the signed inbound endpoint --------------------------------------------


def inbound_verify(*, definition: SyncDefinition, headers, body: bytes) -> None:
    """Standard Webhooks signature check (``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature``: ``v1,<base64 HMAC-SHA256>``); raises ValidationError saying why."""

    if definition.schedule_kind != ScheduleKind.EVENT or not definition.inbound_secret:
        raise ValidationError("this sync does not accept events")
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise ValidationError(
            "missing header(s): webhook-id, webhook-timestamp and webhook-signature are required"
        )
    try:
        sent = int(stamp)
    except ValueError as exc:
        raise ValidationError("webhook-timestamp is not a Unix time in seconds") from exc
    if abs(time.time() - sent) > _conf("INBOUND_TOLERANCE_SECONDS"):
        raise ValidationError("webhook-timestamp is too far from now (replay protection)")
    # The Standard Webhooks scheme, as the webhooks app signs: a sender using any of the
    # standardwebhooks libraries with this secret is accepted.
    key = base64.b64decode(definition.inbound_secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{sent}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    for candidate in signatures.split():
        if hmac.compare_digest(candidate, expected):
            return
    raise ValidationError("webhook-signature does not match")


def inbound_event(*, definition: SyncDefinition, actor) -> SyncRun | None:
    """A signed event from the source: start an incremental run unless one is waiting."""
    if definition.runs.filter(status=RunStatus.QUEUED).exists():
        return None  # the queued run will read this change too
    mode = (
        SyncMode.INCREMENTAL
        if registry.get(definition.integration.connector_type).cursor_kind
        else definition.mode
    )
    try:
        return run_start(definition=definition, actor=actor, trigger=RunTrigger.EVENT, mode=mode)
    except ValidationError:
        return None  # a run is in progress; the next event or schedule catches up
