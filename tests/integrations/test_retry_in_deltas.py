"""Failed records are retried when the next file is a delta, which carries only what changed.

A bulk file sends every record again, so a record that failed is re-read whatever happens to
its error. A delta does not: the record is retried from what was kept with its error, and that
must include what it was joined to (its role in roles.csv, its birth date in demographics.csv)
and cover records that failed in the merge (a section enrollment of a student who failed).
"""

from __future__ import annotations

from bxos.schools.models import Enrollment, SectionEnrollment, Student
from integrations.choices import ErrorStatus, RunStatus
from integrations.models import RecordError
from integrations.sample import build_roster, write_zip
from tests.integrations.csv_sync import SOURCE, csv_definition, run_zip
from tests.integrations.test_oneroster_csv_sync import ENTITIES

DELTA = {"users": "delta", "roles": "delta", "demographics": "delta", "enrollments": "delta"}


def delta_of(roster, users, *, enrollments=()):
    """A delta zip's roster: the users' rows with their roles and demographics."""
    ids = {u["sourcedId"] for u in users}
    delta = build_roster(students=0)
    delta.files = {
        "users": list(users),
        "roles": [r for r in roster.rows("roles") if r["userSourcedId"] in ids],
        "demographics": [d for d in roster.rows("demographics") if d["sourcedId"] in ids],
        "enrollments": list(enrollments),
    }
    return delta


def open_errors(definition, source_id):
    return RecordError.objects.filter(
        definition=definition, source_id=source_id, status=ErrorStatus.OPEN
    )


def test_a_retried_record_whose_role_is_not_in_the_delta_fails_again_visibly(
    north, system, tmp_path
):
    definition = csv_definition(north, system, entities=ENTITIES)
    roster = build_roster(students=6)
    assert run_zip(definition, system, write_zip(tmp_path / "full.zip", roster)).status == (
        RunStatus.SUCCEEDED
    )
    s3 = roster.find("users", "s3")
    s3["grades"] = "13"
    first = run_zip(
        definition, system, write_zip(tmp_path / "d1.zip", delta_of(roster, [s3]), modes=DELTA)
    )
    err = first.errors.get(entity="student", source_id="s3")
    assert err.field == "grade_level"
    assert err.raw["_joined"]["roles.csv"][0]["role"] == "student"

    # The next delta is about s1 only: roles.csv has no row for s3.
    s1 = roster.find("users", "s1")
    s1["givenName"] = "Renamed"
    second = run_zip(
        definition, system, write_zip(tmp_path / "d2.zip", delta_of(roster, [s1]), modes=DELTA)
    )
    assert "student: retrying 1 record(s) that failed before" in second.log
    assert "student: 1 row(s) of roles.csv kept with the retried records' errors" in second.log
    # s3 was retried with the role it was sent with, and failed again: a new open error, not
    # a silent drop.
    again = second.errors.get(entity="student", source_id="s3")
    assert again.field == "grade_level" and "'13'" in again.reason
    assert again.file.startswith("retry of users.csv")
    assert RecordError.objects.get(pk=err.pk).status == ErrorStatus.RETRIED
    assert Student.objects.get(district=north.district, source_id="s1").first_name == "Renamed"


