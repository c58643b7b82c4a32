"""OneRoster 1.2 CSV zips through the whole pipeline, into a real PostgreSQL.

Each test builds a zip with integrations.sample, starts a run through the services (as the
admin's "Run now" does) and executes it in this process (the worker's task body), then checks
the hub's rows, the run's counts and its record errors.
"""

from __future__ import annotations

import re

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bxos.common.models import Tombstone
from bxos.schools.models import Enrollment, SectionEnrollment, Student, StudentDemographic
from integrations import services, tasks
from integrations.choices import ErrorStatus, ReviewStatus, RunStatus
from integrations.models import IdentityReview, RecordError, SyncDefinition
from integrations.sample import HEADERS, build_roster, write_zip
from tests.integrations.csv_sync import changed_roster, run_zip, snapshot

SOURCE = "sis"
ENTITIES = [
    "school",
    "academic_session",
    "staff",
    "student",
    "guardian",
    "student_guardian",
    "enrollment",
    "student_demographic",
    "section",
    "section_enrollment",
]


@pytest.fixture
def integration(north, system, media):
    return services.integration_create(
        district=north.district,
        name="North SIS (CSV)",
        connector_type="oneroster_csv",
        source_system=SOURCE,
        params={"source": "upload", "encoding": "auto"},
        actor=system,
    )


@pytest.fixture
def definition(integration, system):
    definition = SyncDefinition(
        integration=integration, name="Nightly roster", entities=ENTITIES, hold_min_rows=20
    )
    return services.definition_save(definition=definition, actor=system)


def error_summary(run):
    return sorted({(e.entity, e.field, e.reason[:100]) for e in run.errors.all()})


def students(district):
    return Student.objects.filter(district=district, source_system=SOURCE)


def test_a_full_zip_creates_the_roster_and_a_rerun_changes_nothing(
    north, south, system, definition, tmp_path
):
    roster = build_roster(students=30)
    run = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert run.status == RunStatus.SUCCEEDED, (run.message, error_summary(run))
    assert students(north.district).count() == 30
    assert not Student.objects.filter(district=south.district, source_system=SOURCE).exists()
    s0 = students(north.district).get(source_id="s0")
    assert s0.student_number == "100000"
    assert s0.grade_level == "09"
    assert str(s0.birth_date) == "2012-01-01"
    demo = StudentDemographic.objects.get(student=s0, valid_to=None)
    assert demo.race_ethnicity == "HI7"  # n % 7 == 0 is Hispanic in the sample
    assert Enrollment.objects.filter(student=s0, school__source_id="sch0").exists()
    assert SectionEnrollment.objects.filter(student=s0).count() == 4
    assert s0.guardians.count() == 1
    assert run.created_count > 30 and run.failed_count == 0
    assert run.diff["student"]["created"] == 30
    # The admin's audit trail names the actor for the batch.
    assert LogEntry.objects.filter(
        actor=system, object_repr__contains=f"sync run #{run.pk}"
    ).exists()
    versions = dict(students(north.district).values_list("id", "change_version"))

    again = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert again.status == RunStatus.SUCCEEDED, again.message
    assert again.updated_count == 0 and again.created_count == 0 and again.deleted_count == 0
    # Everything the first run wrote (created, or adopted: the district's own school year)
    # is unchanged now.
    assert again.unchanged_count == run.created_count + run.updated_count
    # Unchanged rows are not touched: their change versions stay.
    assert dict(students(north.district).values_list("id", "change_version")) == versions


def test_changed_rows_are_updated_and_only_they_get_new_versions(
    system, definition, tmp_path, north
):
    roster = build_roster(students=30)
    run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    before = dict(students(north.district).values_list("source_id", "change_version"))
    roster.find("users", "s3")["familyName"] = "Renamed"
    roster.find("users", "s4")["grades"] = "12"
    run = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert run.diff["student"]["updated"] == 2
    assert run.updated_count >= 2
    after = dict(students(north.district).values_list("source_id", "change_version"))
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"s3", "s4"}
    assert students(north.district).get(source_id="s3").last_name == "Renamed"
    sample = run.diff["student"]["samples"]["update"]
    assert {"last_name": [sample[0]["changes"]["last_name"][0], "Renamed"]} or sample


