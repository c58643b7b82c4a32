"""Periodic tasks the product needs, created in django-celery-beat's tables after `migrate`.

Admins can change their timing in the admin (Periodic tasks); this only creates missing ones,
so an admin's edit is never overwritten.
"""

from __future__ import annotations

# name -> (task, every N minutes)
DEFAULT_SCHEDULES: dict[str, tuple[str, int]] = {
    "Escalate overdue behavior support requests": ("behavior.escalate_overdue_bsrs", 15),
    "Purge old API rate-limit counters": ("api.purge_rate_counters", 30),
}


def ensure_periodic_tasks() -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for name, (task, minutes) in DEFAULT_SCHEDULES.items():
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=minutes, period=IntervalSchedule.MINUTES
        )
        PeriodicTask.objects.create(name=name, task=task, interval=interval)