def test_records_that_failed_in_the_merge_are_retried_from_a_delta(north, system, tmp_path):
    """A new student fails validation; its school and section enrollments then fail in the
    merge (the student is not known). The next delta fixes the student alone: the enrollments
    come back from their errors."""
    definition = csv_definition(north, system, entities=ENTITIES)
    roster = build_roster(students=4)
    run_zip(definition, system, write_zip(tmp_path / "full.zip", roster))
    new = roster.add_user(
        "s900",
        "student",
        "sch0",
        givenName="Nova",
        familyName="Late",
        identifier="900900",
        grades="13",
        username="s900",
    )
    roster.rows("demographics").append({**roster.find("demographics", "s0"), "sourcedId": "s900"})
    enrollment = {**roster.rows("enrollments")[-1]}
    enrollment.update(
        sourcedId="e_c0_0_s900", classSourcedId="c0_0", schoolSourcedId="sch0", userSourcedId="s900"
    )
    first = run_zip(
        definition,
        system,
        write_zip(
            tmp_path / "d1.zip", delta_of(roster, [new], enrollments=[enrollment]), modes=DELTA
        ),
    )
    assert first.status == RunStatus.PARTIAL
    failed = {(e.entity, e.source_id) for e in first.errors.all()}
    assert ("student", "s900") in failed
    assert ("section_enrollment", "e_c0_0_s900") in failed
    assert ("enrollment", "s900:sch0") in failed
    merge_error = first.errors.get(entity="section_enrollment")
    assert merge_error.raw["userSourcedId"] == "s900"

    new["grades"] = "12"
    second = run_zip(
        definition, system, write_zip(tmp_path / "d2.zip", delta_of(roster, [new]), modes=DELTA)
    )
    assert second.status == RunStatus.SUCCEEDED, [e.reason for e in second.errors.all()]
    student = Student.objects.get(district=north.district, source_system=SOURCE, source_id="s900")
    assert student.grade_level == "12"
    assert SectionEnrollment.objects.filter(
        district=north.district, source_id="e_c0_0_s900", student=student
    ).exists()
    assert Enrollment.objects.filter(district=north.district, student=student).exists()
    assert not open_errors(definition, "e_c0_0_s900").exists()
    assert not open_errors(definition, "s900").exists()


def test_a_malformed_row_is_not_retried_as_an_empty_record(north, system, tmp_path):
    """A row with the wrong number of fields cannot be read, so it cannot be retried: its
    error stays open through deltas (nothing of it was synced) and is closed by the next
    complete file, which reads the whole file again."""
    definition = csv_definition(north, system, entities=["school", "academic_session"])
    roster = build_roster(students=0)
    header = ",".join(roster.rows("orgs")[0])
    good = "\n".join(",".join(f'"{v}"' for v in row.values()) for row in roster.rows("orgs"))
    broken = f'{header}\n{good}\n"schX","only two"\n'.encode()
    first = run_zip(
        definition, system, write_zip(tmp_path / "r1.zip", roster, raw_files={"orgs": broken})
    )
    err = first.errors.get(entity="school")
    assert "fields; the header has" in err.reason

    delta = build_roster(students=0)
    delta.files = {"orgs": roster.rows("orgs")[:1]}
    second = run_zip(
        definition, system, write_zip(tmp_path / "d.zip", delta, modes={"orgs": "delta"})
    )
    assert second.status == RunStatus.SUCCEEDED, [e.reason for e in second.errors.all()]
    assert "retrying" not in second.log
    assert RecordError.objects.get(pk=err.pk).status == ErrorStatus.OPEN

    third = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert third.status == RunStatus.SUCCEEDED, [e.reason for e in third.errors.all()]
    assert RecordError.objects.get(pk=err.pk).status == ErrorStatus.RETRIED


def test_an_error_stays_open_through_a_delta_without_its_file(north, system, tmp_path):
    """A delta without users.csv cannot retry a student that failed from users.csv: the error
    stays open (not closed as retried) and the next delta with users.csv retries it."""
    definition = csv_definition(north, system, entities=ENTITIES)
    roster = build_roster(students=4)
    run_zip(definition, system, write_zip(tmp_path / "full.zip", roster))
    s2 = roster.find("users", "s2")
    s2["grades"] = "13"
    first = run_zip(
        definition, system, write_zip(tmp_path / "d1.zip", delta_of(roster, [s2]), modes=DELTA)
    )
    err = first.errors.get(entity="student", source_id="s2")

    only_enrollments = build_roster(students=0)
    only_enrollments.files = {"enrollments": roster.rows("enrollments")[:1]}
    second = run_zip(
        definition,
        system,
        write_zip(tmp_path / "d2.zip", only_enrollments, modes={"enrollments": "delta"}),
    )
    assert second.status == RunStatus.SUCCEEDED, [e.reason for e in second.errors.all()]
    assert RecordError.objects.get(pk=err.pk).status == ErrorStatus.OPEN

    s1 = roster.find("users", "s1")
    third = run_zip(
        definition, system, write_zip(tmp_path / "d3.zip", delta_of(roster, [s1]), modes=DELTA)
    )
    assert "student: retrying 1 record(s) that failed before" in third.log
    assert third.errors.filter(entity="student", source_id="s2", field="grade_level").exists()
    assert RecordError.objects.get(pk=err.pk).status == ErrorStatus.RETRIED


