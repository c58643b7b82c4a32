"""A OneRoster delta whose users.csv changes students without demographics rows for them.

OneRoster 1.2 keeps a student's birth date in demographics.csv, not users.csv; a delta zip
carries only what changed, so a student whose name changed comes without a demographics row
(or without demographics.csv at all). Such a student is one the hub has: it keeps its stored
birth date and takes the change. A student the hub does not have yet cannot be created
without a birth date: that row is a record error, as in a bulk file.
(integrations/pipeline.py: ``Stager._fall_back_to_current``.)
"""

from __future__ import annotations

from datetime import date

import pytest

from bxos.schools.models import Student
from integrations.choices import RunStatus
from integrations.models import RecordError
from integrations.sample import build_roster, write_zip
from tests.integrations.csv_sync import csv_definition, run_zip

SOURCE = "sis"
ENTITIES = ["school", "academic_session", "student", "enrollment", "student_demographic"]


@pytest.fixture
def definition(north, system, media):
    return csv_definition(north, system, entities=ENTITIES)


def student(district, source_id: str) -> Student:
    return Student.objects.get(district=district, source_system=SOURCE, source_id=source_id)


@pytest.mark.parametrize("demographics", ["no rows for them", "absent from the zip"])
def test_existing_students_keep_their_birth_date_new_ones_still_need_one(
    north, system, definition, tmp_path, demographics
):
    roster = build_roster(students=10)
    full = run_zip(definition, system, write_zip(tmp_path / "full.zip", roster))
    assert full.status == RunStatus.SUCCEEDED, full.message
    renamed, regraded = student(north.district, "s2"), student(north.district, "s3")
    born = {s.source_id: s.birth_date for s in (renamed, regraded)}
    assert all(born.values())

    role = {r["userSourcedId"]: r for r in roster.rows("roles")}
    changed = roster.find("users", "s2")
    changed["givenName"] = "Renamed"
    moved_up = roster.find("users", "s3")
    moved_up["grades"] = "10"
    delta = build_roster(students=0)
    delta.files = {"users": [changed, moved_up], "roles": [role["s2"], role["s3"]]}
    delta.add_user(
        "s900", "student", "sch1", givenName="Nova", familyName="New", identifier="900", grades="09"
    )
    modes = {"users": "delta", "roles": "delta"}
    if demographics == "no rows for them":
        delta.files["demographics"] = []
        modes["demographics"] = "delta"
    else:
        modes["demographics"] = "absent"
    run = run_zip(definition, system, write_zip(tmp_path / "delta.zip", delta, modes=modes))

    assert run.status == RunStatus.PARTIAL, run.message
    renamed.refresh_from_db()
    regraded.refresh_from_db()
    assert (renamed.first_name, renamed.birth_date) == ("Renamed", born["s2"])
    assert (regraded.grade_level, regraded.birth_date) == ("10", born["s3"])
    assert run.diff["student"]["updated"] == 2 and run.diff["student"]["created"] == 0
    # The new student alone fails, for the reason a bulk file would give.
    errors = list(RecordError.objects.filter(run=run, entity="student"))
    assert [(e.source_id, e.field, e.reason) for e in errors] == [
        ("s900", "birth_date", "birth_date is required")
    ]
    assert not Student.objects.filter(district=north.district, source_id="s900").exists()
    assert "keep the hub's current" in run.log


def test_a_delta_row_that_sends_a_value_still_changes_it(north, system, definition, tmp_path):
    roster = build_roster(students=6)
    run_zip(definition, system, write_zip(tmp_path / "full.zip", roster))
    role = {r["userSourcedId"]: r for r in roster.rows("roles")}
    demographic = roster.find("demographics", "s1")
    demographic["birthDate"] = "2010-02-03"
    delta = build_roster(students=0)
    delta.files = {
        "users": [roster.find("users", "s1"), roster.find("users", "s2")],
        "roles": [role["s1"], role["s2"]],
        "demographics": [demographic],
    }
    modes = {"users": "delta", "roles": "delta", "demographics": "delta"}
    before = student(north.district, "s2").birth_date
    run = run_zip(definition, system, write_zip(tmp_path / "delta.zip", delta, modes=modes))
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert student(north.district, "s1").birth_date == date(2010, 2, 3)
    assert student(north.district, "s2").birth_date == before
    assert run.diff["student"]["updated"] == 1 and run.diff["student"]["unchanged"] == 1


def test_a_bulk_file_has_no_fallback(north, system, definition, tmp_path):
    """A bulk file is the whole truth: an existing student without a birth date fails."""
    roster = build_roster(students=6)
    run_zip(definition, system, write_zip(tmp_path / "full.zip", roster))
    roster.files["demographics"] = [
        d for d in roster.rows("demographics") if d["sourcedId"] != "s2"
    ]
    run = run_zip(definition, system, write_zip(tmp_path / "again.zip", roster))
    errors = RecordError.objects.filter(run=run, entity="student")
    assert [(e.source_id, e.field) for e in errors] == [("s2", "birth_date")]
