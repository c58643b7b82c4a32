"""Scheduled work of the behavior domain."""

from __future__ import annotations

from celery import shared_task

from bxos.behavior import services
from bxos.common.audit import current_actor
from bxos.common.tasks import ActorTask


@shared_task(base=ActorTask, name="behavior.escalate_overdue_bsrs")
def escalate_overdue_bsrs() -> int:
    """Escalate open behavior support requests past their due time (beat, every 15 minutes)."""
    return services.bsr_escalate_overdue(actor=current_actor())
