"""A sync run on a real Celery worker (tests/celery_worker.py), caught while the Ed-Fi test peer
holds back its answer to one request (``EdFiPeer.hold_answer``): the test looks at the run
while the worker waits inside it, then SIGKILLs the worker (a machine dying, an out-of-memory
kill, a deploy: nothing of the worker runs after that moment) or lets the answer go.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from integrations import tasks
from integrations.choices import ACTIVE
from integrations.models import SyncRun
from tests.celery_worker import Worker, celery_worker
from tests.integrations.peers.edfi import EdFiPeer, Held

WAIT = 90  # seconds, at most, for the worker to reach the held request or to finish the run


@dataclass
class Waiting:
    """The worker, waiting for the held answer."""

    worker: Worker
    held: Held

    def kill(self) -> None:
        os.kill(self.worker.process.pid, signal.SIGKILL)
        self.worker.process.wait(timeout=20)

    def release(self) -> None:
        self.held.release.set()

    def finished(self, run: SyncRun) -> SyncRun:
        """The run once the worker has finished it (after :meth:`release`)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and self.worker.alive():
            run.refresh_from_db()
            if run.status not in ACTIVE:
                return run
            time.sleep(0.2)
        run.refresh_from_db()
        return run


@contextlib.contextmanager
def worker_waiting_on(
    peer: EdFiPeer, monkeypatch, run: SyncRun, *, method: str, match: str
) -> Iterator[Waiting]:
    """Send ``run`` (queued) to a real worker on its own queue, the peer holding its answer to
    the first ``method`` request whose path contains ``match``; enters once the peer applied
    that request and holds the answer. On leaving, the answer goes and the worker stops."""
    held = peer.hold_answer(method, match)
    # The worker's settings must let it reach the peer on 127.0.0.1, as the tests' do.
    monkeypatch.setenv("OUTBOUND_ALLOW_LOOPBACK", "1")
    reached = False
    with celery_worker() as worker:
        try:
            tasks.run_sync.apply_async(args=[run.pk], queue=worker.queue)
            deadline = time.monotonic() + WAIT
            while not held.applied.wait(0.2):
                if not worker.alive() or time.monotonic() > deadline:
                    break
            reached = held.applied.is_set()
            if reached:
                yield Waiting(worker, held)
        finally:
            held.release.set()
    if not reached:  # the worker has stopped: its output is complete
        pytest.fail(f"the worker never sent {method} {match}; its output:\n{worker.output[-3000:]}")
