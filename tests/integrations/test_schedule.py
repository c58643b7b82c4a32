"""A sync's schedule, edited like the admin does, is run by Celery beat's scheduler and a real
worker: the definition's beat entry is due, beat sends it, a worker process runs the sync."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from bxos.celery import app as celery_app
from bxos.schools.models import Student
from integrations import services
from integrations.choices import RunStatus, RunTrigger, ScheduleKind
from integrations.models import SyncDefinition, SyncRun
from integrations.sample import build_roster, write_zip
from tests.celery_worker import celery_worker


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_schedule_edited_in_the_admin_runs_the_sync(north, system, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    write_zip(drop / "nightly.zip", build_roster(students=8))
    integration = services.integration_create(
        district=north.district,
        name="SIS drop folder",
        connector_type="oneroster_csv",
        source_system="sis",
        params={"source": "folder", "folder": str(drop)},
        actor=system,
    )
    definition = services.definition_save(
        definition=SyncDefinition(
            integration=integration,
            name="Nightly",
            entities=["school", "academic_session", "student"],
            schedule_kind=ScheduleKind.INTERVAL,
            interval_minutes=60,
        ),
        actor=system,
    )
    task = PeriodicTask.objects.get(pk=definition.periodic_task_id)
    assert task.task == "integrations.scheduled_sync" and task.interval.every == 60
    # The admin switches it to a crontab: the same beat entry now runs on that schedule.
    definition.schedule_kind = ScheduleKind.CRONTAB
    definition.crontab = "30 2 * * 1-5"
    services.definition_save(definition=definition, actor=system)
    task.refresh_from_db()
    assert task.interval is None and task.crontab.hour == "2" and task.crontab.minute == "30"
    assert task.crontab.day_of_week == "1-5"
    # And to every quarter hour. (django-celery-beat's scheduler leaves out crontab entries
    # whose hour is far from now, so an every-hour schedule keeps this test independent of
    # the time of day it runs at.)
    definition.crontab = "*/15 * * * *"
    services.definition_save(definition=definition, actor=system)
    task.refresh_from_db()
    assert task.crontab.minute == "*/15" and task.crontab.hour == "*"
    assert str(task.crontab.timezone) == north.district.time_zone

    # A private queue keeps a developer's own worker from taking it; the last run was long
    # ago, so beat finds the entry due now.
    with celery_worker() as worker:
        PeriodicTask.objects.filter(pk=task.pk).update(
            queue=worker.queue, last_run_at=timezone.now() - timedelta(days=7)
        )
        scheduler = DatabaseScheduler(app=celery_app, lazy=False)
        entry = scheduler.schedule[task.name]
        assert entry.is_due().is_due, "beat does not see the definition's schedule as due"
        scheduler.apply_entry(entry, producer=None)
        deadline = time.monotonic() + 90
        run = None
        while time.monotonic() < deadline and worker.alive():
            run = SyncRun.objects.filter(definition=definition).first()
            if run and run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
                break
            time.sleep(0.5)
    output = worker.output
    assert run is not None, f"no run was started; worker output:\n{output}"
    assert run.trigger == RunTrigger.SCHEDULE
    assert run.status == RunStatus.SUCCEEDED, (run.message, output[-2000:])
    assert Student.objects.filter(district=north.district, source_system="sis").count() == 8
    # The watched folder's zip was taken: it moved to processed/.
    assert not (drop / "nightly.zip").exists() and (drop / "processed" / "nightly.zip").exists()
