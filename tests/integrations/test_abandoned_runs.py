"""A run whose worker died is finished, failed, and says so; a live run never is
(integrations/services.py ``runs_reap_abandoned``, called by ``run_start`` and by the beat task
``integrations.reap_abandoned_runs``).

A worker holds a PostgreSQL advisory lock keyed by the run on a connection of its own while it
works on the run; a process that dies has its connections closed, which frees the lock. Here a
real Celery worker (tests/celery_worker.py) runs an Ed-Fi sync and the Ed-Fi test server holds
its answer to the students page of the pull (tests/integrations/held_worker.py): the worker is
SIGKILLed while it waits, or the answer is let go.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from celery import current_app
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from bxos.common import events
from bxos.common.audit import system_actor
from bxos.common.schedules import ensure_periodic_tasks
from bxos.schools.models import Student
from integrations import pipeline, services, tasks
from integrations.choices import ACTIVE, CircuitState, RunStatus
from integrations.models import SyncDefinition, SyncRun
from tests.celery_worker import celery_worker
from tests.integrations.held_worker import worker_waiting_on
from tests.integrations.test_bidirectional import SOURCE, STUDENT, make_definition

pytestmark = pytest.mark.usefixtures("loopback")

STUDENTS = "/ed-fi/students"  # the pull's GET of the students pages
DIED = (
    "The worker running this run stopped before it finished (its process ended); nothing of "
    "it was merged and the cursor did not move."
)


@pytest.fixture
def failed_events():
    """The ``sync_run.failed`` events delivered (after their transaction committed)."""
    seen: list = []

    def record(event) -> None:
        seen.append(event)

    events.subscribe("sync_run.failed", record)
    yield seen
    events.unsubscribe("sync_run.failed", record)


def lock_holders(run: SyncRun) -> int:
    """Sessions holding the run's worker lock."""
    space, key = services._run_key(run.pk)
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
            "AND classid::bigint = %s AND objid::bigint = %s AND granted",
            [space, key],
        )
        return cur.fetchone()[0]


def killed_mid_read(definition: SyncDefinition, peer, monkeypatch) -> SyncRun:
    """A run SIGKILLed on its worker while the peer holds the answer to a students page."""
    run = services.run_start(definition=definition, actor=system_actor(), enqueue=False)
    with worker_waiting_on(peer, monkeypatch, run, method="GET", match=STUDENTS) as waiting:
        run.refresh_from_db()
        assert (run.status, run.phase) == (RunStatus.RUNNING, "Reading student")
        assert lock_holders(run) == 1
        waiting.kill()
    # PostgreSQL ends the dead worker's sessions when it reads their closed sockets: at once,
    # but not within the same instant.
    deadline = time.monotonic() + 10
    while lock_holders(run) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock_holders(run) == 0
    run.refresh_from_db()
    # Nobody will finish it: the bookkeeping is stuck, though nothing was merged.
    assert run.status == RunStatus.RUNNING
    return run


def staging_tables(run: SyncRun) -> list[str]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
            [pipeline.SCHEMA, f"r{run.pk}\\_%"],
        )
        return [name for (name,) in cur.fetchall()]


def run_entries(run: SyncRun):
    return LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(SyncRun), object_id=run.pk
    )


