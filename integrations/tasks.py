"""Worker entry points: load by id, call a service."""

from __future__ import annotations

from celery import shared_task

from bxos.common.audit import current_actor
from bxos.common.tasks import ActorTask
from integrations import services
from integrations.choices import RunTrigger
from integrations.models import SyncDefinition, SyncRun


@shared_task(base=ActorTask, name="integrations.run_sync")
def run_sync(run_id: int) -> str:
    """Execute a queued sync run."""
    run = SyncRun.objects.filter(pk=run_id).first()
    if run is None:
        return "gone"
    return services.run_execute(run=run, actor=current_actor()).status


@shared_task(base=ActorTask, name="integrations.apply_approved_run", acks_late=True)
def apply_approved_run(run_id: int) -> str:
    """Apply a run a person approved, in their name (``decided_by``)."""
    from django.core.exceptions import ValidationError

    run = SyncRun.objects.select_related("decided_by").filter(pk=run_id).first()
    if run is None:
        return "gone"
    try:
        return services.run_apply_approved(run=run, actor=run.decided_by or current_actor()).status
    except ValidationError as exc:  # applied already (a message delivered twice)
        return "; ".join(exc.messages)


@shared_task(base=ActorTask, name="integrations.rollback_run", acks_late=True)
def rollback_run(run_id: int) -> str:
    """Roll back a run a person asked to undo, in their name (``rollback_requested_by``)."""
    from django.core.exceptions import ValidationError

    run = SyncRun.objects.select_related("rollback_requested_by").filter(pk=run_id).first()
    if run is None:
        return "gone"
    try:
        return services.run_rollback_apply(
            run=run, actor=run.rollback_requested_by or current_actor()
        ).status
    except ValidationError as exc:  # undone already (a message delivered twice)
        return "; ".join(exc.messages)


@shared_task(base=ActorTask, name="integrations.reap_abandoned_runs")
def reap_abandoned_runs() -> str:
    """Beat's sweep (bxos/common/schedules.py): finish the runs whose worker died, so that the
    admin shows the truth even when nobody starts a new run, and send again the runs queued
    so long that their message was probably lost."""
    reaped = services.runs_reap_abandoned(actor=current_actor())
    resent = services.runs_resend_queued()
    message = f"{len(reaped)} abandoned run(s) finished"
    return message + (f"; {len(resent)} queued run(s) sent again" if resent else "")


@shared_task(base=ActorTask, name="integrations.scheduled_sync")
def scheduled_sync(definition_id: int) -> str:
    """Beat's entry for a definition's schedule: start a run and execute it here (this is
    already a worker), unless one is waiting or running."""
    definition = SyncDefinition.objects.filter(pk=definition_id, is_active=True).first()
    if definition is None:
        return "inactive"
    from django.core.exceptions import ValidationError

    try:
        run = services.run_start(
            definition=definition,
            actor=current_actor(),
            trigger=RunTrigger.SCHEDULE,
            enqueue=False,
        )
    except ValidationError as exc:
        return "; ".join(exc.messages)
    run = services.run_execute(run=run, actor=current_actor())
    return f"run #{run.pk}: {run.status}"
