"""Admin lists run a number of queries that does not depend on the page size (no N+1)."""

from __future__ import annotations

from datetime import date

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from bxos.behavior.models import Incident
from bxos.schools.admin import StudentAdmin
from bxos.schools.models import Enrollment, Student


@pytest.fixture
def many_students(north):
    students = Student.objects.bulk_create(
        Student(
            district=north.district,
            student_number=f"Q{i:05d}",
            first_name=f"F{i}",
            last_name=f"L{i:05d}",
            birth_date=date(2010, 1, 1),
            grade_level="10",
        )
        for i in range(240)
    )
    Enrollment.objects.bulk_create(
        Enrollment(
            district=north.district,
            student=s,
            school=north.school_a,
            school_year=north.year,
            grade_level="10",
            entry_date=date(2026, 8, 24),
        )
        for s in students
    )
    return students


def _count(client, url, params):
    client.get(url, params)  # warm caches (content types, sessions) out of the measurement
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, params)
    assert response.status_code == 200
    return len(ctx.captured_queries), response


@pytest.mark.parametrize("role", ["district_admin", "school_admin"])
def test_student_list_queries_do_not_grow_with_page_size(
    role, north, many_students, client, monkeypatch
):
    client.force_login(north.users[role])
    url = reverse("admin:schools_student_changelist")
    monkeypatch.setattr(StudentAdmin, "list_per_page", 10)
    small, r_small = _count(client, url, {})
    monkeypatch.setattr(StudentAdmin, "list_per_page", 200)
    large, r_large = _count(client, url, {})
    assert len(r_small.context["cl"].result_list) == 10
    assert len(r_large.context["cl"].result_list) == 200
    assert small == large, (small, large)
    assert large <= 14  # session, user, groups, perms, counts, page, filter choices
    # The current school column is filled from the subquery, not per row.
    assert "Alpha High" in r_large.content.decode()


def test_incident_list_queries_do_not_grow(north, many_students, client, monkeypatch, system):
    from tests.factories import descriptor

    incidents = [
        Incident(
            district=north.district,
            student=s,
            school=north.school_a,
            reported_by=north.teacher_staff,
            occurred_on=date(2026, 10, 1),
            occurred_at="10:00",
            level="minor",
            problem_behavior=descriptor("behavior_minor", "disruption"),
            location=descriptor("location", "classroom"),
        )
        for s in many_students
    ]
    Incident.objects.bulk_create(incidents)
    client.force_login(north.users["district_admin"])
    url = reverse("admin:behavior_incident_changelist")
    from bxos.behavior.admin import IncidentAdmin

    monkeypatch.setattr(IncidentAdmin, "list_per_page", 10)
    small, _ = _count(client, url, {})
    monkeypatch.setattr(IncidentAdmin, "list_per_page", 200)
    large, _ = _count(client, url, {})
    assert small == large, (small, large)