def test_a_complete_file_does_not_bring_back_a_failed_record_it_left_out(north, system, tmp_path):
    """A bulk file holds every record the source has: a record that failed before and is not
    in it was removed in the source. It is not retried (that would create it), and its
    errors are closed."""
    definition = csv_definition(north, system, entities=ENTITIES)
    roster = build_roster(students=4)
    run_zip(definition, system, write_zip(tmp_path / "full.zip", roster))
    with_new = build_roster(students=4)
    with_new.add_user(
        "s900",
        "student",
        "sch0",
        givenName="Nova",
        familyName="Gone",
        identifier="900900",
        grades="13",
        username="s900",
    )
    with_new.rows("demographics").append(
        {**with_new.find("demographics", "s0"), "sourcedId": "s900"}
    )
    first = run_zip(definition, system, write_zip(tmp_path / "r1.zip", with_new))
    assert first.errors.filter(entity="student", source_id="s900").exists()

    # The source deleted s900: the next complete file does not have it.
    second = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert second.status == RunStatus.SUCCEEDED, [e.reason for e in second.errors.all()]
    assert "retrying" not in second.log
    assert not Student.objects.filter(district=north.district, source_id="s900").exists()
    assert not open_errors(definition, "s900").exists()


def test_re_running_failed_records_of_an_upload_integration_needs_no_zip(north, system, tmp_path):
    """The admin's "Re-run failed records" on an uploaded-zip integration: no new zip, so
    only the failed records are retried (with the role and demographics they came with),
    here after the admin fixed the mapping that refused them; nothing else changes."""
    from integrations import services
    from tests.integrations.csv_sync import snapshot

    definition = csv_definition(north, system, entities=ENTITIES)
    roster = build_roster(students=4)
    roster.add_user(
        "s900", "student", "sch0", givenName="Nova", familyName="Late", identifier="900900",
        grades="13", username="s900",
    )  # fmt: skip
    roster.rows("demographics").append({**roster.find("demographics", "s0"), "sourcedId": "s900"})
    enrollment = {**roster.rows("enrollments")[-1]}
    enrollment.update(
        sourcedId="e_c0_0_s900", classSourcedId="c0_0", schoolSourcedId="sch0", userSourcedId="s900"
    )
    roster.rows("enrollments").append(enrollment)
    first = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert first.status == RunStatus.PARTIAL
    assert {("student", "s900"), ("section_enrollment", "e_c0_0_s900")} <= {
        (e.entity, e.source_id) for e in first.errors.all()
    }
    before = snapshot(north.district)

    # The district's SIS uses 13 for a fifth year; the admin maps it to 12 (the student's
    # grade, and its school enrollment's).
    integration = definition.integration
    for entity in ("student", "enrollment"):
        rules, _version = services.current_rules(integration, entity)
        for rule in rules:
            if rule["target"] == "grade_level":
                rule["transforms"] = [
                    {"op": "replace", "pattern": "^13$", "replacement": "12"},
                    *rule.get("transforms", []),
                ]
        services.mapping_save(integration=integration, entity=entity, rules=rules, actor=system)

    retry = services.run_execute(
        run=services.run_rerun_failed(run=first, actor=system), actor=system
    )
    assert retry.status == RunStatus.SUCCEEDED, (
        retry.message,
        [e.reason for e in retry.errors.all()],
    )
    assert "re-run of failed records: no new file is read" in retry.log
    student = Student.objects.get(district=north.district, source_id="s900")
    assert student.grade_level == "12"
    assert SectionEnrollment.objects.filter(source_id="e_c0_0_s900", student=student).exists()
    assert not open_errors(definition, "s900").exists()
    assert not open_errors(definition, "e_c0_0_s900").exists()
    # Nothing but the retried records changed.
    after = snapshot(north.district)
    added = {model: sorted(set(after[model]) - set(before[model])) for model in after}
    assert {model: len(rows) for model, rows in added.items()} == {
        "Student": 1, "Enrollment": 1, "SectionEnrollment": 1, "StudentDemographic": 1,
    }  # fmt: skip
    assert all(set(before[model]) <= set(after[model]) for model in before)
