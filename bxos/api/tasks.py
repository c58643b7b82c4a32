"""Scheduled work of the vendor API."""

from __future__ import annotations

from celery import shared_task

from bxos.api.throttling import purge_rate_counters
from bxos.common.tasks import ActorTask


@shared_task(base=ActorTask, name="api.purge_rate_counters")
def purge_rate_counters_task() -> int:
    """Delete rate-limit counter windows that ended long ago (beat, every 30 minutes)."""
    return purge_rate_counters()
