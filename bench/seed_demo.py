"""Benchmark: ``manage.py seed_demo --reset`` at the default size and at ``--students N``.

Reference (the limit): psycopg COPY of the same attendance and referral rows the run produced,
as text, into UNLOGGED all-text tables with no indexes, constraints or triggers. The seed does
far more per row (indexes, foreign-key checks, the change-version trigger, WAL, plus every other
table and the generation itself), so the ratio says what that costs on this machine.

Runs in its own database (BXOS_DB_NAME, default ``bxos_bench``), migrated first. Before each
timed run the demo districts are deleted untimed, so ``--reset`` measures seeding only.

    python -m bench.seed_demo                    # default size and 100,000 students
    python -m bench.seed_demo --students 20000   # a quicker second size
"""

from __future__ import annotations

import os

# Before Django reads its settings: never touch the development database.
os.environ.setdefault("BXOS_DB_NAME", "bxos_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bxos.settings")

import argparse
import io
import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import django

# The tables the reference copies: attendance and referrals are most of the volume.
REFERENCE_TABLES = ("schools_dailyattendance", "behavior_incident")


@dataclass
class Result:
    label: str
    rows: int
    seconds: float
    peak_mb: float
    reference_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _demo_district_ids() -> list[int]:
    from bxos.schools.demo import DEMO_DISTRICTS
    from bxos.schools.models import District

    return list(District.objects.filter(code__in=DEMO_DISTRICTS).values_list("pk", flat=True))


def _seeded_rows() -> int:
    """Rows of every tenant table in the demo districts (what one seed run wrote)."""
    from django.db import connection

    from bxos.common.db import tracked_models

    ids = _demo_district_ids()
    total = 0
    with connection.cursor() as cursor:
        for model in tracked_models():
            table = connection.ops.quote_name(model._meta.db_table)
            cursor.execute(f"SELECT count(*) FROM {table} WHERE district_id = ANY(%s)", [ids])
            total += cursor.fetchone()[0]
    return total


def _time_seed(students: int) -> Result:
    from django.core.management import call_command

    from bxos.common.audit import acting_as, system_actor
    from bxos.schools import demo

    actor = system_actor()
    with acting_as(actor):
        demo.delete_demo_data(actor=actor)  # untimed: a clean start for the timed run
    started = time.perf_counter()
    call_command("seed_demo", "--reset", "--students", str(students), "--quiet",
                 stdout=io.StringIO())  # fmt: skip
    seconds = time.perf_counter() - started
    return Result(f"seed_demo --reset --students {students:,}", _seeded_rows(), seconds,
                  _peak_mb())  # fmt: skip


def _time_reference() -> Result:
    """COPY the run's attendance and referral rows into bare UNLOGGED text tables."""
    from django.db import connection, transaction

    ids = _demo_district_ids()
    rows = 0
    with tempfile.TemporaryDirectory() as tmp, connection.cursor() as cursor:
        files = {}
        # Untimed: export the rows as COPY text, the "same file" the reference loads.
        for table in REFERENCE_TABLES:
            cursor.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "ORDER BY ordinal_position",
                [table],
            )
            columns = [r[0] for r in cursor.fetchall()]
            path = os.path.join(tmp, f"{table}.copy")
            select = f"SELECT {', '.join(columns)} FROM {table} WHERE district_id = ANY(%s)"
            with (
                open(path, "wb") as out,
                cursor.cursor.copy(f"COPY ({select}) TO STDOUT", (ids,)) as cp,
            ):
                for block in cp:
                    out.write(block)
                    rows += bytes(block).count(b"\n")
            files[table] = (columns, path)
        with transaction.atomic():
            for table, (columns, _) in files.items():
                cols = ", ".join(f"{c} text" for c in columns)
                cursor.execute(f"DROP TABLE IF EXISTS bench_ref_{table}")
                cursor.execute(f"CREATE UNLOGGED TABLE bench_ref_{table} ({cols})")
        started = time.perf_counter()
        with transaction.atomic():
            for table, (_, path) in files.items():
                with (
                    open(path, "rb") as source,
                    cursor.cursor.copy(f"COPY bench_ref_{table} FROM STDIN") as cp,
                ):
                    while block := source.read(1 << 20):
                        cp.write(block)
        seconds = time.perf_counter() - started
        for table in files:
            cursor.execute(f"DROP TABLE bench_ref_{table}")
    return Result("reference: COPY attendance+incidents", rows, seconds, _peak_mb())


def _print(results: list[tuple[Result, Result]], students: list[int]) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    print()
    database = connection.settings_dict["NAME"]
    print(f"seed_demo benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, PostgreSQL {version}, database {database}")  # fmt: skip
    print(f"command: python -m bench.seed_demo --students {students[-1]}")
    print()
    header = f"{'run':<42} {'ratio':>7} {'seconds':>9} {'rows':>12} {'rows/s':>10} {'peak MB':>8}"
    print(header)
    print("-" * len(header))
    for seed, ref in results:
        ratio = seed.seconds / ref.seconds if ref.seconds else float("nan")
        print(f"{seed.label:<42} {ratio:>6.1f}x {seed.seconds:>9.1f} {seed.rows:>12,} "
              f"{seed.rate:>10,.0f} {seed.peak_mb:>8.0f}")  # fmt: skip
        print(f"  {ref.label:<40} {'1.0x':>7} {ref.seconds:>9.2f} {ref.rows:>12,} "
              f"{ref.rate:>10,.0f}")  # fmt: skip
    print()
    print(
        "ratio = seed_demo seconds / reference seconds. The seed writes every table (rows "
        "column: all of them); the reference copies only its attendance and incident rows."
    )


def main(argv: list[str] | None = None) -> None:
    """Migrate the bench database, time the two sizes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100_000, help="the large size")
    args = parser.parse_args(argv)

    django.setup()
    from django.core.management import call_command

    from bxos.schools.demo import DEFAULT_STUDENTS

    call_command("migrate", verbosity=0, interactive=False)
    sizes = [DEFAULT_STUDENTS, args.students]
    results = []
    for size in sizes:
        print(f"seeding {size:,} students...", flush=True)
        seed = _time_seed(size)
        print(f"  {seed.seconds:.1f} s; reference COPY...", flush=True)
        results.append((seed, _time_reference()))
    _print(results, sizes)


if __name__ == "__main__":
    main()