def test_a_malformed_row_is_a_record_error_and_the_others_go_in(
    system, definition, tmp_path, north
):
    roster = build_roster(students=25)
    header = ",".join(HEADERS["demographics"])
    good = [
        ",".join(r.get(h, "") for h in HEADERS["demographics"]) for r in roster.rows("demographics")
    ]
    broken = [*good[:5], "s5,active,2026-08-01,2011-06-06,male,too,few", *good[6:]]
    bad_date = good[7].replace(roster.rows("demographics")[7]["birthDate"], "2011-02-30")
    broken[7] = bad_date
    raw = ("\n".join([header, *broken]) + "\n").encode()
    run = run_zip(
        definition, system, write_zip(tmp_path / "r.zip", roster, raw_files={"demographics": raw})
    )
    assert run.status == RunStatus.PARTIAL, run.message
    errors = list(run.errors.values_list("entity", "file", "line", "field", "reason"))
    assert (
        "student_demographic",
        "demographics.csv",
        7,
        "",
        "the row has 7 fields; the header has 16",
    ) in errors
    bad_date = [e for e in errors if "2011-02-30" in e[4]]
    assert bad_date and bad_date[0][3] == "birth_date", errors
    # s5 (no demographics row: no birth date) and s7 (an impossible date) fail; the others go in.
    assert set(students(north.district).values_list("source_id", flat=True)) == {
        f"s{n}" for n in range(25) if n not in (5, 7)
    }
    assert (
        StudentDemographic.objects.filter(
            student__district=north.district, student__source_system=SOURCE
        ).count()
        == 23
    )


def test_a_missing_required_column_fails_the_run_before_any_write(
    system, definition, tmp_path, north
):
    roster = build_roster(students=10)
    cols = [h for h in HEADERS["users"] if h != "givenName"]
    lines = [",".join(cols)] + [",".join(r.get(h, "") for h in cols) for r in roster.rows("users")]
    raw = ("\n".join(lines) + "\n").encode()
    run = run_zip(
        definition, system, write_zip(tmp_path / "r.zip", roster, raw_files={"users": raw})
    )
    assert run.status == RunStatus.FAILED
    assert "users.csv" in run.message and "givenName" in run.message
    assert not students(north.district).exists()
    assert not Enrollment.objects.filter(district=north.district, source_system=SOURCE).exists()


def test_an_invalid_manifest_names_the_problem(system, definition, tmp_path, north):
    roster = build_roster(students=5)
    path = write_zip(tmp_path / "r.zip", roster, modes={"users": "sometimes"})
    run = run_zip(definition, system, path)
    assert run.status == RunStatus.FAILED
    assert "file.users" in run.message and "bulk, delta or absent" in run.message

    listed = write_zip(tmp_path / "r2.zip", build_roster(students=5), modes={"courses": "bulk"})
    run = run_zip(definition, system, listed)
    assert run.status == RunStatus.FAILED
    assert "courses.csv" in run.message


def test_windows_1252_is_detected_and_undecodable_bytes_are_refused(
    system, definition, tmp_path, north
):
    roster = build_roster(students=6)
    roster.find("users", "s1")["familyName"] = "Peña-Müller"
    run = run_zip(definition, system, write_zip(tmp_path / "r.zip", roster, encoding="cp1252"))
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert students(north.district).get(source_id="s1").last_name == "Peña-Müller"
    assert "cp1252" in run.log

    garbage = b"sourcedId,status\n" + bytes(range(128, 256)) * 40 + b"\n"
    run = run_zip(
        definition,
        system,
        write_zip(tmp_path / "r2.zip", build_roster(students=6), raw_files={"orgs": garbage}),
    )
    assert run.status in (RunStatus.FAILED,), run.message
    assert "orgs.csv" in run.message


