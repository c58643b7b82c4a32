"""Benchmark B3: vendor API student list reads under concurrent load (shared/design/BENCHMARKS.md).

The product: GET /api/v1/students (token, scope, throttle, gate, key-set page of 100, field
profile, one disclosure row per page), served by gunicorn on 127.0.0.1. The reference, in the
same run on the same server: a bare Django view executing the very SELECT the API page ran and
returning orjson. Both at the first page and at the last page of the district (key-set cursor).

    python -m bench.api_students [--students 1000000] [--rounds 5] [--seconds 4]
                                 [--concurrency 8] [--workers 2 x cores + 1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path

os.environ.setdefault("BXOS_DB_NAME", "bxos_bench_api")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bxos.settings")

import django

django.setup()

import httpx  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402
from oauth2_provider.models import AccessToken  # noqa: E402
from oauthlib.common import generate_token  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from bench.data import ensure_students  # noqa: E402
from bxos.api.models import ApiClient  # noqa: E402
from bxos.api.paging import Page, encode_cursor  # noqa: E402
from bxos.api.services import api_client_create  # noqa: E402
from bxos.common.audit import system_actor  # noqa: E402

CODE = "benchapi"
SQL_FILE = Path(settings.VAR_DIR) / "bench-api-sql.json"


def setup(n: int) -> tuple[str, str]:
    district, _ = ensure_students(CODE, n)
    client = ApiClient.objects.filter(district=district).first()
    if client is None:
        client, _ = api_client_create(
            actor=system_actor(),
            district=district,
            name="Bench vendor",
            contact_name="B",
            contact_email="b@bench.example",
            purpose="Benchmark",
            contract_end_date=date.today() + timedelta(days=30),
            scopes=["roster.readonly"],
            status="production",
            rate_per_minute=1_000_000,
            rate_per_hour=100_000_000,
        )
    token = AccessToken.objects.create(
        application=client.application,
        token=generate_token(),
        scope="roster.readonly",
        expires=timezone.now() + timedelta(hours=2),
    )
    with connection.cursor() as c:
        c.execute(
            "SELECT id FROM schools_student WHERE district_id = %s ORDER BY id OFFSET %s LIMIT 1",
            [district.pk, max(n - 101, 0)],
        )
        last_page_after = c.fetchone()[0]
    cursor = encode_cursor((last_page_after,), Page(100, False, None, None, None))
    # Capture the API page's SELECT for the reference view.
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token.token}")
    queries = {}
    executed: list[tuple[str, list]] = []

    def record(execute, sql, values, many, context):
        executed.append((sql, list(values or ())))
        return execute(sql, values, many, context)

    for label, params in (("first", {"limit": 100}), ("last", {"limit": 100, "after": cursor})):
        executed.clear()
        with connection.execute_wrapper(record):
            assert api.get("/api/v1/students", params).status_code == 200
        # The API runs the page's SELECT inside one statement that also writes the disclosure
        # row (bxos.api.pages); the reference runs that SELECT alone, its values inlined.
        sql, values = [(q, v) for q, v in executed if 'FROM "schools_student"' in q][-1]
        start = sql.index("AS MATERIALIZED (") + len("AS MATERIALIZED (")
        end = sql.rindex("), disclosed AS (")
        select = sql[start:end]
        queries[label] = connection.ops.compose_sql(select, values[: select.count("%s")])
    SQL_FILE.write_text(json.dumps(queries))
    return token.token, cursor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def production_workers() -> int:
    """gunicorn's documented starting point, which the README gives for production: two sync
    workers per core plus one, so that a worker waiting on PostgreSQL (the disclosure row's
    durable commit) leaves the core to another."""
    return 2 * (os.cpu_count() or 1) + 1


def start_server(port: int, workers: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "BXOS_ROOT_URLCONF": "bench.urls",
        "DB_CONN_MAX_AGE": "60",
        "DJANGO_DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "BXOS_BENCH_SQL": str(SQL_FILE),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "bxos.wsgi",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=settings.BASE_DIR,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("gunicorn did not start")


def load(url: str, headers: dict, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    """Closed-loop clients for ``seconds``: (requests per second, latencies in ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker():
        local = []
        with httpx.Client(headers=headers, timeout=30) as http:
            while time.monotonic() < stop:
                t = time.perf_counter()
                response = http.get(url)
                local.append((time.perf_counter() - t) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"{url}: {response.status_code} {response.text[:200]}")
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.monotonic() - started), latencies


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found = []
    for task in tasks.iterdir() if tasks.exists() else ():
        text = (task / "children").read_text().split()
        found.extend(int(c) for c in text)
    return found


