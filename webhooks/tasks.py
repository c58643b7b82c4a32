"""Webhook work in Celery: the dispatch task (queued after commit) and the beat sweep."""

from __future__ import annotations

from celery import shared_task

from bxos.common.tasks import ActorTask
from webhooks import dispatch, outbox


@shared_task(base=ActorTask, name="webhooks.dispatch", acks_late=True)
def dispatch_task() -> int:
    """Send everything due (until the time budget is spent); how many attempts were made."""
    outbox.wake_flag_clear()  # before claiming: see outbox.WAKE_FLAG
    return dispatch.dispatch()


@shared_task(base=ActorTask, name="webhooks.sweep")
def sweep_task() -> dict:
    """Beat, every few seconds: the guarantee behind the after-commit wake-up. Returns expired
    leases to pending, then sends what is due if anything is."""
    reclaimed = dispatch.reap_expired_leases()
    due = dispatch.due_count()
    sent = dispatch.dispatch() if due else 0
    return {"reclaimed": reclaimed, "due": due, "sent": sent}