def test_a_mass_removal_is_held_then_approved_or_discarded(system, definition, tmp_path, north):
    roster = build_roster(students=40)
    run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    # Rollover gone wrong: half the students vanish from the file.
    roster.files["users"] = [
        u
        for u in roster.rows("users")
        if not (u["sourcedId"].startswith("s") and int(u["sourcedId"][1:]) % 2)
    ]
    held = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert held.status == RunStatus.HELD, held.message
    assert "Students" in held.message and "remove 20 of 40" in held.message
    assert held.diff["student"]["deleted"] == 20
    assert students(north.district).filter(is_active=True).count() == 40  # nothing applied
    cursor = SyncDefinition.objects.get(pk=definition.pk).cursor

    discarded = services.run_discard(run=held, actor=system)
    assert discarded.status == RunStatus.DISCARDED
    assert students(north.district).filter(is_active=True).count() == 40
    assert SyncDefinition.objects.get(pk=definition.pk).cursor == cursor

    held = run_zip(definition, system, write_zip(tmp_path / "r3.zip", roster))
    assert held.status == RunStatus.HELD
    # Approving queues the work for a worker; the task body applies it in the approver's name.
    approved = services.run_approve(run=held, actor=system)
    assert approved.status == RunStatus.RUNNING and approved.decided_by == system
    assert students(north.district).filter(is_active=True).count() == 40  # nothing applied yet
    with pytest.raises(ValidationError, match="Only a held run"):
        services.run_approve(run=held, actor=system)
    assert tasks.apply_approved_run(held.pk) in (RunStatus.SUCCEEDED, RunStatus.PARTIAL)
    approved.refresh_from_db()
    assert approved.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL), approved.message
    assert students(north.district).filter(is_active=True).count() == 20
    # The same message delivered again applies nothing twice.
    assert "not an approved run waiting" in tasks.apply_approved_run(held.pk)
    assert students(north.district).filter(is_active=True).count() == 20
    # People are deactivated, never deleted (their behavior history stays).
    assert students(north.district).count() == 40


def test_rollback_restores_exactly(system, definition, tmp_path, north):
    roster = build_roster(students=30)
    run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    before = snapshot(north.district, source=None)
    run = run_zip(definition, system, write_zip(tmp_path / "r2.zip", changed_roster(roster)))
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert run.created_count >= 1 and run.updated_count >= 1 and run.deleted_count >= 4
    assert snapshot(north.district, source=None) != before
    tombstones = Tombstone.objects.filter(table_name="schools_sectionenrollment").count()
    assert tombstones >= 4

    rolled = services.run_rollback(run=run, actor=system, enqueue=False)
    assert rolled.status == RunStatus.ROLLED_BACK
    assert snapshot(north.district, source=None) == before


def test_failed_records_are_retried_on_the_next_run(system, definition, tmp_path, north):
    roster = build_roster(students=10)
    roster.find("users", "s3")["grades"] = "13"  # not a grade level: the student fails
    run = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert run.status == RunStatus.PARTIAL
    err = run.errors.get(entity="student")
    assert err.field == "grade_level" and "'13'" in err.reason and err.file == "users.csv"
    assert err.line is not None and err.raw["sourcedId"] == "s3"
    # Its enrollments failed too: the student is not known yet.
    assert run.errors.filter(entity="section_enrollment", source_id__endswith="_s3").exists()

    roster.find("users", "s3")["grades"] = "12"
    again = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert again.status == RunStatus.SUCCEEDED, list(again.errors.values_list("reason", flat=True))
    assert students(north.district).filter(source_id="s3", grade_level="12").exists()
    assert RecordError.objects.get(pk=err.pk).status == ErrorStatus.RETRIED


