"""Rolling a run back is asked for on a page and done by a worker, in the asker's name
(integrations.services.run_rollback, then the task integrations.rollback_run).

The runs are real OneRoster CSV zips through the whole pipeline; the rollback's task body runs
in this process (``tasks.rollback_run``), and in the last test in a real Celery worker process
(tests/celery_worker.py) on a Redis broker.
"""

from __future__ import annotations

import time
from datetime import date
from datetime import time as clock

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.core.files import File

from bxos.behavior import choices as bch
from bxos.behavior import services as bsvc
from bxos.behavior.models import Incident
from bxos.common.services import model_delete
from bxos.schools.models import (
    School,
    Student,
)
from integrations import services, tasks
from integrations.choices import RunStatus
from integrations.models import RunChange, SyncDefinition, SyncRun
from integrations.sample import build_roster, write_zip
from tests.factories import descriptor
from tests.integrations.csv_sync import changed_roster, csv_definition, run_zip, snapshot
from tests.integrations.test_oneroster_csv_sync import ENTITIES

SOURCE = "sis"


def make_definition(world, actor, *, source: str = SOURCE) -> SyncDefinition:
    return csv_definition(world, actor, entities=ENTITIES, source=source, name=f"Roster {source}")


def two_runs(world, actor, tmp_path, *, source: str = SOURCE, students: int = 12):
    """A definition, its first run, and a second run that changed things; with the hub's rows
    before the second run."""
    definition = make_definition(world, actor, source=source)
    roster = build_roster(students=students)
    first = run_zip(definition, actor, write_zip(tmp_path / f"{source}-1.zip", roster))
    assert first.status == RunStatus.SUCCEEDED, first.message
    before = snapshot(world.district, source)
    second = run_zip(
        definition, actor, write_zip(tmp_path / f"{source}-2.zip", changed_roster(roster))
    )
    assert second.status == RunStatus.SUCCEEDED, second.message
    assert second.created_count >= 1 and second.updated_count >= 1 and second.deleted_count >= 1
    return definition, second, before


def rollback_entries(run: SyncRun):
    return LogEntry.objects.filter(changes__batch__note=f"rollback of sync run #{run.pk}")


def test_a_rollback_is_asked_for_then_done_by_the_worker_in_the_askers_name(
    north, system, media, tmp_path
):
    definition, run, before = two_runs(north, system, tmp_path)
    after = snapshot(north.district)
    admin = north.users["district_admin"]

    asked = services.run_rollback(run=run, actor=admin)
    # Recorded and queued; nothing is undone inside the request.
    assert asked.status == RunStatus.ROLLING_BACK
    run.refresh_from_db()
    assert (run.status, run.status_before_rollback) == (RunStatus.ROLLING_BACK, "succeeded")
    assert run.rollback_requested_by == admin and run.rollback_requested_at is not None
    assert run.rolled_back_at is None
    assert run.phase == "Rollback requested"
    assert snapshot(north.district) == after
    assert not rollback_entries(run).exists()

    # Asking twice, or starting a run of the definition meanwhile, is refused.
    with pytest.raises(ValidationError, match="Only a finished run can be rolled back"):
        services.run_rollback(run=run, actor=admin)
    with pytest.raises(ValidationError, match="is still rolling back"):
        services.run_start(definition=definition, actor=system)

    assert tasks.rollback_run(run.pk) == RunStatus.ROLLED_BACK  # the worker's task body
    run.refresh_from_db()
    assert run.status == RunStatus.ROLLED_BACK and run.rolled_back_at is not None
    assert run.phase == "" and run.processed == run.total > 0
    assert run.message.startswith(f"Rolled back by {admin}:")
    assert f"rollback requested by {admin}" in run.log
    assert snapshot(north.district) == before
    assert not RunChange.objects.filter(run=run).exists()
    entries = list(rollback_entries(run).values_list("actor_id", flat=True))
    assert entries and set(entries) == {admin.pk}  # in the asker's name, not the worker's

    # The same message delivered again undoes nothing twice.
    again = tasks.rollback_run(run.pk)
    assert "not waiting to be rolled back" in again
    assert snapshot(north.district) == before
    assert len(entries) == rollback_entries(run).count()
    assert services.run_start(definition=definition, actor=system).status == RunStatus.QUEUED


def test_the_synchronous_path_undoes_at_once(north, system, media, tmp_path):
    _definition, run, before = two_runs(north, system, tmp_path)
    rolled = services.run_rollback(run=run, actor=system, enqueue=False)
    assert rolled.status == RunStatus.ROLLED_BACK
    assert snapshot(north.district) == before