def edfi_students(world):
    return Student.objects.filter(district=world.district, source_system=SOURCE)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_run_whose_worker_was_killed_mid_read_is_failed_by_the_next_start(
    north, system, peer, monkeypatch, failed_events
):
    definition = make_definition(north, system, peer)
    dead = killed_mid_read(definition, peer, monkeypatch)
    assert staging_tables(dead)  # the schools it had read

    admin = north.users["district_admin"]
    run = services.run_start(definition=definition, actor=admin, enqueue=False)

    dead.refresh_from_db()
    assert dead.status == RunStatus.FAILED and dead.finished_at is not None
    assert dead.message == DIED
    assert dead.phase == "" and f"{admin} found that no worker holds this run" in dead.log
    # Nothing of it was merged, its staging is gone, and the source is not blamed for it.
    assert not edfi_students(north).exists()
    assert SyncDefinition.objects.get(pk=definition.pk).cursor == ""
    assert staging_tables(dead) == []
    integration = definition.integration
    integration.refresh_from_db()
    assert integration.consecutive_failures == 0
    assert integration.circuit_state == CircuitState.CLOSED
    assert integration.last_error == DIED
    # In the name of the person whose start found it; announced as a failed run is.
    [entry] = run_entries(dead)
    assert entry.actor == admin
    assert entry.changes["status"] == [RunStatus.RUNNING, RunStatus.FAILED]
    assert [(e.data["id"], e.data["status"]) for e in failed_events] == [(dead.pk, "failed")]

    # The new run goes ahead.
    run = services.run_execute(run=run, actor=admin)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert edfi_students(north).filter(source_id=STUDENT).exists()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_live_run_is_never_reaped(north, system, peer, monkeypatch):
    definition = make_definition(north, system, peer)
    run = services.run_start(definition=definition, actor=system, enqueue=False)
    with worker_waiting_on(peer, monkeypatch, run, method="GET", match=STUDENTS) as waiting:
        # However long the worker waits, it holds its lock: the run is alive.
        assert services.runs_reap_abandoned(actor=system) == []
        with pytest.raises(ValidationError, match=f"Run #{run.pk} of this definition is still"):
            services.run_start(definition=definition, actor=system)
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING
        waiting.release()
        run = waiting.finished(run)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert "no worker holds this run" not in run.log
    assert not run_entries(run).exists()
    assert lock_holders(run) == 0
    again = services.run_start(definition=definition, actor=system, enqueue=False)
    assert again.status == RunStatus.QUEUED


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_beat_task_fails_a_run_whose_worker_was_killed(north, system, peer, monkeypatch):
    # migrate creates the schedule; an earlier transactional test's flush may have removed it.
    ensure_periodic_tasks()
    task = PeriodicTask.objects.get(task="integrations.reap_abandoned_runs")
    assert task.enabled and task.interval.every == 5 and task.interval.period == "minutes"

    definition = make_definition(north, system, peer)
    dead = killed_mid_read(definition, peer, monkeypatch)

    assert tasks.reap_abandoned_runs() == "1 abandoned run(s) finished"  # the task's body
    dead.refresh_from_db()
    assert dead.status == RunStatus.FAILED and dead.message == DIED
    [entry] = run_entries(dead)
    assert entry.actor.is_system_actor
    assert tasks.reap_abandoned_runs() == "0 abandoned run(s) finished"
    run = services.run_start(definition=definition, actor=system, enqueue=False)
    assert services.run_execute(run=run, actor=system).status == RunStatus.SUCCEEDED


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_queued_run_whose_message_was_lost_is_sent_again_and_runs(
    north, system, peer, monkeypatch
):
    definition = make_definition(north, system, peer)
    # Committed queued, and its task never sent (the broker was down when it committed, say).
    run = services.run_start(definition=definition, actor=system, enqueue=False)
    # A fresh queued run is waiting for a worker, not lost: nothing is sent yet.
    assert tasks.reap_abandoned_runs() == "0 abandoned run(s) finished"
    SyncRun.objects.filter(pk=run.pk).update(queued_at=timezone.now() - timedelta(minutes=11))
    with pytest.raises(ValidationError, match="still queued"):
        services.run_start(definition=definition, actor=system, enqueue=False)

    # The worker reaches the peer on 127.0.0.1, as the tests do; what the sweep sends goes to
    # this test's worker (its own queue), not to a developer's.
    monkeypatch.setenv("OUTBOUND_ALLOW_LOOPBACK", "1")
    with celery_worker() as worker:
        monkeypatch.setitem(current_app.conf, "task_default_queue", worker.queue)
        said = tasks.reap_abandoned_runs()  # the beat task's body
        assert said == "0 abandoned run(s) finished; 1 queued run(s) sent again"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and worker.alive():
            run.refresh_from_db()
            if run.status not in ACTIVE:
                break
            time.sleep(0.2)
    assert run.status == RunStatus.SUCCEEDED, (run.message, worker.output[-2000:])
    assert edfi_students(north).exists()
    # Once run, nothing is sent again.
    assert tasks.reap_abandoned_runs() == "0 abandoned run(s) finished"