def test_an_ambiguous_identity_goes_to_review_and_a_merge_is_reversible(
    system, definition, tmp_path, north
):
    roster = build_roster(students=4)
    existing = north.a1  # a student the district typed in by hand
    user = roster.find("users", "s2")
    user.update(givenName=existing.first_name, familyName=existing.last_name, identifier="777")
    roster.find("demographics", "s2")["birthDate"] = existing.birth_date.isoformat()
    run = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert run.skipped_count >= 1
    review = IdentityReview.objects.get(integration=definition.integration, source_id="s2")
    assert review.candidate_id == existing.pk and review.status == ReviewStatus.OPEN
    assert not students(north.district).filter(source_id="s2").exists()

    services.identity_merge(review=review, actor=system)
    run2 = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert run2.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL), run2.message
    existing.refresh_from_db()
    assert existing.source_id == "s2" and existing.student_number == "777"

    review.refresh_from_db()
    services.identity_unmerge(review=review, actor=system)
    existing.refresh_from_db()
    assert existing.source_id == "" and existing.source_system != SOURCE


@pytest.mark.django_db(transaction=True)
def test_the_console_command_runs_a_sync_with_a_progress_bar(north, system, media, tmp_path):
    import io

    from django.core.management import call_command

    integration = services.integration_create(
        district=north.district,
        name="Console",
        connector_type="oneroster_csv",
        source_system=SOURCE,
        params={"source": "upload"},
        actor=system,
    )
    definition = services.definition_save(
        definition=SyncDefinition(integration=integration, name="Console", entities=ENTITIES),
        actor=system,
    )
    path = write_zip(tmp_path / "console.zip", build_roster(students=12))
    out, err = io.StringIO(), io.StringIO()
    call_command("sync_run", definition.pk, "--zip", str(path), stdout=out, stderr=err)
    assert "succeeded" in out.getvalue(), out.getvalue()
    assert students(north.district).count() == 12
    assert "run #" in err.getvalue()  # tqdm writes the bar to stderr


def test_a_delta_removes_the_links_a_parent_row_no_longer_lists(
    system, definition, tmp_path, north
):
    """A delta users.csv carries whole rows: a guardian's agentSourcedIds is its complete list
    of students, so a student dropped from it loses the link (a guardian must not keep reaching
    a student the SIS unlinked), while guardians absent from the delta keep theirs."""
    from bxos.schools.models import StudentGuardian

    roster = build_roster(students=6)
    run_zip(definition, system, write_zip(tmp_path / "full.zip", roster))

    def links() -> set[str]:
        return set(
            StudentGuardian.objects.filter(
                district=north.district, source_system=SOURCE
            ).values_list("source_id", flat=True)
        )

    role = {r["userSourcedId"]: r for r in roster.rows("roles")}
    guardians = [r for r in roster.rows("users") if role[r["sourcedId"]]["role"] == "parent"]
    moved, cleared, untouched = guardians[:3]
    was_moved, was_cleared = moved["agentSourcedIds"], cleared["agentSourcedIds"]
    other = next(
        r["sourcedId"]
        for r in roster.rows("users")
        if role[r["sourcedId"]]["role"] == "student" and r["sourcedId"] != was_moved
    )
    before = links()
    assert {f"{moved['sourcedId']}:{was_moved}", f"{cleared['sourcedId']}:{was_cleared}"} <= before

    moved["agentSourcedIds"] = other
    cleared["agentSourcedIds"] = ""
    delta = build_roster(students=0)
    # The changed rows, with their roles (1.2 keeps a user's role in roles.csv).
    # (demographics.csv with no rows: the users' mapping reads birthDate through it.)
    delta.files = {
        "users": [moved, cleared],
        "roles": [role[moved["sourcedId"]], role[cleared["sourcedId"]]],
        "demographics": [],
    }
    modes = {"users": "delta", "roles": "delta", "demographics": "delta"}
    run = run_zip(definition, system, write_zip(tmp_path / "delta.zip", delta, modes=modes))
    assert run.status == RunStatus.SUCCEEDED, run.message
    after = links()
    assert after == (
        before - {f"{moved['sourcedId']}:{was_moved}", f"{cleared['sourcedId']}:{was_cleared}"}
        | {f"{moved['sourcedId']}:{other}"}
    )
    assert f"{untouched['sourcedId']}:{untouched['agentSourcedIds']}" in after
    assert run.diff["student_guardian"]["deleted"] == 2
    # The removals are tombstoned, so vendors' change feeds see them.
    assert Tombstone.objects.filter(
        table_name=StudentGuardian._meta.db_table, source_id=f"{cleared['sourcedId']}:{was_cleared}"
    ).exists()


