"""At least once, never lost: a real worker is killed mid-send and the broker loses its queue.

A Redis of the test's own (Debian's ``redis-server`` on a free port, nothing persisted), real
``celery -A bxos worker`` processes (prefork, concurrency 2) and ``celery beat`` with
django-celery-beat's database scheduler, which runs "Sweep webhook deliveries" every 5 s. The
workers reach the test database (BXOS_DB_NAME) and a receiver on 127.0.0.1
(OUTBOUND_ALLOW_LOOPBACK), and hold leases for WEBHOOK_LEASE_SECONDS instead of a minute. This
process publishes its after-commit wake-ups to the same Redis.

1. 150 events to two endpoints; the receiver answers slowly, so when worker A is killed
   (SIGKILL to its process group) requests are in flight and deliveries are leased to it.
2. 100 more events while no worker runs: their wake-ups wait in Redis, and Redis is stopped
   and started empty, so they are lost. Worker B starts; only the beat sweep can find them,
   and it must also reclaim A's leases once they expire.
3. Redis is restarted again under worker B and beat; then 50 last events, which B can only hear
   about through the restarted Redis (it was idle).

Then every event reached both endpoints at least once, every duplicate carries the same
``webhook-id`` and body (signed), every request in flight at the kill was sent again, and every
delivery succeeded: nothing pending, nothing leased.

The processes are supervised as in production (systemd, Kubernetes): one that exits on its own
is started again, and the exit is printed with the results. With Celery 5.7.0 and kombu 5.7.0 a
worker whose broker connection drops while it holds an unacknowledged message (an ``acks_late``
task running, or one prefetched) exits with "Unrecoverable error: AttributeError: 'NoneType'
object has no attribute 'hostname'" instead of reconnecting, unless its connection has no
auto-delete fanout queue (see ``runstack.reconnect_options``). The workers here run without
gossip and, through the settings, without remote control, as `make run` starts its worker, so
none may exit: step 3 must not restart worker B.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import kombu.pools
import pytest
from django.conf import settings
from django.db import connection, transaction
from django_celery_beat.models import PeriodicTask
from standardwebhooks.webhooks import Webhook

from bxos.celery import app as celery_app
from bxos.common.schedules import DEFAULT_SCHEDULES, ensure_periodic_tasks
from bxos.common.services import model_update
from tests.conftest import skip_or_fail
from tests.webhooks.receiver import Answer, Receiver
from webhooks import services
from webhooks.choices import DeliveryStatus
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEvent

SWEEP = "Sweep webhook deliveries"
WAKE_UP = "webhooks.dispatch"  # the task the outbox queues after commit
LEASE_SECONDS = 6  # the workers' WEBHOOK_LEASE_SECONDS: each request takes 0.4 s
RECEIVER_DELAY = 0.4
FIRST, WHILE_DOWN, LAST = 150, 100, 50  # events in each phase
WAIT = 90  # seconds, at most, for the deliveries after the kill and the restarts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


class RedisServer:
    """redis-server on 127.0.0.1:port, in memory only: a stop loses every queued message."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = workdir / "redis.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if self.client().ping():
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"redis-server did not start:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def queued(self, task: str, queue: str = "celery") -> int:
        """Messages for ``task`` waiting in ``queue`` (beat's own sweeps come and go)."""
        messages = [json.loads(m) for m in self.client().lrange(queue, 0, -1)]
        return sum(1 for m in messages if m.get("headers", {}).get("task") == task)


