"""A real Celery worker process, on the configured broker, changes the database.

The broker is CELERY_BROKER_URL (Redis in CI) or, with none set, the file-system transport
that `make run` uses. A private queue keeps a developer's running worker from taking the task.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from bxos.behavior.models import BehaviorSupportRequest
from bxos.behavior.services import bsr_transition
from bxos.behavior.tasks import escalate_overdue_bsrs
from tests.celery_worker import celery_worker


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_worker_round_trip(north, system):
    bsr = north.bsrs[north.a1.pk]
    bsr_transition(actor=system, bsr=bsr, to_state="triaged", priority=1)
    BehaviorSupportRequest.objects.filter(pk=bsr.pk).update(
        due_at=bsr.submitted_at - timedelta(hours=1)
    )
    with celery_worker() as worker:
        escalate_overdue_bsrs.apply_async(queue=worker.queue)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            bsr.refresh_from_db()
            if bsr.state == "escalated" or not worker.alive():
                break
            time.sleep(0.5)
    output = worker.output
    assert bsr.state == "escalated", f"the worker did not run the task; its output:\n{output}"
    last = bsr.transitions.order_by("-at").first()
    assert last.to_state == "escalated" and last.actor == system