# --- approvals and rollbacks: waiting in the queue, or taken up by a worker --------------------


def test_runs_waiting_for_a_worker_are_left_and_taken_up_ones_are_finished(north, system, peer):
    definition = make_definition(north, system, peer)
    now = timezone.now()

    def run(status, **fields) -> SyncRun:
        return SyncRun.objects.create(
            definition=definition,
            district_id=north.district.pk,
            status=status,
            mode="full",
            started_at=now,
            **fields,
        )

    # Queued in the broker for a worker: a free lock says nothing (acks_late redelivers).
    approved = run(RunStatus.RUNNING, decided_at=now, phase=services.PHASE_APPLY_WAITING)
    asked = run(RunStatus.ROLLING_BACK, phase=services.PHASE_ROLLBACK_WAITING)
    # Taken up by a worker that died.
    applying = run(RunStatus.RUNNING, decided_at=now, phase="Merging student", warnings=["w"])
    undoing = run(
        RunStatus.ROLLING_BACK,
        status_before_rollback=RunStatus.PARTIAL,
        phase="Rolling back: restoring students",
        message="12 read, 1 failed",
    )
    # A worker at it (this test holds its lock, as the worker does).
    alive = run(RunStatus.RUNNING, phase="Reading student")
    lock = services._take_worker_lock(alive.pk)
    try:
        reaped = services.runs_reap_abandoned(actor=system, definition=definition)
    finally:
        lock.close()

    assert sorted(r.pk for r in reaped) == [applying.pk, undoing.pk]
    for waiting in (approved, asked, alive):
        before = waiting.status
        waiting.refresh_from_db()
        assert waiting.status == before
    applying.refresh_from_db()
    assert applying.status == RunStatus.FAILED and applying.warnings == ["w"]
    assert applying.message.startswith("The worker applying this approved run stopped")
    assert "nothing of it was merged" in applying.message
    # A rollback that did not finish undid nothing (one transaction): the run is as it was.
    undoing.refresh_from_db()
    assert undoing.status == RunStatus.PARTIAL and undoing.phase == ""
    assert undoing.message == (
        "Rollback failed: The worker undoing it stopped before it finished (its process "
        "ended). Nothing was undone; the run's changes stay.\n12 read, 1 failed"
    )
    assert [e.changes["status"] for e in run_entries(undoing)] == [
        [RunStatus.ROLLING_BACK, RunStatus.PARTIAL]
    ]


def test_an_apply_and_a_rollback_hold_the_lock_while_they_work(north, system, peer, monkeypatch):
    definition = make_definition(north, system, peer)
    definition.hold_min_rows, definition.hold_change_pct = 1, 0  # any change is held
    services.definition_save(definition=definition, actor=system)
    first = services.run_execute(
        run=services.run_start(definition=definition, actor=system, enqueue=False), actor=system
    )
    assert first.status == RunStatus.SUCCEEDED, first.message
    student = peer.find("students", studentUniqueId=STUDENT)
    peer.update("students", student["id"], {"firstName": "Renamed"})
    held = services.run_execute(
        run=services.run_start(definition=definition, actor=system, enqueue=False), actor=system
    )
    assert held.status == RunStatus.HELD, held.message

    # A sweep in the middle of the worker's work finds the lock held.
    swept: list[list[SyncRun]] = []

    def sweeping(real):
        def call(*args, **kwargs):
            swept.append(services.runs_reap_abandoned(actor=system))
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(services, "_merge", sweeping(services._merge))
    monkeypatch.setattr(services, "_undo", sweeping(services._undo))
    applied = services.run_approve(run=held, actor=system, enqueue=False)
    assert applied.status == RunStatus.SUCCEEDED, applied.message
    assert edfi_students(north).get(source_id=STUDENT).first_name == "Renamed"
    rolled_back = services.run_rollback(run=applied, actor=system, enqueue=False)
    assert rolled_back.status == RunStatus.ROLLED_BACK, rolled_back.message
    assert swept == [[], []]
    assert edfi_students(north).get(source_id=STUDENT).first_name != "Renamed"
