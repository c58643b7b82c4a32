"""Periodic tasks the product needs, created in django-celery-beat's tables after `migrate`.

Admins can change their timing in the admin (Periodic tasks); this only creates missing ones,
so an admin's edit is never overwritten.
"""

from __future__ import annotations

# name -> (task, every N, unit: "minutes" or "seconds")
DEFAULT_SCHEDULES: dict[str, tuple[str, int, str]] = {
    "Escalate overdue behavior support requests": (
        "behavior.escalate_overdue_bsrs",
        15,
        "minutes",
    ),
    "Purge old API rate-limit counters": ("api.purge_rate_counters", 30, "minutes"),
    # The guarantee of webhook delivery: reclaims dead workers' leases, sends what is due.
    "Sweep webhook deliveries": ("webhooks.sweep", 5, "seconds"),
    # A sync run whose worker died (its lock is free) is finished, failed, and says so; a run
    # queued so long that its message was probably lost is sent to the workers again.
    "Finish abandoned sync runs": ("integrations.reap_abandoned_runs", 5, "minutes"),
}


def ensure_periodic_tasks() -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    periods = {"minutes": IntervalSchedule.MINUTES, "seconds": IntervalSchedule.SECONDS}
    for name, (task, every, unit) in DEFAULT_SCHEDULES.items():
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=periods[unit])
        PeriodicTask.objects.create(name=name, task=task, interval=interval)
