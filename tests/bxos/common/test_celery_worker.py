"""A real Celery worker process, on the configured broker, changes the database.

The broker is CELERY_BROKER_URL (Redis in CI) or, with none set, the file-system transport
that `make run` uses. A private queue keeps a developer's running worker from taking the task.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.db import connection

from bxos.behavior.models import BehaviorSupportRequest
from bxos.behavior.services import bsr_transition
from bxos.behavior.tasks import escalate_overdue_bsrs
from tests.conftest import port_open, skip_or_fail


def _check_broker() -> None:
    url = settings.CELERY_BROKER_URL
    if url.startswith(("redis://", "amqp://")):
        parsed = urlparse(url)
        default_port = 6379 if url.startswith("redis") else 5672
        if not port_open(parsed.hostname or "127.0.0.1", parsed.port or default_port):
            skip_or_fail(f"broker {url} is not reachable")


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_worker_round_trip(north, system):
    _check_broker()
    bsr = north.bsrs[north.a1.pk]
    bsr_transition(actor=system, bsr=bsr, to_state="triaged", priority=1)
    BehaviorSupportRequest.objects.filter(pk=bsr.pk).update(
        due_at=bsr.submitted_at - timedelta(hours=1)
    )
    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BXOS_DB_NAME": connection.settings_dict["NAME"]}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bxos",
            "worker",
            "--pool",
            "solo",
            "--queues",
            queue,
            "--loglevel",
            "WARNING",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"{queue}@%h",
        ],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        escalate_overdue_bsrs.apply_async(queue=queue)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            bsr.refresh_from_db()
            if bsr.state == "escalated" or worker.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        worker.terminate()
        try:
            output = worker.communicate(timeout=20)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            worker.kill()
            output = worker.communicate()[0].decode(errors="replace")
    assert bsr.state == "escalated", f"the worker did not run the task; its output:\n{output}"
    last = bsr.transitions.order_by("-at").first()
    assert last.to_state == "escalated" and last.actor == system