def _postgres_pids(database: str) -> list[int]:
    """This benchmark's backends and the cluster's own helpers (WAL writer, checkpointer...),
    not other databases' backends: another job's tests on the same cluster are not counted."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if not title.startswith("postgres"):
            continue
        parts = title.split()
        is_backend = len(parts) >= 4 and parts[0] == "postgres:" and "[local]" in title
        is_backend = is_backend or ("(" in title and "127.0.0.1" in title)
        if not is_backend or database in parts:
            pids.append(int(entry.name))
    return pids


def _reaped_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``'s children that have exited (cutime + cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[13]) + int(fields[14])) / _TICK


def _postmaster(pids: list[int]) -> int | None:
    for pid in pids:
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        return parent
    return None


def cpu_snapshot(server_pid: int, database: str) -> dict[str, float]:
    """CPU seconds so far: the web server (master and workers), PostgreSQL, this process.
    PostgreSQL's backends that exited in between are counted through the postmaster, which
    reaps them (a gunicorn worker may drop its connection)."""
    server = sum(_cpu_seconds(pid) for pid in [server_pid, *_children(server_pid)])
    pg_pids = _postgres_pids(database)
    postgres = sum(_cpu_seconds(pid) for pid in pg_pids)
    postmaster = _postmaster(pg_pids)
    if postmaster is not None:
        postgres += _reaped_cpu_seconds(postmaster)
    own = os.times()
    return {"server": server, "postgres": postgres, "clients": own.user + own.system}


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 2 else values[0]


def main() -> None:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one log line per request skews load
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=4, help="per scenario and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--workers",
        type=int,
        default=production_workers(),
        help="gunicorn sync workers (default: as in production, 2 per core + 1)",
    )
    args = parser.parse_args()
    token, cursor = setup(args.students)
    port = free_port()
    server = start_server(port, args.workers)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    pairs = [
        (
            ("API, first page", f"{base}/api/v1/students?limit=100", auth),
            ("bare view, first page", f"{base}/bench/bare/students?page=first", {}),
        ),
        (
            ("API, last page", f"{base}/api/v1/students?limit=100&after={cursor}", auth),
            ("bare view, last page", f"{base}/bench/bare/students?page=last", {}),
        ),
    ]
    # Rounds, each running the API and its reference back to to back (in alternating order):
    # a shared machine's speed drifts over a minute, and a ratio taken within one round
    # compares the two under the same conditions. The ratio is the median of the rounds'.
    latencies: dict[str, list[float]] = {}
    rates: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    database = settings.DATABASES["default"]["NAME"]
    try:
        for pair in pairs:
            for _, url, headers in pair:
                load(url, headers, 2, args.concurrency)  # warm up
            for round_ in range(args.rounds):
                for name, url, headers in pair if round_ % 2 == 0 else pair[::-1]:
                    before = cpu_snapshot(server.pid, database)
                    rate, lat = load(url, headers, args.seconds, args.concurrency)
                    after = cpu_snapshot(server.pid, database)
                    rates.setdefault(name, []).append(rate)
                    latencies.setdefault(name, []).extend(lat)
                    spent = cpu.setdefault(name, dict.fromkeys(after, 0.0))
                    for key in after:
                        spent[key] += after[key] - before[key]
                    counts[name] = counts.get(name, 0) + len(lat)
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(
        f"\nB3: {args.students:,} students, pages of 100, {args.concurrency} concurrent "
        f"clients, {args.rounds} rounds of {args.seconds:.0f} s per scenario, gunicorn "
        f"{args.workers} workers on 127.0.0.1"
    )
    print(
        f"{'scenario':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU ms/request: server':>25}{'postgres':>10}{'clients':>9}"
    )
    for name, lat in latencies.items():
        c = {k: v / counts[name] * 1000 for k, v in cpu[name].items()}
        print(
            f"{name:<24}{statistics.median(rates[name]):>9.0f}{p(lat, 50):>9.1f}"
            f"{p(lat, 99):>9.1f}{c['server']:>25.2f}{c['postgres']:>10.2f}{c['clients']:>9.2f}"
        )
    for api, bare in (
        ("API, first page", "bare view, first page"),
        ("API, last page", "bare view, last page"),
    ):
        ratios = [a / b for a, b in zip(rates[api], rates[bare], strict=True)]
        shown = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(rates[api], rates[bare], strict=True))
        print(
            f"\nthroughput, {api} / {bare}: median {statistics.median(ratios):.2f}x of "
            f"{', '.join(f'{r:.2f}' for r in ratios)} (target >= 0.7)\n    rounds (req/s): {shown}"
        )
    deep = p(latencies["API, last page"], 99) / p(latencies["API, first page"], 99)
    print(f"\np99, API last page / first page: {deep:.2f}x (target <= 1.2)")


if __name__ == "__main__":
    main()
