"""Effective-dated demographics: a student's changed demographics close the current period and
open a new one, and the history stays (integrations/entities.py: ``student_demographic`` is
``effective_dated`` with ``current_key="student"``; schools.StudentDemographic has
``valid_from``/``valid_to`` with no overlap allowed).

What the model represents: periods cut at the day the sync sees the change (the pipeline closes
the current row as of today and opens the new one from today). What it does not: an effective
date sent by the source. Neither OneRoster's demographics nor the hub's mapping targets carry
one, so a change dated in the past by the SIS is recorded as of the sync date.

The first period is moved into the past before the change (as if synced weeks ago): the
pipeline corrects a row opened the same day in place, since a period cannot be empty.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.db import connection

from bxos.schools.models import Student, StudentDemographic
from integrations import services
from integrations.choices import RunStatus
from integrations.sample import build_roster, write_zip
from tests.integrations.csv_sync import csv_definition, run_zip

SOURCE = "sis"
ENTITIES = ["school", "academic_session", "student", "student_demographic"]


@pytest.fixture
def definition(north, system, media):
    return csv_definition(north, system, entities=ENTITIES)


def database_today() -> date:
    """The date the pipeline cuts periods at (PostgreSQL's CURRENT_DATE in the session)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_DATE")
        return cursor.fetchone()[0]


def periods(student):
    return list(
        StudentDemographic.objects.filter(student=student)
        .order_by("valid_from")
        .values_list("valid_from", "valid_to", "sex", "race_ethnicity", "source_id")
    )


def test_a_changed_demographic_closes_the_period_and_opens_a_new_one(
    north, system, definition, tmp_path
):
    roster = build_roster(students=8)
    first = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert first.status == RunStatus.SUCCEEDED, first.message
    today = database_today()
    student = Student.objects.get(district=north.district, source_system=SOURCE, source_id="s1")
    [(opened, closed, sex, race, sid)] = periods(student)
    assert (opened, closed, sex, sid) == (today, None, "F", "s1")  # n % 2: female in the sample

    # Synced six weeks ago: the current period began then.
    start = today - timedelta(days=42)
    StudentDemographic.objects.filter(student=student).update(valid_from=start)

    # The SIS records the student's sex as male now; nothing else changes.
    roster.find("demographics", "s1")["sex"] = "male"
    second = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert second.status == RunStatus.SUCCEEDED, second.message
    # Counted as a new row (the new period); the old one is closed, not changed otherwise.
    assert second.diff["student_demographic"]["created"] == 1
    assert second.diff["student_demographic"]["updated"] == 0
    assert "student_demographic: closed 1 row(s) as of today" in second.log
    assert periods(student) == [
        (start, today, "F", race, "s1"),  # the old period, closed, kept
        (today, None, "M", race, "s1"),  # the new one, current
    ]
    # Only the changed student got a new period.
    others = StudentDemographic.objects.filter(
        student__district=north.district, student__source_system=SOURCE
    ).exclude(student=student)
    assert others.count() == 7 and not others.exclude(valid_to=None).exists()
    # "As of" a date in the old period, the old values; today, the new ones.
    as_of = StudentDemographic.objects.filter(student=student, valid_from__lte=start).exclude(
        valid_to__lte=start
    )
    assert as_of.get().sex == "F"
    assert StudentDemographic.objects.get(student=student, valid_to=None).sex == "M"

    # The same file again: nothing changes, the history stays as it is.
    third = run_zip(definition, system, write_zip(tmp_path / "r3.zip", roster))
    assert third.status == RunStatus.SUCCEEDED, third.message
    assert third.diff["student_demographic"]["updated"] == 0
    assert len(periods(student)) == 2

    # A second change the same day corrects today's period in place (no empty period).
    roster.find("demographics", "s1")["hispanicOrLatinoEthnicity"] = "true"
    fourth = run_zip(definition, system, write_zip(tmp_path / "r4.zip", roster))
    assert fourth.status == RunStatus.SUCCEEDED, fourth.message
    assert periods(student) == [
        (start, today, "F", race, "s1"),
        (today, None, "M", "HI7", "s1"),
    ]

    # Rolling back the last run restores the period it corrected.
    services.run_rollback(run=fourth, actor=system, enqueue=False)
    assert periods(student) == [
        (start, today, "F", race, "s1"),
        (today, None, "M", race, "s1"),
    ]
