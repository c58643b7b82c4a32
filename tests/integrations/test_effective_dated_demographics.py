"""Effective-dated demographics: a student's changed demographics close the current period and
open a new one, and the history stays (integrations/entities.py: ``student_demographic`` is
``effective_dated`` with ``current_key="student"``; schools.StudentDemographic has
``valid_from``/``valid_to`` with no overlap allowed).

Where a period is cut: at the effective date the source sends, when the mapping fills the
``valid_from`` target (OneRoster has no such field; a SIS export adds an extension column such
as ``metadata.effectiveDate``), else at the day the sync sees the change. A date in the future
is a record error (the current row is the one in effect now); a date before the current period
began corrects that period in place (periods are not rewritten backwards).

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
    assert "student_demographic: closed 1 row(s) as of the day the change took effect" in second.log
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
    # Not even mapped: each record's fingerprint matched and its current period is as the last
    # merge left it.
    assert third.diff["student_demographic"]["kept"] == 8
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


def effective_mapping(definition, actor) -> None:
    """The connector's demographics mapping plus the effective date from an extension column
    (OneRoster 1.2 has none of its own; a SIS export adds ``metadata.effectiveDate``)."""
    integration = definition.integration
    rules, _version = services.current_rules(integration, "student_demographic")
    services.mapping_save(
        integration=integration,
        entity="student_demographic",
        rules=[
            *rules,
            {
                "target": "valid_from",
                "source": "metadata.effectiveDate",
                "transforms": [{"op": "trim"}],
            },
        ],
        actor=actor,
        note="effective dates from the SIS",
    )


def test_the_source_s_effective_date_places_the_cut(north, system, definition, tmp_path):
    effective_mapping(definition, system)
    today = database_today()
    enrolled, changed, later = (today - timedelta(days=d) for d in (60, 10, -3))
    roster = build_roster(students=8)
    for row in roster.rows("demographics"):
        row["metadata.effectiveDate"] = enrolled.isoformat()
    first = run_zip(definition, system, write_zip(tmp_path / "e1.zip", roster))
    assert first.status == RunStatus.SUCCEEDED, first.message
    s1, s2, s3 = (
        Student.objects.get(district=north.district, source_system=SOURCE, source_id=f"s{n}")
        for n in (1, 2, 3)
    )
    [(opened, closed, sex, race, _sid)] = periods(s1)
    assert (opened, closed, sex) == (enrolled, None, "F")  # not the run date

    # The SIS says s1 is male since ten days ago: the period is cut then, not today.
    roster.find("demographics", "s1").update(
        sex="male", **{"metadata.effectiveDate": changed.isoformat()}
    )
    second = run_zip(definition, system, write_zip(tmp_path / "e2.zip", roster))
    assert second.status == RunStatus.SUCCEEDED, second.message
    assert "closed 1 row(s) as of the day the change took effect" in second.log
    assert periods(s1) == [(enrolled, changed, "F", race, "s1"), (changed, None, "M", race, "s1")]
    assert second.diff["student_demographic"]["created"] == 1
    assert second.diff["student_demographic"]["updated"] == 0

    # The same file again changes nothing: the date places a cut, it is not a value compared.
    third = run_zip(definition, system, write_zip(tmp_path / "e3.zip", roster))
    assert third.status == RunStatus.SUCCEEDED, third.message
    assert third.diff["student_demographic"]["updated"] == 0
    assert third.diff["student_demographic"]["created"] == 0
    assert len(periods(s1)) == 2

    # A change dated in the future is refused (named, retried each run); the period stays.
    before_s2 = periods(s2)
    roster.find("demographics", "s2").update(
        sex="male", **{"metadata.effectiveDate": later.isoformat()}
    )
    # A change dated before the current period began corrects that period in place.
    roster.find("demographics", "s3")["sex"] = "male"
    roster.find("demographics", "s3")["metadata.effectiveDate"] = (
        enrolled - timedelta(days=30)
    ).isoformat()
    fourth = run_zip(definition, system, write_zip(tmp_path / "e4.zip", roster))
    assert fourth.status == RunStatus.PARTIAL, fourth.message
    [error] = fourth.errors.filter(entity="student_demographic")
    assert (error.source_id, error.field) == ("s2", "valid_from")
    assert error.reason == (
        f"'{later.isoformat()}' is after today: a change is synced once it has taken effect"
    )
    assert periods(s2) == before_s2
    [(opened3, closed3, sex3, _race3, _)] = periods(s3)
    assert (opened3, closed3, sex3) == (enrolled, None, "M")


def test_a_kept_record_whose_current_period_was_closed_by_hand_opens_a_new_one(
    north, system, definition, tmp_path
):
    roster = build_roster(students=8)
    first = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert first.status == RunStatus.SUCCEEDED, first.message
    again = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert again.diff["student_demographic"]["kept"] == 8
    today = database_today()
    start, ended = today - timedelta(days=42), today - timedelta(days=1)
    student = Student.objects.get(district=north.district, source_system=SOURCE, source_id="s2")
    # Someone ends the student's current period in the hub (the file still says the same).
    StudentDemographic.objects.filter(student=student).update(valid_from=start, valid_to=ended)

    third = run_zip(definition, system, write_zip(tmp_path / "r3.zip", roster))
    assert third.status == RunStatus.SUCCEEDED, third.message
    # Its period changed since the fingerprint was stored: mapped again, and, with no current
    # period to compare with, given a new one from today; the other seven stay kept.
    assert third.diff["student_demographic"]["kept"] == 7
    assert third.diff["student_demographic"]["created"] == 1
    [(old_from, old_to, *_), (new_from, new_to, *_)] = periods(student)
    assert (old_from, old_to, new_from, new_to) == (start, ended, today, None)
