"""A real Celery worker process for tests, on a private queue of its own.

The private queue keeps a developer's running worker from taking the test's tasks. The worker
uses the test database and the test's MEDIA_ROOT; its output is kept for the test's failure message.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from django.conf import settings
from django.db import connection

from tests.conftest import port_open, skip_or_fail


def check_broker() -> None:
    """Skip (or, with REQUIRE_SERVICES=1, fail) when the configured broker is not running."""
    url = settings.CELERY_BROKER_URL
    if url.startswith(("redis://", "amqp://")):
        parsed = urlparse(url)
        default_port = 6379 if url.startswith("redis") else 5672
        if not port_open(parsed.hostname or "127.0.0.1", parsed.port or default_port):
            skip_or_fail(f"broker {url} is not reachable")


@dataclass
class Worker:
    queue: str
    process: subprocess.Popen
    output: str = field(default="")

    def alive(self) -> bool:
        return self.process.poll() is None


@contextlib.contextmanager
def celery_worker() -> Iterator[Worker]:
    """Start ``celery worker --pool solo`` on a new queue; stop it and keep its output."""
    check_broker()
    queue = f"test-{uuid.uuid4().hex[:8]}"
    # The test's database and uploaded files (a test may point MEDIA_ROOT at its own folder).
    env = {
        **os.environ,
        "BXOS_DB_NAME": connection.settings_dict["NAME"],
        "BXOS_MEDIA_ROOT": str(settings.MEDIA_ROOT),
    }
    process = subprocess.Popen(
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
    worker = Worker(queue, process)
    try:
        yield worker
    finally:
        process.terminate()
        try:
            out = process.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            out = process.communicate()[0]
        worker.output = out.decode(errors="replace")