class CeleryProcesses:
    """Worker and beat processes, each in its own process group, output in files.

    Supervised as production runs them (systemd, Kubernetes): one that exits on its own is
    started again, and the exit is kept for the report. ``kill`` is the test's own SIGKILL,
    which is not restarted for it.
    """

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.running: dict[str, tuple[list[str], subprocess.Popen]] = {}
        self.everything: list[subprocess.Popen] = []
        self.logs: dict[str, Path] = {}
        self.exits: list[str] = []  # "name: exit code" of unplanned exits

    def _start(self, role: str, args: list[str], name: str = "") -> subprocess.Popen:
        name = name or role
        self.logs[name] = self.workdir / f"{name}.log"
        with open(self.logs[name], "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bxos", *args],
                env=self.env,
                cwd=settings.BASE_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group: the kill takes the pool children too
            )
        self.running[role] = (args, process)
        self.everything.append(process)
        return process

    def worker(self, name: str) -> subprocess.Popen:
        return self._start(
            name,
            [
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "--hostname",
                f"{name}-{uuid.uuid4().hex[:6]}@%h",
            ],
        )

    def beat(self) -> subprocess.Popen:
        args = ["beat", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"]
        return self._start("beat", [*args, "--loglevel", "WARNING"])

    def kill(self, role: str) -> None:
        """SIGKILL to the process group: the main process and its pool children at once."""
        _args, process = self.running.pop(role)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def supervise(self) -> None:
        for role, (args, process) in list(self.running.items()):
            if process.poll() is not None:
                self.exits.append(f"{role}: exit code {process.returncode}")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # children left behind, if any
                self._start(role, args, name=f"{role}-restarted-{len(self.exits)}")

    def stop_all(self) -> None:
        self.running.clear()
        for process in self.everything:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.everything:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            # Whatever is left of the group (a main process gone before its children) goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def output(self) -> str:
        exits = f"unplanned exits: {self.exits}\n" if self.exits else ""
        return exits + "\n".join(f"--- {n}:\n{_tail(path)}" for n, path in self.logs.items())


@contextlib.contextmanager
def publishing_to(url: str):
    """This process's Celery app sends its messages (the outbox's wake-ups) to ``url``.

    Celery reads CELERY_BROKER_URL from the environment before its own setting (CI sets it), so
    both change. kombu keeps its connection pools in a process-wide registry keyed by broker
    URL; ``kombu.pools.reset`` closes and forgets them, so neither this test nor a later one is
    handed a pool closed underneath it.
    """
    conf = celery_app.conf
    saved = (conf.broker_url, conf.broker_transport_options, os.environ.get("CELERY_BROKER_URL"))

    def reset_pools() -> None:
        kombu.pools.reset()
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    reset_pools()
    conf.broker_url, conf.broker_transport_options = url, {}
    os.environ["CELERY_BROKER_URL"] = url
    try:
        yield
    finally:
        reset_pools()
        conf.broker_url, conf.broker_transport_options = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = saved[2]


def emit(world, actor, first: int, count: int, per_transaction: int = 25) -> None:
    """``count`` student.updated events through the services, several per transaction."""
    for start in range(first, first + count, per_transaction):
        with transaction.atomic():
            for n in range(start, min(start + per_transaction, first + count)):
                student = world.students[n % len(world.students)]
                model_update(instance=student, actor=actor, data={"preferred_name": f"Run {n}"})


def wait_until(condition, timeout: float, what: str, celery: CeleryProcesses) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        celery.supervise()
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{celery.output()}")


def complete(receiver: Receiver) -> list:
    """The requests that arrived whole. One the kill cut off part-way through its body (the
    receiver records what it could read) was never sent, for the receiver as for the test."""
    return [r for r in list(receiver.received) if len(r.body) == int(r.headers["content-length"])]


def statuses() -> Counter:
    return Counter(WebhookDelivery.objects.values_list("status", flat=True))


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_and_a_restarted_broker_lose_nothing(north, system, loopback, tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    task = DEFAULT_SCHEDULES[SWEEP][0]
    # migrate creates it; an earlier transactional test's flush may have removed it since.
    ensure_periodic_tasks()
    assert PeriodicTask.objects.filter(name=SWEEP, task=task, enabled=True).exists(), (
        "the beat sweep is not scheduled in the test database"
    )

    receiver = Receiver()
    receiver.default = Answer(delay=RECEIVER_DELAY)
    secrets = {}
    for path in ("/a", "/b"):
        _endpoint, secrets[path] = services.webhook_endpoint_create(
            actor=system,
            district=north.district,
            name=f"Receiver {path}",
            url=receiver.url.removesuffix("/hook") + path,
            event_types=["student.updated"],
            max_in_flight=20,
            rate_per_second=1000,
        )

    redis = RedisServer(binary, tmp_path)
    env = {
        **os.environ,
        "CELERY_BROKER_URL": redis.url,
        "BXOS_DB_NAME": connection.settings_dict["NAME"],
        "OUTBOUND_ALLOW_LOOPBACK": "1",
        "WEBHOOK_LEASE_SECONDS": str(LEASE_SECONDS),
        "LOG_LEVEL": "WARNING",
    }
    celery = CeleryProcesses(tmp_path, env)
    with contextlib.ExitStack() as stack:
        stack.enter_context(receiver)
        redis.start()
        stack.callback(redis.stop)
        stack.enter_context(publishing_to(redis.url))
        stack.callback(celery.stop_all)  # runs before redis.stop: last in, first out
        celery.beat()
        celery.worker("worker-a")

        # 1. Worker A sends; killed while requests are in flight and deliveries leased to it.
        emit(north, system, 0, FIRST)

        def in_flight() -> bool:
            received = {(r.path, r.headers["webhook-id"]) for r in list(receiver.received)}
            leased = WebhookDelivery.objects.filter(status=DeliveryStatus.LEASED).values_list(
                "endpoint__url", "event_id"
            )
            return len(received) >= 40 and any(
                (url[url.rindex("/") :], event_id) in received for url, event_id in leased
            )

        wait_until(in_flight, 60, "worker A to have requests in flight", celery)
        celery.kill("worker-a")
        killed = list(
            WebhookDelivery.objects.filter(status=DeliveryStatus.LEASED).values_list(
                "pk", "endpoint__url", "event_id", "leased_by"
            )
        )
        seen_at_kill = Counter((r.path, r.headers["webhook-id"]) for r in complete(receiver))
        interrupted = {
            (url[url.rindex("/") :], event_id)
            for _pk, url, event_id, _lease in killed
            if (url[url.rindex("/") :], event_id) in seen_at_kill
        }
        assert interrupted, "the kill landed between batches: no request was in flight"

        # 2. Events while no worker runs: their wake-ups wait in Redis and die with it.
        emit(north, system, FIRST, WHILE_DOWN)
        assert redis.queued(WAKE_UP) >= 1, "the wake-ups were not queued in Redis"
        redis.restart()
        assert redis.queued(WAKE_UP) == 0
        celery.worker("worker-b")
        sent_before = len(receiver.received)
        wait_until(
            lambda: len(receiver.received) >= sent_before + 30,
            WAIT,
            "worker B to send (the sweep finds what the lost wake-ups were for)",
            celery,
        )

        # 3. Redis restarts under worker B and beat; then events only they can pick up.
        redis.restart()
        open_statuses = (DeliveryStatus.PENDING, DeliveryStatus.LEASED)
        wait_until(
            lambda: not WebhookDelivery.objects.filter(status__in=open_statuses).exists(),
            WAIT,
            "every delivery of the first 250 events to finish",
            celery,
        )
        emit(north, system, FIRST + WHILE_DOWN, LAST)
        total = 2 * (FIRST + WHILE_DOWN + LAST)
        wait_until(
            lambda: statuses()[DeliveryStatus.SUCCEEDED] == total,
            WAIT,
            f"all {total} deliveries to succeed (now {dict(statuses())})",
            celery,
        )
        logs = celery.output()

    # Every event reached both endpoints, at least once; nothing else arrived.
    events = set(WebhookEvent.objects.values_list("id", flat=True))
    assert len(events) == FIRST + WHILE_DOWN + LAST
    by_key = defaultdict(list)
    for request in complete(receiver):
        by_key[(request.path, request.headers["webhook-id"])].append(request)
    for path in ("/a", "/b"):
        got = {event_id for p, event_id in by_key if p == path}
        assert got == events, f"{path}: missing {len(events - got)}, unknown {len(got - events)}"
    # A duplicate is the same message: same webhook-id, same body, validly signed.
    duplicates = {key: requests for key, requests in by_key.items() if len(requests) > 1}
    for (path, event_id), requests in by_key.items():
        assert len({r.body for r in requests}) == 1, f"{event_id} to {path}: bodies differ"
        for request in requests:
            payload = Webhook(secrets[path]).verify(request.body, request.headers)
            assert payload["data"]["eventId"] == event_id
    # The reaper gave A's leases back (nothing else turns a leased row into a pending one, and
    # only a pending one is claimed): each request in flight at the kill was sent again.
    assert interrupted <= set(duplicates), (
        f"not re-sent after the kill: {sorted(interrupted - set(duplicates))}\n{logs}"
    )
    for pk, _url, _event_id, lease in killed:
        delivery = WebhookDelivery.objects.get(pk=pk)
        assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.leased_by != lease
        assert WebhookAttempt.objects.filter(delivery=delivery, succeeded=True).exists()
    # No worker or beat exited on its own, not even at the Redis restarts.
    assert not celery.exits, logs
    # Nothing pending, nothing leased, nothing failed: every delivery succeeded.
    assert statuses() == Counter({DeliveryStatus.SUCCEEDED: total})
    assert not WebhookDelivery.objects.exclude(lease_expires_at=None).exists()
    report = {
        "received": len(receiver.received),
        "cut_off_by_the_kill": len(receiver.received) - len(complete(receiver)),
        "duplicates": len(duplicates),
        "killed_leases": len(killed),
        "in_flight_at_kill": len(interrupted),
        "unplanned_exits": celery.exits,
    }
    print(f"\nreliability: {json.dumps(report)}")