def test_a_held_delta_that_drops_a_guardian_link_removes_it_once_approved(
    system, definition, tmp_path, north
):
    """A held run is applied later from what staging stored: the table of the parents an
    incremental read carried must survive the wait, or approving it would keep the links the
    guardians' complete lists no longer have (while the preview said they would go)."""
    from bxos.schools.models import StudentGuardian

    roster = build_roster(students=6)
    run_zip(definition, system, write_zip(tmp_path / "full.zip", roster))
    # Hold on any removal from the first row on.
    SyncDefinition.objects.filter(pk=definition.pk).update(hold_min_rows=1, hold_removal_pct=0)
    definition.refresh_from_db()

    def links() -> set[str]:
        return set(
            StudentGuardian.objects.filter(
                district=north.district, source_system=SOURCE
            ).values_list("source_id", flat=True)
        )

    role = {r["userSourcedId"]: r for r in roster.rows("roles")}
    cleared = next(r for r in roster.rows("users") if role[r["sourcedId"]]["role"] == "parent")
    dropped = f"{cleared['sourcedId']}:{cleared['agentSourcedIds']}"
    before = links()
    assert dropped in before
    cleared["agentSourcedIds"] = ""
    delta = build_roster(students=0)
    delta.files = {"users": [cleared], "roles": [role[cleared["sourcedId"]]], "demographics": []}
    modes = {"users": "delta", "roles": "delta", "demographics": "delta"}

    held = run_zip(definition, system, write_zip(tmp_path / "delta.zip", delta, modes=modes))
    assert held.status == RunStatus.HELD, held.message
    assert held.diff["student_guardian"]["deleted"] == 1
    assert links() == before  # nothing applied while held

    approved = services.run_approve(run=held, actor=system, enqueue=False)
    assert approved.status == RunStatus.SUCCEEDED, approved.message
    assert links() == before - {dropped}
    assert approved.diff["student_guardian"]["deleted"] == 1


def test_a_retried_record_is_staged_for_its_own_entity_only(system, definition, tmp_path, north):
    """users.csv is loaded once and read by five entities; a student retried from an earlier
    run goes into the student's own copy, not into what the others read."""
    roster = build_roster(students=10)
    roster.find("users", "s3")["grades"] = "13"
    first = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert first.errors.filter(entity="student", source_id="s3").exists()
    # A delta of users.csv that leaves s3 out (a delta only retries: a bulk file has every
    # record the source has, so a record it leaves out was removed).
    roster.files["users"] = [r for r in roster.rows("users") if r["sourcedId"] != "s3"]
    modes = {"users": "delta", "roles": "delta", "demographics": "delta"}

    with CaptureQueriesContext(connection) as queries:
        again = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster, modes=modes))
    assert "student: retrying 1 record(s) that failed before" in again.log
    assert again.errors.filter(entity="student", source_id="s3", field="grade_level").exists()
    # Each entity's retries (the student's, its school enrollment's; its demographics, which
    # failed in the merge for want of the student) went into a table of that entity's own,
    # never into the file's table the other entities read. The section enrollments' file is
    # bulk: nothing is retried into it.
    targets = {
        re.match(r"\s*INSERT INTO (\S+)", q["sql"]).group(1)
        for q in queries.captured_queries
        if "'retry of '" in q["sql"]
    }
    assert targets == {
        f'sync_stage."r{again.pk}_{entity}_raw"'
        for entity in ("student", "enrollment", "student_demographic")
    }
