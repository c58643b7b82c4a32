"""Benchmark: the admin student list over 100,000 students.

Measures the Django admin changelist (gate, counts, current-school subquery, rendering) for a
district admin and a school admin at several page sizes and depths, against a reference in the
same run: the page's own SQL statements executed directly on a cursor (no ORM, no template).
Also reports the number of queries per page, which must not depend on the page size.

    python -m bench.admin_student_list [--students 100000] [--repeat 5]

Uses its own database (bxos_bench_admin) under the same server; the data is made once and kept.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("BXOS_DB_NAME", "bxos_bench_admin")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bxos.settings")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.data import ensure_students  # noqa: E402
from bxos.common.audit import system_actor  # noqa: E402
from bxos.schools import services  # noqa: E402
from bxos.schools.admin import StudentAdmin  # noqa: E402
from bxos.schools.models import District, Staff, Student  # noqa: E402

CODE = "benchadmin"


def ensure_data(n: int) -> District:
    district, schools = ensure_students(CODE, n)
    actor = system_actor()
    for username, position, school in (
        ("bench.district", "district_admin", None),
        ("bench.school", "principal", schools[2]),
    ):
        if Staff.objects.filter(user__username=username).exists():
            continue
        staff = Staff.objects.create(
            district=district,
            staff_number=username,
            first_name="Bench",
            last_name=username,
            position=position,
        )
        services.staff_login_create(actor=actor, staff=staff, username=username, password=None)
        if school:
            staff.refresh_from_db()
            services.staff_set_schools(actor=actor, staff=staff, schools=[school])
    return district


def measure(client: Client, url: str, repeat: int) -> tuple[float, int, list[str]]:
    client.get(url)  # warm up
    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as ctx:
            start = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - start)
        assert response.status_code == 200, response.status_code
    return statistics.median(times), len(ctx.captured_queries), [q["sql"] for q in ctx]


def bare_sql(statements: list[str], repeat: int) -> float:
    """The same SELECTs the page ran, straight on a cursor: the floor for this page."""
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with connection.cursor() as c:
            for sql in selects:
                c.execute(sql)
                c.fetchall()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    district = ensure_data(args.students)
    total = Student.objects.filter(district=district).count()
    rows = []
    for username in ("bench.district", "bench.school"):
        client = Client()
        from bxos.common.models import User

        client.force_login(User.objects.get(username=username))
        for per_page in (50, 100, 200):
            StudentAdmin.list_per_page = per_page
            for label, params in (
                ("page 1", ""),
                ("page 100", "?p=100"),
                ("search", "?q=Last00042"),
            ):
                url = f"/admin/schools/student/{params}"
                t, queries, statements = measure(client, url, args.repeat)
                ref = bare_sql(statements, args.repeat)
                rows.append((username, per_page, label, queries, t * 1000, ref * 1000, t / ref))
    print(f"\nAdmin student list, {total:,} students in the district ({args.repeat} runs, median)")
    print(
        f"{'login':<15}{'per page':>9} {'page':<10}{'queries':>8}{'admin ms':>10}"
        f"{'bare SQL ms':>12}{'ratio':>8}"
    )
    for login, per_page, label, queries, t, ref, ratio in rows:
        print(
            f"{login:<15}{per_page:>9} {label:<10}{queries:>8}{t:>10.1f}{ref:>12.1f}{ratio:>8.2f}"
        )
    by_size = {}
    for login, _per_page, label, queries, *_ in rows:
        by_size.setdefault((login, label), set()).add(queries)
    constant = all(len(v) == 1 for v in by_size.values())
    print(f"\nqueries independent of page size: {'yes' if constant else 'NO'}")


if __name__ == "__main__":
    main()