def test_a_failed_rollback_changes_nothing_says_why_and_can_be_asked_again(
    north, system, media, tmp_path
):
    _definition, run, _before = two_runs(north, system, tmp_path)
    admin = north.users["district_admin"]
    # A teacher writes up the student the run created: rolling the run back would delete a
    # student an incident now points at.
    newcomer = Student.objects.get(district=north.district, source_system=SOURCE, source_id="s999")
    incident = bsvc.incident_create(
        actor=admin,
        student=newcomer,
        school=School.objects.get(pk=newcomer.enrollments.first().school_id),
        reported_by=north.teacher_staff,
        occurred_on=date(2026, 10, 2),
        occurred_at=clock(10, 0),
        level=bch.IncidentLevel.MINOR,
        problem_behavior=descriptor(bch.DescriptorCategory.PROBLEM_BEHAVIOR_MINOR, "disruption"),
        location=descriptor(bch.DescriptorCategory.LOCATION, "classroom"),
    )
    after = snapshot(north.district)

    services.run_rollback(run=run, actor=admin)
    assert tasks.rollback_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.rolled_back_at is None
    assert run.phase == ""
    first_line = run.message.splitlines()[0]
    assert first_line.startswith("Rollback failed: Cannot roll back: rows this run created")
    assert "behavior_incident" in first_line and "Nothing was undone" in first_line
    assert "rollback failed:" in run.log
    assert snapshot(north.district) == after
    assert Student.objects.filter(pk=newcomer.pk).exists()
    assert RunChange.objects.filter(run=run).exists()  # its before-images are kept
    assert not rollback_entries(run).exists()
    # The synchronous path says so too.
    with pytest.raises(ValidationError, match="Cannot roll back: rows this run created"):
        services.run_rollback(run=run, actor=admin, enqueue=False)

    # Once the incident is gone, asking again works.
    model_delete(instance=Incident.objects.get(pk=incident.pk), actor=admin)
    services.run_rollback(run=run, actor=admin)
    assert tasks.rollback_run(run.pk) == RunStatus.ROLLED_BACK
    assert not Student.objects.filter(pk=newcomer.pk).exists()


def test_only_the_latest_run_and_no_run_in_progress(north, system, media, tmp_path):
    definition, run, _before = two_runs(north, system, tmp_path)
    path = write_zip(tmp_path / "third.zip", build_roster(students=12))
    with open(path, "rb") as fh:
        queued = services.run_start(definition=definition, actor=system, upload=File(fh, "3.zip"))
    with pytest.raises(ValidationError, match=f"Run #{queued.pk} of this definition is queued"):
        services.run_rollback(run=run, actor=system)
    later = services.run_execute(run=queued, actor=system)
    assert later.status == RunStatus.SUCCEEDED, later.message
    with pytest.raises(ValidationError, match=f"Run #{later.pk} ran after this one"):
        services.run_rollback(run=run, actor=system)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.rollback_requested_at is None


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_rolls_back_once_in_the_askers_name(north, south, system, media, tmp_path):
    from tests.celery_worker import celery_worker

    admin = north.users["district_admin"]
    definition, run, before = two_runs(north, system, tmp_path)
    # Another district's run, rolled back after the first one's messages: when it is done,
    # the worker (one process, one queue, in order) has handled those.
    _other, sentinel, _ = two_runs(south, system, tmp_path, source="south-sis")

    # The admin's request commits; the on-commit hook sends the task to the default queue,
    # which this test's worker does not read: the same message is sent to its own queue
    # below, twice (a redelivery), as the broker would hand it to the district's worker.
    services.run_rollback(run=run, actor=admin)
    services.run_rollback(run=sentinel, actor=south.users["district_admin"])
    run.refresh_from_db()
    assert run.status == RunStatus.ROLLING_BACK
    with celery_worker() as worker:
        tasks.rollback_run.apply_async(args=[run.pk], queue=worker.queue)
        tasks.rollback_run.apply_async(args=[run.pk], queue=worker.queue)
        tasks.rollback_run.apply_async(args=[sentinel.pk], queue=worker.queue)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and worker.alive():
            sentinel.refresh_from_db()
            if sentinel.status != RunStatus.ROLLING_BACK:
                break
            time.sleep(0.5)
    output = worker.output
    sentinel.refresh_from_db()
    run.refresh_from_db()
    assert sentinel.status == RunStatus.ROLLED_BACK, (sentinel.message, output[-2000:])
    assert run.status == RunStatus.ROLLED_BACK, (run.message, output[-2000:])
    assert run.log.count("rollback requested by") == 1  # the second message did nothing
    entries = list(rollback_entries(run).values_list("actor_id", flat=True))
    assert entries and set(entries) == {admin.pk}
    assert snapshot(north.district) == before
    assert services.run_start(definition=definition, actor=system).status == RunStatus.QUEUED
