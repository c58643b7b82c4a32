"""Bench data shared by the benchmarks: a district of N students with enrollments, by COPY."""

from __future__ import annotations

from datetime import date

from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from bxos.schools.models import AcademicSession, District, School, Student


def ensure_students(code: str, n: int) -> tuple[District, list[School]]:
    """A district ``code`` with at least ``n`` students, each enrolled at one of three schools.

    Made once per database and kept, so repeated runs measure, not load.
    """
    call_command("migrate", verbosity=0)
    district, _ = District.objects.get_or_create(
        code=code, defaults={"name": "Bench District", "state_code": "TX"}
    )
    have = Student.objects.filter(district=district).count()
    if have >= n:
        return district, list(School.objects.filter(district=district).order_by("code"))
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
    return district, list(School.objects.filter(district=district).order_by("code"))
