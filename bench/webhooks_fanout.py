"""Benchmark B4: webhook fan-out and steady load (shared/design/BENCHMARKS.md).

The product: the outbox writes an event and its deliveries in the changing transaction; the
dispatcher (webhooks.dispatch) claims them, signs, sends through the SSRF-guarded client and
records each attempt. Two drivers of the dispatcher, each measured:

- ``inprocess``: ``dispatch.dispatch()`` called in this process: the engine alone.
- ``celery``: real ``celery -A bxos worker`` processes (prefork, concurrency 2) woken by the
  outbox's after-commit message through a Redis of the benchmark's own, plus ``celery beat``
  running the sweep: the production path.

The reference, in the same run, to the same receivers: a plain ``httpx.AsyncClient`` sending
the same payloads, signed the same way (Standard Webhooks, each endpoint's secret), with the
same concurrency budget (as many connections as one dispatching process may open,
OUTBOUND_HTTP MAX_CONNECTIONS), and nothing else: no database, no guard.

1. Fan-out: one event to N endpoints (1,000). Rate = deliveries / (last arrival - the event's
   occurred_at): the outbox write of the N deliveries is part of the engine's time.
2. Steady load: R events/s (200) for S seconds to E endpoints each (1), from two emitter
   processes, K events to a transaction (4, 50 commits/s): each event is a student's domain
   event emitted inside ``write_as`` so the outbox writes run in real transactions and each
   commit queues its wake-up (``--emit-via service`` makes it a full ``model_update``, about
   25 ms of validation, audit and change version a change here: too slow to offer 200/s on
   2 cores). Event-to-first-attempt latency is the receiver's arrival time of the first
   request minus the event's occurred_at. The reference sends the same events at the same
   instants.

Receivers: bench/receivers.py, raw asyncio servers on 127.0.0.1 in their own process.

    python -m bench.webhooks_fanout [--endpoints 1000] [--rate 200] [--seconds 20]
        [--steady-endpoints 1] [--per-transaction 4] [--driver both|inprocess|celery] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


os.environ.setdefault("BXOS_DB_NAME", "bxos_bench_wh")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bxos.settings")
# The receivers are on 127.0.0.1: loopback must be allowed here and in the workers (test-only).
os.environ.setdefault("OUTBOUND_ALLOW_LOOPBACK", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# Wake-ups go to a Redis of the benchmark's own (started in main), never a developer's broker.
if "BENCH_WH_EMITTER" not in os.environ:
    os.environ["CELERY_BROKER_URL"] = f"redis://127.0.0.1:{_free_port()}/0"

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from bench.data import ensure_students  # noqa: E402
from bxos.common.audit import system_actor  # noqa: E402
from bxos.common.services import model_update  # noqa: E402
from bxos.schools.models import Student  # noqa: E402
from webhooks import dispatch, signing  # noqa: E402
from webhooks.models import (  # noqa: E402
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookSecret,
)

CODE = "benchwh"
EVENT_TYPE = "student.updated"
WEBHOOK_TABLES = [
    "webhooks_webhookattempt",
    "webhooks_webhookdelivery",
    "webhooks_webhookevent",
    "webhooks_webhooksecret",
    "webhooks_webhookendpoint_schools",
    "webhooks_webhookendpoint",
]


# --- processes ---------------------------------------------------------------------------------


class Processes:
    """Child processes in their own process groups, stopped together; output in files."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-wh-"))
        self.children: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            args,
            env=env or os.environ,
            cwd=settings.BASE_DIR,
            stdout=kw.pop("stdout", log),
            stderr=log,
            start_new_session=True,
            **kw,
        )
        self.children.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for process in reversed(self.children):
            self.stop(process)
        shutil.rmtree(self.dir, ignore_errors=True)

    def tail(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def start_redis(procs: Processes) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    port = int(settings.CELERY_BROKER_URL.rsplit(":", 1)[1].split("/")[0])
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    procs.start("redis", [*args, "no", "--dir", str(procs.dir)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"redis-server did not start: {procs.tail('redis')}")


class ReceiverProcess:
    def __init__(self, procs: Processes, ports: int) -> None:
        self.process = procs.start(
            "receivers",
            [sys.executable, "-m", "bench.receivers", "--ports", str(ports)],
            stdout=subprocess.PIPE,
        )
        line = self.process.stdout.readline()
        self.ports = json.loads(line)["ports"]
        self.http = httpx.Client(timeout=30)

    def take(self) -> list[tuple[float, str, str]]:
        response = self.http.get(f"http://127.0.0.1:{self.ports[0]}/_records")
        return [tuple(r) for r in response.json()]

    def wait_for(self, count: int, timeout: float, keep: list) -> list:
        """Records until ``count`` have arrived in all (``keep`` collects them)."""
        deadline = time.monotonic() + timeout
        while len(keep) < count and time.monotonic() < deadline:
            keep.extend(self.take())
            if len(keep) < count:
                time.sleep(0.05)
        return keep


# --- data --------------------------------------------------------------------------------------


def reset_webhooks() -> None:
    with connection.cursor() as c:
        c.execute(f"TRUNCATE {', '.join(WEBHOOK_TABLES)} RESTART IDENTITY")


def make_endpoints(
    district, urls: list[str], event_type: str = EVENT_TYPE, **options
) -> dict[str, tuple[str, list[str]]]:
    """Endpoints subscribed to ``event_type``, one per URL (bulk: set-up, not measured).

    Returns url -> (path, [secret])."""
    endpoints = WebhookEndpoint.objects.bulk_create(
        [
            WebhookEndpoint(
                district=district, name=f"bench {i}", url=url, event_types=[event_type], **options
            )
            for i, url in enumerate(urls)
        ]
    )
    secrets = [signing.new_secret() for _ in endpoints]
    WebhookSecret.objects.bulk_create(
        [WebhookSecret(endpoint=e, secret=s) for e, s in zip(endpoints, secrets, strict=True)]
    )
    return {e.url: (httpx.URL(e.url).path, [s]) for e, s in zip(endpoints, secrets, strict=True)}


def urls_for(receivers: ReceiverProcess, prefix: str, count: int) -> list[str]:
    ports = receivers.ports
    return [f"http://127.0.0.1:{ports[i % len(ports)]}/{prefix}/{i}" for i in range(count)]


def occurred(event_ids) -> dict[str, float]:
    return {
        pk: at.timestamp()
        for pk, at in WebhookEvent.objects.filter(pk__in=list(event_ids)).values_list(
            "id", "occurred_at"
        )
    }


def first_arrivals(records) -> dict[tuple[str, str], float]:
    first: dict[tuple[str, str], float] = {}
    for at, path, webhook_id in records:
        key = (path, webhook_id)
        if key not in first or at < first[key]:
            first[key] = at
    return first


# --- the reference -------------------------------------------------------------------------------


async def reference_send(jobs, connections: int, schedule: list[float] | None = None) -> float:
    """Send ``jobs`` [(url, secrets, event id, body)] with a plain AsyncClient; ``schedule``:
    the unix time at which to send each (else all at once). Returns the start time."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    # At most ``connections`` requests at once: more would only queue in httpcore's pool.
    gate = asyncio.Semaphore(connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one(job, at: float | None) -> None:
            if at is not None:
                delay = at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            url, secrets, event_id, body = job
            async with gate:
                headers = {
                    "content-type": "application/json",
                    **signing.headers(secrets, event_id, int(time.time()), body),
                }
                response = await client.post(url, content=body, headers=headers)
            response.raise_for_status()

        started = time.time()
        times = schedule or [None] * len(jobs)
        await asyncio.gather(*(one(job, at) for job, at in zip(jobs, times, strict=True)))
    return started


# --- drivers -------------------------------------------------------------------------------------


class Driver:
    name = ""

    def start(self) -> None: ...

    def after_emit(self) -> None: ...

    def stop(self) -> None: ...


class InProcess(Driver):
    """dispatch.dispatch() in this process after each emission (fan-out), or in a loop."""

    name = "in-process dispatch()"

    def after_emit(self) -> None:
        while dispatch.dispatch(budget_seconds=60):
            pass


class CeleryWorkers(Driver):
    name = "Celery workers (prefork x2) + beat"

    def __init__(self, procs: Processes, conn_max_age: int) -> None:
        self.procs = procs
        self.conn_max_age = conn_max_age
        self.children: list[subprocess.Popen] = []

    def start(self) -> None:
        env = {**os.environ, "DB_CONN_MAX_AGE": str(self.conn_max_age)}
        celery = [sys.executable, "-m", "celery", "-A", "bxos"]
        self.children.append(
            self.procs.start(
                "worker",
                [
                    *celery,
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
                    f"bench-{os.getpid()}@%h",
                ],
                env,
            )
        )
        self.children.append(
            self.procs.start(
                "beat",
                [
                    *celery,
                    "beat",
                    "--scheduler",
                    "django_celery_beat.schedulers:DatabaseScheduler",
                    "--loglevel",
                    "WARNING",
                ],
                env,
            )
        )

    def stop(self) -> None:
        for child in self.children:
            self.procs.stop(child)
        self.children.clear()


# --- fan-out -------------------------------------------------------------------------------------


def fanout(args, district, students, receivers, driver: Driver) -> dict:
    reset_webhooks()
    # Subscribed once the warm-up is through: a first event to one endpoint tells that the
    # dispatcher is up (Celery boot) and has its connections.
    endpoints = make_endpoints(
        district, urls_for(receivers, "fan", args.endpoints), event_type="student.created"
    )
    warm = make_endpoints(district, urls_for(receivers, "warm", 1))
    actor = system_actor()
    data = {"preferred_name": f"Warm-up {time.time()}"}
    model_update(instance=students[0], actor=actor, data=data)
    driver.after_emit()
    if not receivers.wait_for(1, 120, []):
        raise SystemExit(f"the dispatcher did not start\n{driver_logs(driver)}")
    WebhookEndpoint.objects.filter(url__in=list(warm)).update(event_types=["student.created"])
    WebhookEndpoint.objects.filter(url__in=list(endpoints)).update(event_types=[EVENT_TYPE])
    receivers.take()

    engine, reference, commits, after_commit = [], [], [], []
    for round_ in range(args.rounds):
        time.sleep(0.5)
        model_update(
            instance=students[1 + round_],
            actor=actor,
            data={"preferred_name": f"Fan-out {round_} {time.time()}"},
        )
        committed = time.time()
        driver.after_emit()
        records = receivers.wait_for(args.endpoints, 120, [])
        event = WebhookEvent.objects.order_by("-created_at").first()
        start = event.occurred_at.timestamp()
        ours = [r for r in records if r[2] == event.id]
        if len(first_arrivals(ours)) < args.endpoints:
            raise SystemExit(f"fan-out: {len(first_arrivals(ours))} of {args.endpoints} arrived")
        last = max(at for at, _path, _id in ours)
        engine.append(args.endpoints / (last - start))
        after_commit.append(args.endpoints / (last - committed))
        commits.append(committed - start)
        settle()

        # The reference: the same signed payload to the same endpoints.
        body = bytes(event.payload)
        jobs = [(url, secrets, event.id, body) for url, (_path, secrets) in endpoints.items()]
        started = asyncio.run(reference_send(jobs, args.connections))
        records = receivers.wait_for(args.endpoints, 60, [])
        last = max(at for at, _path, _id in records)
        reference.append(args.endpoints / (last - started))
    return {
        "engine": statistics.median(engine),
        "reference": statistics.median(reference),
        # Each round's engine and reference ran back to back: their ratio is the steadier
        # figure on a shared machine.
        "ratio": statistics.median(e / r for e, r in zip(engine, reference, strict=True)),
        "ratio_after_commit": statistics.median(
            e / r for e, r in zip(after_commit, reference, strict=True)
        ),
        "outbox_ms": statistics.median(commits) * 1000,
        "after_commit": statistics.median(after_commit),
        "rounds": list(zip(engine, reference, strict=True)),
    }


def settle() -> None:
    """Wait until the dispatcher has recorded everything (its last batch's writes would
    compete with the reference for the CPU), then a moment more."""
    deadline = time.monotonic() + 30
    open_ = ["pending", "leased"]
    while WebhookDelivery.objects.filter(status__in=open_).exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.5)


def driver_logs(driver: Driver) -> str:
    if isinstance(driver, CeleryWorkers):
        return driver.procs.tail("worker") + driver.procs.tail("beat")
    return ""


# --- steady load ---------------------------------------------------------------------------------


def emit_main(
    rate: float, seconds: float, start_at: float, offset: int, step: int, via: str, per_tx: int
) -> None:
    """Emitter process: events ``offset, offset+step, ...`` of ``rate`` per second in all,
    ``per_tx`` to a transaction. ``via`` "event": the domain event of a student inside
    ``write_as`` (the outbox's work in a real transaction, no row written); "service": a real
    ``model_update`` of the student (validation, audit, change version: about 25 ms here)."""
    from bxos.common import events
    from bxos.common.services import write_as

    students = list(Student.objects.filter(district__code=CODE).order_by("id")[:1000])
    actor = system_actor()
    mine = list(range(offset, int(rate * seconds), step))
    late = []
    for first in range(0, len(mine), per_tx):
        group = mine[first : first + per_tx]
        at = start_at + group[-1] / rate  # none of the group before its time
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            late.append(-delay)
        with write_as(actor):
            for n in group:
                student = students[n % len(students)]
                if via == "service":
                    data = {"preferred_name": f"Steady {n}"}
                    model_update(instance=student, actor=actor, data=data)
                else:
                    events.emit(EVENT_TYPE, student)
    print(json.dumps({"sent": len(mine), "late": late}), flush=True)


def steady(args, district, receivers, driver: Driver) -> dict:
    reset_webhooks()
    endpoints = make_endpoints(
        district,
        urls_for(receivers, "steady", args.steady_endpoints),
        rate_per_second=10_000,
        max_in_flight=20,
    )
    actor = system_actor()
    student = Student.objects.filter(district=district).order_by("id").first()
    model_update(instance=student, actor=actor, data={"preferred_name": f"Warm {time.time()}"})
    driver.after_emit()
    if not receivers.wait_for(args.steady_endpoints, 120, []):
        raise SystemExit(f"the dispatcher did not start\n{driver_logs(driver)}")
    time.sleep(1)
    receivers.take()
    reset_events = set(WebhookEvent.objects.values_list("id", flat=True))

    # Emitters in their own processes, so their Python does not share this one's GIL.
    start_at = time.time() + 5  # the emitters' Django set-up first
    env = {**os.environ, "BENCH_WH_EMITTER": "1"}
    emitters = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.webhooks_fanout",
                "--emit",
                json.dumps(
                    [
                        args.rate,
                        args.seconds,
                        start_at,
                        i,
                        args.emitters,
                        args.emit_via,
                        args.per_transaction,
                    ]
                ),
            ],
            env=env,
            cwd=settings.BASE_DIR,
            stdout=subprocess.PIPE,
        )
        for i in range(args.emitters)
    ]
    records: list = []
    stop_loop = False
    if isinstance(driver, InProcess):
        # The dispatcher: a loop in this process while the emitters run.
        while not stop_loop:
            if not dispatch.dispatch(budget_seconds=5):
                time.sleep(0.01)
            stop_loop = all(e.poll() is not None for e in emitters)
        dispatch.dispatch()
    outputs = [json.loads(e.communicate()[0].decode().strip().splitlines()[-1]) for e in emitters]
    expected = int(args.rate * args.seconds) * args.steady_endpoints
    receivers.wait_for(expected, 60, records)
    events = occurred(set(WebhookEvent.objects.values_list("id", flat=True)) - reset_events)
    first = first_arrivals(r for r in records if r[2] in events)
    latencies = sorted(at - events[event_id] for (_p, event_id), at in first.items())
    arrivals = sorted(first.values())
    span = arrivals[-1] - min(events.values()) if arrivals else float("nan")
    late = [x for o in outputs for x in o["late"]]
    engine = {
        "events": len(events),
        "offered": len(events) / (max(events.values()) - min(events.values())),
        "deliveries": len(first),
        "expected": expected,
        "throughput": len(first) / span,
        "latency": latencies,
        "drain": arrivals[-1] - max(events.values()) if arrivals else float("nan"),
        "emitters_late_p99_ms": pct(late, 99) * 1000 if late else 0.0,
    }

    # The reference: the same events, at the same instants (relative), same endpoints.
    settle()
    bodies = dict(WebhookEvent.objects.filter(pk__in=list(events)).values_list("id", "payload"))
    order = sorted(events, key=events.get)
    base = time.time() + 1 - events[order[0]]
    jobs, schedule = [], []
    for event_id in order:
        for url, (_path, secrets) in endpoints.items():
            jobs.append((url, secrets, event_id, bytes(bodies[event_id])))
            schedule.append(events[event_id] + base)
    asyncio.run(reference_send(jobs, args.connections, schedule))
    records = receivers.wait_for(len(jobs), 60, [])
    scheduled = {(httpx.URL(j[0]).path, j[2]): at for j, at in zip(jobs, schedule, strict=True)}
    first = first_arrivals(records)
    ref_latencies = sorted(at - scheduled[key] for key, at in first.items())
    arrivals = sorted(first.values())
    reference = {
        "throughput": len(first) / (arrivals[-1] - min(scheduled.values())),
        "latency": ref_latencies,
    }
    return {"engine": engine, "reference": reference}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) < 3:
        return max(values)
    return statistics.quantiles(values, n=100)[int(q) - 1]


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--steady-endpoints", type=int, default=1)
    parser.add_argument("--emitters", type=int, default=2)
    parser.add_argument("--emit-via", choices=["event", "service"], default="event")
    parser.add_argument("--per-transaction", type=int, default=4)
    # Persistent database connections for the workers, as B3 runs gunicorn (the setting's
    # default, 0, opens a connection per task: each wake-up pays for one).
    parser.add_argument("--worker-conn-max-age", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ports", type=int, default=8)
    parser.add_argument("--driver", choices=["both", "inprocess", "celery"], default="both")
    parser.add_argument("--skip", choices=["fanout", "steady"], action="append", default=[])
    parser.add_argument("--emit", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emit:
        emit_main(*json.loads(args.emit))
        return
    args.connections = settings.OUTBOUND_HTTP["MAX_CONNECTIONS"]

    district, _schools = ensure_students(CODE, max(1000, args.rounds + 1))
    students = list(Student.objects.filter(district=district).order_by("id")[: args.rounds + 1])
    procs = Processes()
    results: dict = {}
    load_before = os.getloadavg()
    try:
        start_redis(procs)
        receivers = ReceiverProcess(procs, args.ports)
        drivers: list[Driver] = []
        if args.driver in ("both", "inprocess"):
            drivers.append(InProcess())
        if args.driver in ("both", "celery"):
            drivers.append(CeleryWorkers(procs, args.worker_conn_max_age))
        for driver in drivers:
            driver.start()
            try:
                if "fanout" not in args.skip:
                    results[(driver.name, "fanout")] = fanout(
                        args, district, students, receivers, driver
                    )
                if "steady" not in args.skip:
                    results[(driver.name, "steady")] = steady(args, district, receivers, driver)
            finally:
                driver.stop()
    finally:
        procs.stop_all()
    report(args, results, load_before, os.getloadavg())


def report(args, results: dict, load_before, load_after) -> None:
    print(
        f"\nB4: webhooks, {os.cpu_count()} cores, load average {load_before[0]:.2f} before and "
        f"{load_after[0]:.2f} after; reference: plain httpx.AsyncClient, "
        f"{args.connections} connections, same receivers ({args.ports} ports)"
    )
    fan = [(d, r) for (d, kind), r in results.items() if kind == "fanout"]
    if fan:
        print(
            f"\nfan-out: 1 event to {args.endpoints:,} endpoints, medians of {args.rounds} rounds "
            "(ratio: the median of each round's engine/reference)"
        )
        print(
            f"{'driver':<36}{'engine/s':>10}{'ref/s':>9}{'ratio':>8}{'outbox ms':>11}"
            f"{'from commit/s':>15}{'ratio':>8}"
        )
        for name, r in fan:
            print(
                f"{name:<36}{r['engine']:>10.0f}{r['reference']:>9.0f}{r['ratio']:>7.2f}x"
                f"{r['outbox_ms']:>11.0f}{r['after_commit']:>15.0f}"
                f"{r['ratio_after_commit']:>7.2f}x"
            )
            rounds = ", ".join(f"{e:.0f}/{ref:.0f}" for e, ref in r["rounds"])
            print(f"{'':<4}rounds (engine/ref per s): {rounds}")
    steady_ = [(d, r) for (d, kind), r in results.items() if kind == "steady"]
    if steady_:
        print(
            f"\nsteady: {args.rate:.0f} events/s for {args.seconds:.0f} s, "
            f"{args.steady_endpoints} endpoint(s) each, {args.emitters} emitter processes "
            f"(emitting via {args.emit_via}, {args.per_transaction} per transaction)"
        )
        print(
            f"{'driver':<36}{'offered/s':>10}{'deliv/s':>9}{'ref/s':>8}{'ratio':>8}"
            f"{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'ref p99':>8}{'drain s':>8}{'missing':>8}"
        )
        for name, r in steady_:
            e, ref = r["engine"], r["reference"]
            lat = e["latency"]
            print(
                f"{name:<36}{e['offered']:>10.0f}{e['throughput']:>9.0f}{ref['throughput']:>8.0f}"
                f"{e['throughput'] / ref['throughput']:>7.2f}x"
                f"{pct(lat, 50) * 1000:>8.0f}{pct(lat, 95) * 1000:>8.0f}{pct(lat, 99) * 1000:>8.0f}"
                f"{pct(ref['latency'], 99) * 1000:>8.1f}{e['drain']:>8.2f}"
                f"{e['expected'] - e['deliveries']:>8}"
            )
            print(f"{'':<4}emitters' lateness p99: {e['emitters_late_p99_ms']:.0f} ms")


if __name__ == "__main__":
    main()
