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
from datetime import date

os.environ.setdefault("BXOS_DB_NAME", "bxos_bench_admin")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bxos.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from bxos.common.audit import system_actor  # noqa: E402
from bxos.schools import services  # noqa: E402
from bxos.schools.admin import StudentAdmin  # noqa: E402
from bxos.schools.models import AcademicSession, District, School, Staff, Student  # noqa: E402

CODE = "benchadmin"


def ensure_data(n: int) -> District:
    call_command("migrate", verbosity=0)
    district, _ = District.objects.get_or_create(
        code=CODE, defaults={"name": "Bench District", "state_code": "TX"}
    )
    have = Student.objects.filter(district=district).count()
    if have >= n:
        return district
    actor = system_actor()
    schools = []
    for i, (kind, low, high) in enumerate(
        [("elementary", "KG", "05"), ("middle", "06", "08"), ("high", "09", "12")]
    ):
        school, _ = School.objects.get_or_create(
            district=district,
            code=f"B{i}",
            defaults={
                "name": f"Bench {kind.title()}",
                "school_type": kind,
                "grade_low": low,
                "grade_high": high,
            },
        )
        schools.append(school)
    year, _ = AcademicSession.objects.get_or_create(
        district=district,
        session_type="schoolYear",
        name="2026-27",
        school_year=2027,
        defaults={"start_date": date(2026, 8, 24), "end_date": date(2027, 6, 11)},
    )
    now = timezone.now()
    print(f"creating {n - have} students with enrollments (COPY)...")
    with connection.cursor() as c:
        with c.cursor.copy(
            "COPY schools_student (district_id, student_number, state_id, first_name, "
            "middle_name, last_name, preferred_name, birth_date, grade_level, email, is_active, "
            "created_at, updated_at, change_version, source_system, source_id) FROM STDIN"
        ) as copy:
            for i in range(have, n):
                copy.write_row(
                    (
                        district.pk,
                        f"S{i:07d}",
                        "",
                        f"First{i % 997}",
                        "",
                        f"Last{i % 50021:05d}",
                        "",
                        date(2012, 1, 1),
                        "07",
                        "",
                        True,
                        now,
                        now,
                        0,
                        "",
                        "",
                    )
                )
        c.execute(
            "INSERT INTO schools_enrollment (district_id, student_id, school_id, school_year_id, "
            "grade_level, entry_date, is_primary, exit_reason, created_at, updated_at, "
            "change_version, source_system, source_id) "
            "SELECT s.district_id, s.id, (ARRAY[%s, %s, %s])[1 + s.id %% 3], %s, s.grade_level, "
            "%s, true, '', now(), now(), 0, '', '' FROM schools_student s "
            "WHERE s.district_id = %s AND NOT EXISTS (SELECT 1 FROM schools_enrollment e "
            "WHERE e.student_id = s.id)",
            [schools[0].pk, schools[1].pk, schools[2].pk, year.pk, date(2026, 8, 24), district.pk],
        )
        c.execute("ANALYZE schools_student; ANALYZE schools_enrollment;")
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
