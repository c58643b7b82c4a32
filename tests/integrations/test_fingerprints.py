"""Records unchanged since the last run are skipped before mapping (benchmark B2's re-run):
per-definition fingerprints of each source record (integrations.models.RecordFingerprint,
integrations.pipeline.Stager._keep_unchanged and Merger._store_fingerprints).

Real OneRoster CSV zips through the whole pipeline into a real PostgreSQL, as in
test_oneroster_csv_sync.py. A record is skipped ("kept") only while its text, the rows joined
to it, the mapping and the hub row the last merge left are all unchanged: each test changes
one of them and checks the hub ends as the source says.
"""

from __future__ import annotations

import time
from datetime import date

import pytest
from django.core.files import File
from django.db import connection

from bxos.common.services import model_update
from bxos.schools.models import Enrollment, SectionEnrollment, Student, StudentGuardian
from integrations import entities as ent
from integrations import pipeline, services
from integrations.choices import RunStatus
from integrations.models import RecordFingerprint, SyncRun
from integrations.sample import build_roster, write_zip
from tests.integrations.csv_sync import changed_roster, csv_definition, run_zip
from tests.integrations.test_oneroster_csv_sync import ENTITIES

SOURCE = "sis"
#: The entities whose records can be kept: all of them (lists exploded into records, such as
#: a user's orgs, per item).
FINGERPRINTED = ENTITIES


def make_definition(world, actor, **fields):
    return csv_definition(world, actor, entities=ENTITIES, source=SOURCE, **fields)


def versions(district) -> dict[str, dict[int, int]]:
    """Every synced row's change version, per entity."""
    out = {}
    for entity in ENTITIES:
        model = ent.spec(entity).model
        rows = model.objects.filter(district=district, source_system=SOURCE)
        out[entity] = dict(rows.values_list("id", "change_version"))
    return out


def fingerprints(definition) -> dict[tuple[str, str], tuple]:
    rows = RecordFingerprint.objects.filter(definition=definition)
    return {(f.entity, f.source_id): (f.fingerprint, f.hub_id, f.hub_change_version) for f in rows}


def mapped(run: SyncRun, entity: str) -> int:
    """How many of the run's records of ``entity`` were mapped (read, less those kept)."""
    return run.diff[entity]["read"] - run.diff[entity]["kept"]


def as_source_says(district) -> dict[str, list]:
    """The synced rows by source id with the values the source decides (no ids or stamps)."""
    students = Student.objects.filter(district=district, source_system=SOURCE)
    enrollments = SectionEnrollment.objects.filter(district=district, source_system=SOURCE)
    return {
        "students": sorted(
            students.values_list(
                "source_id", "first_name", "last_name", "grade_level", "birth_date", "is_active"
            )
        ),
        "section_enrollments": sorted(
            enrollments.values_list(
                "source_id", "section__source_id", "student__source_id", "begin_date"
            )
        ),
    }


def student(world, source_id: str) -> Student:
    return Student.objects.get(district=world.district, source_system=SOURCE, source_id=source_id)


def test_an_identical_rerun_keeps_every_record_and_touches_no_row(north, system, media, tmp_path):
    definition = make_definition(north, system)
    roster = build_roster(students=12)
    first = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert first.status == RunStatus.SUCCEEDED, first.message
    assert all(first.diff[e]["kept"] == 0 for e in ENTITIES)
    stored = fingerprints(definition)
    # Every record the merge left in place has a fingerprint naming its hub row as it is now.
    assert len(stored) == sum(
        first.diff[e]["created"] + first.diff[e]["updated"] for e in FINGERPRINTED
    )
    s0 = student(north, "s0")
    assert stored[("student", "s0")][1:] == (s0.pk, s0.change_version)
    before = versions(north.district)

    again = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert again.status == RunStatus.SUCCEEDED, again.message
    assert (again.created_count, again.updated_count, again.deleted_count) == (0, 0, 0)
    # The run's counts are what they were without fingerprints: kept records are unchanged.
    assert again.read_count == first.read_count
    assert again.unchanged_count == first.created_count + first.updated_count
    for entity in FINGERPRINTED:
        diff = again.diff[entity]
        assert diff["kept"] == diff["read"] == diff["unchanged"] > 0, entity
        assert mapped(again, entity) == 0
    enrollments = again.diff["section_enrollment"]["kept"]
    assert f"section_enrollment: {enrollments} record(s) skipped as unchanged" in again.log
    assert versions(north.district) == before
    assert fingerprints(definition) == stored


def test_a_rerun_with_a_few_changes_maps_and_updates_exactly_those(north, system, media, tmp_path):
    definition = make_definition(north, system)
    roster = build_roster(students=30)
    run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    before = versions(north.district)
    roster.find("users", "s3")["familyName"] = "Renamed"
    changed = [e for e in roster.rows("enrollments") if e["role"] == "student"][:2]
    for row in changed:
        row["beginDate"] = "2026-09-01"

    run = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert mapped(run, "student") == run.diff["student"]["updated"] == 1
    assert mapped(run, "section_enrollment") == run.diff["section_enrollment"]["updated"] == 2
    assert run.diff["section_enrollment"]["unchanged"] == run.diff["section_enrollment"]["kept"]
    after = versions(north.district)
    moved = {(e, pk) for e in FINGERPRINTED for pk in after[e] if after[e][pk] != before[e].get(pk)}
    renamed = student(north, "s3")
    assert renamed.last_name == "Renamed"
    ids = set(
        SectionEnrollment.objects.filter(
            source_id__in=[r["sourcedId"] for r in changed]
        ).values_list("id", flat=True)
    )
    assert all(
        e.begin_date == date(2026, 9, 1) for e in SectionEnrollment.objects.filter(id__in=ids)
    )
    assert moved == {("student", renamed.pk)} | {("section_enrollment", pk) for pk in ids}
    # The updated records' fingerprints name their new change versions: the next run keeps them.
    stored = fingerprints(definition)
    assert stored[("student", "s3")][1:] == (renamed.pk, renamed.change_version)
    third = run_zip(definition, system, write_zip(tmp_path / "r3.zip", roster))
    assert mapped(third, "student") == mapped(third, "section_enrollment") == 0


def test_a_hub_side_edit_is_overwritten_though_the_source_row_is_byte_identical(
    north, system, media, tmp_path
):
    definition = make_definition(north, system)
    roster = build_roster(students=12)
    zipped = write_zip(tmp_path / "r1.zip", roster)
    run_zip(definition, system, zipped)
    s2 = student(north, "s2")
    source_name = s2.last_name
    model_update(instance=s2, actor=north.users["district_admin"], data={"last_name": "Edited"})

    run = run_zip(definition, system, zipped)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert mapped(run, "student") == run.diff["student"]["updated"] == 1
    s2.refresh_from_db()
    assert s2.last_name == source_name
    assert fingerprints(definition)[("student", "s2")][1:] == (s2.pk, s2.change_version)


def test_a_change_only_in_a_joined_file_is_picked_up(north, system, media, tmp_path):
    definition = make_definition(north, system)
    roster = build_roster(students=12)
    run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    # users.csv is byte-identical; the student's birth date lives in demographics.csv.
    roster.find("demographics", "s1")["birthDate"] = "2011-05-05"

    run = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert mapped(run, "student") == run.diff["student"]["updated"] == 1
    assert student(north, "s1").birth_date == date(2011, 5, 5)


def test_a_new_mapping_version_maps_every_record_again(north, system, media, tmp_path):
    definition = make_definition(north, system)
    roster = build_roster(students=12)
    zipped = write_zip(tmp_path / "r1.zip", roster)
    run_zip(definition, system, zipped)
    integration = definition.integration
    rules, _version = services.current_rules(integration, "student")
    for rule in rules:
        if rule["target"] == "last_name":
            rule["transforms"] = [*rule.get("transforms", []), {"op": "case", "to": "upper"}]
    services.mapping_save(integration=integration, entity="student", rules=rules, actor=system)

    run = run_zip(definition, system, zipped)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert run.diff["student"]["kept"] == 0
    assert run.diff["student"]["updated"] == run.diff["student"]["read"] == 12
    assert all(s.last_name.isupper() for s in Student.objects.filter(source_system=SOURCE))
    # The other entities' mappings did not change: their records are still kept.
    assert mapped(run, "section_enrollment") == 0


def test_a_removed_row_is_still_removed_and_a_failed_record_is_retried_until_fixed(
    north, system, media, tmp_path
):
    definition = make_definition(north, system)
    roster = build_roster(students=12)
    roster.find("users", "s3")["grades"] = "13"  # not a grade level: s3 and its classes fail
    first = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert first.status == RunStatus.PARTIAL
    stored = fingerprints(definition)
    assert ("student", "s3") not in stored
    assert not any(e == "section_enrollment" and s.endswith("_s3") for e, s in stored)

    # Same file again, less one of s4's classes: s3 is retried (and fails again), the removed
    # enrollment is removed although every other record is kept.
    gone = next(e for e in roster.rows("enrollments") if e["userSourcedId"] == "s4")
    roster.files["enrollments"].remove(gone)
    second = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert second.status == RunStatus.PARTIAL
    assert second.diff["section_enrollment"]["deleted"] == 1
    assert not SectionEnrollment.objects.filter(source_id=gone["sourcedId"]).exists()
    assert ("section_enrollment", gone["sourcedId"]) not in fingerprints(definition)
    assert second.errors.filter(entity="student", source_id="s3").exists()
    assert mapped(second, "student") == 1  # only s3
    assert second.diff["section_enrollment"]["deleted"] == 1
    # Nothing the source still has was removed.
    assert second.diff["student"]["deleted"] == 0

    roster.find("users", "s3")["grades"] = "12"
    third = run_zip(definition, system, write_zip(tmp_path / "r3.zip", roster))
    assert third.status == RunStatus.SUCCEEDED, list(third.errors.values_list("reason"))
    assert student(north, "s3").grade_level == "12"
    assert SectionEnrollment.objects.filter(student__source_id="s3").count() == 4
    stored = fingerprints(definition)
    assert ("student", "s3") in stored


def test_rollback_then_the_same_zip_again_leaves_the_hub_as_the_source_says(
    north, system, media, tmp_path
):
    definition = make_definition(north, system)
    roster = build_roster(students=12)
    run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    changed = write_zip(tmp_path / "r2.zip", changed_roster(roster))
    second = run_zip(definition, system, changed)
    assert second.status == RunStatus.SUCCEEDED, second.message
    says = as_source_says(north.district)
    assert ("s2", "Changed") in {(s[0], s[1]) for s in says["students"]}

    rolled = services.run_rollback(run=second, actor=system, enqueue=False)
    assert rolled.status == RunStatus.ROLLED_BACK
    assert as_source_says(north.district) != says

    # The fingerprints the rolled-back run stored still say "Changed" and so on, but the hub
    # rows they name were restored (new change versions) or deleted: nothing wrongly skips.
    third = run_zip(definition, system, changed)
    assert third.status == RunStatus.SUCCEEDED, third.message
    assert as_source_says(north.district) == says
    assert third.diff["student"]["updated"] >= 1 and third.diff["student"]["created"] == 1
    assert third.diff["section_enrollment"]["deleted"] >= 4


def held_run(world, actor, tmp_path, *, edit=None):
    """A first run of 40 students, then a file without half of them (held: too many
    removals) in which s0 is renamed, and ``edit(roster)`` made if given."""
    definition = make_definition(world, actor, hold_min_rows=20)
    roster = build_roster(students=40)
    first = run_zip(definition, actor, write_zip(tmp_path / "r1.zip", roster))
    assert first.status == RunStatus.SUCCEEDED, first.message
    roster.files["users"] = [
        u
        for u in roster.rows("users")
        if not (u["sourcedId"].startswith("s") and int(u["sourcedId"][1:]) % 2)
    ]
    roster.find("users", "s0")["familyName"] = "Renamed"
    if edit is not None:
        edit(roster)
    before = fingerprints(definition)
    held = run_zip(definition, actor, write_zip(tmp_path / "r2.zip", roster))
    assert held.status == RunStatus.HELD, held.message
    return definition, roster, held, before


def test_a_held_run_stores_no_fingerprints_and_approving_it_does(north, system, media, tmp_path):
    definition, _roster, held, before = held_run(north, system, tmp_path)
    assert fingerprints(definition) == before
    # Its staging waits for the decision: the unchanged enrollments are in the kept table
    # only, none in the mapped one.
    staged = {s["entity"]: s for s in held.staging["entities"]}["section_enrollment"]
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {staged['table']}")
        assert cur.fetchone()[0] == 0
        cur.execute(f"SELECT count(*) FROM {staged['kept']}")
        assert cur.fetchone()[0] == staged["kept_rows"] > 0
    # A held preview counts kept records as unchanged, as it counted them before.
    assert held.diff["section_enrollment"]["unchanged"] == staged["kept_rows"]

    approved = services.run_approve(run=held, actor=system, enqueue=False)
    assert approved.status == RunStatus.SUCCEEDED, approved.message
    stored = fingerprints(definition)
    s0 = student(north, "s0")
    assert s0.last_name == "Renamed"
    assert stored[("student", "s0")] != before[("student", "s0")]
    assert stored[("student", "s0")][1:] == (s0.pk, s0.change_version)
    # The removed (deactivated) students are forgotten.
    assert ("student", "s1") in before and ("student", "s1") not in stored
    assert not student(north, "s1").is_active


def test_a_kept_row_edited_in_the_hub_before_the_merge_is_not_trusted(
    north, system, media, tmp_path
):
    definition, roster, held, _before = held_run(north, system, tmp_path)
    # s2's row is byte-identical, so staging kept it; then a person edits it while the run
    # waits for approval.
    s2 = student(north, "s2")
    source_name = s2.last_name
    model_update(instance=s2, actor=north.users["district_admin"], data={"last_name": "Edited"})

    approved = services.run_approve(run=held, actor=system, enqueue=False)
    assert approved.status == RunStatus.SUCCEEDED, approved.message
    assert "1 record(s) skipped as unchanged at staging were changed in the hub" in (approved.log)
    assert ("student", "s2") not in fingerprints(definition)
    s2.refresh_from_db()
    assert s2.last_name == "Edited" and s2.is_active  # left alone, not removed

    # The next run maps it again and puts the source's value back.
    run = run_zip(definition, system, write_zip(tmp_path / "r3.zip", roster))
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert mapped(run, "student") == run.diff["student"]["updated"] == 1
    s2.refresh_from_db()
    assert s2.last_name == source_name


def test_a_source_id_twice_in_a_rerun_fails_though_one_copy_is_unchanged(
    north, system, media, tmp_path
):
    definition = make_definition(north, system)
    roster = build_roster(students=12)
    run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    original = next(e for e in roster.rows("enrollments") if e["role"] == "student")
    hub_row = SectionEnrollment.objects.get(
        district=north.district, source_id=original["sourcedId"]
    )
    # The same enrollment again further down the file, with another begin date: the
    # byte-identical first copy must not be skipped, or the second would win unchallenged.
    roster.rows("enrollments").append({**original, "beginDate": "2026-10-01"})

    run = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert run.status == RunStatus.PARTIAL, run.message
    assert mapped(run, "section_enrollment") == 2
    errors = list(run.errors.filter(entity="section_enrollment"))
    assert [e.source_id for e in errors] == [original["sourcedId"]]
    assert "appears more than once; first on line" in errors[0].reason
    hub_row.refresh_from_db()
    assert hub_row.begin_date != date(2026, 10, 1)


BULK_TABLES = ("integrations_recordfingerprint", "schools_sectionenrollment")


def bulk_table_state() -> dict[str, tuple[int, int, int, float]]:
    """Per table: manual VACUUMs so far, pages, pages marked all-visible, and the row count
    the planner believes. Only VACUUM marks pages all-visible (ANALYZE reads and counts)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname, s.vacuum_count, c.relpages, c.relallvisible, c.reltuples "
            "FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid "
            "WHERE c.relname = ANY(%s) ORDER BY c.relname",
            [list(BULK_TABLES)],
        )
        return {name: tuple(rest) for name, *rest in cur.fetchall()}


def assert_bulk_merge_vacuumed(before, after, created: int) -> None:
    """A merge of ``created`` new rows left both tables vacuumed and analyzed: statistics
    that count the rows, and every page all-visible (no hint bits left for the next run's
    first read to set, nothing for autovacuum to do in the middle of that run)."""
    for table in BULK_TABLES:
        vacuums, pages, all_visible, tuples = after[table]
        assert tuples >= created, (table, after[table])
        assert vacuums > before[table][0], (table, before[table], after[table])
        assert pages > 0 and all_visible == pages, (table, after[table])


# Committed, then flushed: ANALYZE writes a table's size into pg_class in place, which a
# rollback would not undo, and the rolled-back rows' dead tuples would stay in the pages; later
# tests (test_merge_emit checks plans) would then plan for rows that are gone.
@pytest.mark.django_db(transaction=True)
def test_a_merge_that_adds_many_rows_refreshes_the_planner_statistics(
    north, system, media, tmp_path
):
    """A district's first big run leaves statistics the next run's plans can trust (see
    pipeline.analyze_written): without them the planner takes the new rows for absent. Run
    outside a transaction, as a worker runs it, it is a VACUUM (ANALYZE)."""
    definition = make_definition(north, system)
    roster = build_roster(students=300, classes_per_student=4)
    before = bulk_table_state()
    run = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert run.status == RunStatus.SUCCEEDED, run.message
    created = run.diff["section_enrollment"]["created"]
    assert created >= pipeline.ANALYZE_MIN_ROWS
    assert_bulk_merge_vacuumed(before, bulk_table_state(), created)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_real_workers_bulk_merge_ends_with_vacuum_analyze(
    north, system, media, tmp_path, monkeypatch
):
    """The same through a real Celery worker process (tests/celery_worker.py): the task runs
    outside any transaction, so the worker's merge takes the VACUUM branch."""
    from celery import current_app

    from tests.celery_worker import celery_worker

    definition = make_definition(north, system)
    zipped = write_zip(tmp_path / "r1.zip", build_roster(students=300, classes_per_student=4))
    before = bulk_table_state()
    with celery_worker() as worker:
        # run_start's on-commit hook sends the task to the default queue: this worker's own.
        monkeypatch.setitem(current_app.conf, "task_default_queue", worker.queue)
        with open(zipped, "rb") as fh:
            run = services.run_start(
                definition=definition, actor=system, upload=File(fh, zipped.name)
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and worker.alive():
            run.refresh_from_db()
            if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
                break
            time.sleep(0.3)
    assert run.status == RunStatus.SUCCEEDED, (run.status, run.message, worker.output[-2000:])
    created = run.diff["section_enrollment"]["created"]
    assert created >= pipeline.ANALYZE_MIN_ROWS
    assert_bulk_merge_vacuumed(before, bulk_table_state(), created)


RECHECK = "WITH stale AS MATERIALIZED"


def test_the_merge_checks_kept_rows_one_by_one_only_when_the_hub_changed_since_staging(
    north, system, media, tmp_path
):
    """Staging records the change version it saw; when nothing of the entity's table in the
    district was written or deleted after it, the merge trusts the kept records without
    reading each one's hub row again."""
    from django.test.utils import CaptureQueriesContext

    definition = make_definition(north, system)
    zipped = write_zip(tmp_path / "r1.zip", build_roster(students=12))
    run_zip(definition, system, zipped)
    with CaptureQueriesContext(connection) as queries:
        again = run_zip(definition, system, zipped)
    assert again.diff["section_enrollment"]["kept"] > 0
    assert not [q for q in queries.captured_queries if RECHECK in q["sql"]]


def test_a_kept_row_deleted_in_the_hub_before_the_merge_is_not_trusted(
    north, system, media, tmp_path
):
    from bxos.common.services import model_delete

    definition, _roster, held, _before = held_run(north, system, tmp_path)
    staged = {s["entity"]: s for s in held.staging["entities"]}["section_enrollment"]
    with connection.cursor() as cur:
        cur.execute(f"SELECT _hub_id FROM {staged['kept']} LIMIT 1")
        (hub_id,) = cur.fetchone()
    gone = SectionEnrollment.objects.get(pk=hub_id)
    model_delete(instance=gone, actor=north.users["district_admin"])

    approved = services.run_approve(run=held, actor=system, enqueue=False)
    assert approved.status == RunStatus.SUCCEEDED, approved.message
    assert "section_enrollment: 1 record(s) skipped as unchanged at staging" in approved.log
    assert ("section_enrollment", gone.source_id) not in fingerprints(definition)
    assert not SectionEnrollment.objects.filter(pk=hub_id).exists()


def mark(definition, entity: str) -> int | None:
    from integrations.models import FingerprintMark

    found = FingerprintMark.objects.filter(definition=definition, entity=entity).first()
    return found.change_version if found else None


def test_a_complete_read_moves_the_mark_and_a_delta_does_not(north, system, media, tmp_path):
    """Staging checks only hub rows written above the mark (FingerprintMark); a delta leaves
    most fingerprints unchecked, so only a complete read may move it."""
    definition = make_definition(north, system)
    roster = build_roster(students=8)
    run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    after_first = mark(definition, "student")
    assert after_first is not None
    second = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert second.diff["student"]["kept"] == 8
    after_second = mark(definition, "student")
    assert after_second > after_first
    assert after_second >= max(versions(north.district)["student"].values())

    # A hub edit of a record the next delta does not carry: the delta leaves its fingerprint
    # unchecked, so the mark stays below the edit and the complete file after maps it again.
    s4 = student(north, "s4")
    model_update(instance=s4, actor=north.users["district_admin"], data={"first_name": "Hub"})
    s1 = roster.find("users", "s1")
    s1["givenName"] = "Delta"
    delta = build_roster(students=0)
    delta.files = {
        "users": [s1],
        "roles": [r for r in roster.rows("roles") if r["userSourcedId"] == "s1"],
        "demographics": [],
    }
    modes = {"users": "delta", "roles": "delta", "demographics": "delta"}
    third = run_zip(definition, system, write_zip(tmp_path / "d.zip", delta, modes=modes))
    assert third.status == RunStatus.SUCCEEDED, third.message
    assert mark(definition, "student") == after_second

    fourth = run_zip(definition, system, write_zip(tmp_path / "r3.zip", roster))
    assert fourth.status == RunStatus.SUCCEEDED, fourth.message
    # (s1 is mapped again too: the delta sent it without its demographics row, so its
    # fingerprint differs from the complete file's.)
    assert mapped(fourth, "student") == 2 and fourth.diff["student"]["updated"] == 1
    s4.refresh_from_db()
    assert s4.first_name == roster.find("users", "s4")["givenName"]
    assert mark(definition, "student") > after_second


def test_a_row_deleted_by_hand_while_its_record_was_away_is_made_again(
    north, system, media, tmp_path
):
    """A section enrollment deleted in the hub while the file left it out: its fingerprint
    points at a row that is gone. Once the mark passes the deletion nothing would show it, so
    the mark's move forgets it, and the record, back in the file, is inserted again."""
    from bxos.common.services import model_delete

    definition = make_definition(north, system)
    roster = build_roster(students=8)
    zipped = write_zip(tmp_path / "r1.zip", roster)
    run_zip(definition, system, zipped)
    assert mark(definition, "section_enrollment") is not None
    gone = SectionEnrollment.objects.filter(district=north.district, source_system=SOURCE).first()
    model_delete(instance=gone, actor=north.users["district_admin"])

    without = build_roster(students=8)
    without.files["enrollments"] = [
        e for e in without.rows("enrollments") if e["sourcedId"] != gone.source_id
    ]
    away = run_zip(definition, system, write_zip(tmp_path / "r2.zip", without))
    assert away.status == RunStatus.SUCCEEDED, away.message
    assert ("section_enrollment", gone.source_id) not in fingerprints(definition)

    back = run_zip(definition, system, zipped)
    assert back.status == RunStatus.SUCCEEDED, back.message
    assert back.diff["section_enrollment"]["created"] == 1
    assert SectionEnrollment.objects.filter(
        district=north.district, source_system=SOURCE, source_id=gone.source_id
    ).exists()


def test_after_a_complete_run_staging_reads_only_the_hub_rows_written_since(
    north, system, media, tmp_path
):
    """The mark is taken after the merge's own writes: the next run's kept statement does not
    join the hub table, and it checks only what was written since (here, one edit)."""
    from django.test.utils import CaptureQueriesContext

    definition = make_definition(north, system)
    roster = build_roster(students=8)
    zipped = write_zip(tmp_path / "r1.zip", roster)
    run_zip(definition, system, zipped)
    s5 = student(north, "s5")
    model_update(instance=s5, actor=north.users["district_admin"], data={"first_name": "Hub"})

    with CaptureQueriesContext(connection) as queries:
        again = run_zip(definition, system, zipped)
    assert again.diff["student"]["kept"] == 7 and again.diff["student"]["updated"] == 1

    def kept_statement(entity: str) -> str:
        """The statement that fingerprints the staged rows and decides which are kept."""
        made = f'CREATE UNLOGGED TABLE sync_stage."r{again.pk}_{entity}_fp"'
        found = [q["sql"] for q in queries.captured_queries if made in q["sql"]]
        assert len(found) == 1
        return found[0]

    # Students: one row written since the mark, checked against its fingerprint; section
    # enrollments: none, so nothing of the hub is read at all.
    assert '"schools_student"' not in kept_statement("student")
    assert f'r{again.pk}_student_changed"' in kept_statement("student")
    assert "_changed" not in kept_statement("section_enrollment")
    assert '"schools_sectionenrollment"' not in kept_statement("section_enrollment")


def test_a_list_exploded_into_records_is_kept_item_by_item(north, system, media, tmp_path):
    """A student's orgs (school enrollments) and a guardian's students (links) explode into a
    record per item (``parent:item``): each is kept, created or removed on its own, by a bulk
    file and by a delta that sends the parent unchanged."""
    definition = make_definition(north, system)
    roster = build_roster(students=12)
    run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))

    roster.find("users", "g0")["agentSourcedIds"] = "s2"  # was s0
    role = next(r for r in roster.rows("roles") if r["sourcedId"] == "role-s4")
    roster.rows("roles").append(
        {**role, "sourcedId": "role-s4-b", "roleType": "secondary", "orgSourcedId": "sch1"}
    )
    second = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert second.status == RunStatus.SUCCEEDED, second.message
    links = second.diff["student_guardian"]
    assert (links["created"], links["deleted"], links["updated"]) == (1, 1, 0)
    assert links["kept"] == links["read"] - 1  # every link but g0's new one
    schools = second.diff["enrollment"]
    assert (schools["created"], schools["deleted"], schools["updated"]) == (1, 0, 0)
    # s4's org list changed, so both of its items are mapped again; its old one is unchanged.
    assert schools["kept"] == schools["read"] - 2
    g0 = StudentGuardian.objects.filter(district=north.district, guardian__source_id="g0")
    assert sorted(g0.values_list("student__source_id", flat=True)) == ["s2"]
    s4 = Enrollment.objects.filter(district=north.district, student__source_id="s4")
    assert sorted(s4.values_list("school__source_id", flat=True)) == ["sch0", "sch1"]

    # A delta carrying g0 unchanged: its list is complete, and its kept item is still in it.
    delta = build_roster(students=0)
    delta.files = {
        "users": [roster.find("users", "g0")],
        "roles": [r for r in roster.rows("roles") if r["userSourcedId"] == "g0"],
    }
    modes = {"users": "delta", "roles": "delta"}
    third = run_zip(definition, system, write_zip(tmp_path / "d.zip", delta, modes=modes))
    assert third.status == RunStatus.SUCCEEDED, third.message
    assert third.diff["student_guardian"]["kept"] == third.diff["student_guardian"]["read"] == 1
    assert third.diff["student_guardian"]["deleted"] == 0
    assert sorted(g0.values_list("student__source_id", flat=True)) == ["s2"]


# The statement that matches the hub's rows to the staged records one by one (Merger._removals).
MATCHED_ONE_BY_ONE = "k._kept AND k._hub_id = t.id"


def removal_matches(queries, table: str) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if MATCHED_ONE_BY_ONE in q["sql"] and f'FROM "{table}" t' in q["sql"]
    ]


def test_a_rerun_without_removals_counts_rows_instead_of_matching_them(
    north, system, media, tmp_path
):
    """When the kept records and the mapped ones add up to the hub's rows, nothing is left to
    remove (Merger._every_row_seen); otherwise the rows are matched and the missing removed."""
    from django.test.utils import CaptureQueriesContext

    definition = make_definition(north, system)
    roster = build_roster(students=12)
    run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    roster.find("users", "s3")["familyName"] = "Renamed"
    changed = next(e for e in roster.rows("enrollments") if e["userSourcedId"] == "s2")
    changed["beginDate"] = "2026-09-01"
    with CaptureQueriesContext(connection) as queries:
        run = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert run.diff["section_enrollment"]["updated"] == 1
    assert run.diff["section_enrollment"]["deleted"] == 0
    assert not removal_matches(queries, "schools_sectionenrollment")

    # One enrollment less: the counts differ, the rows are matched and that one is removed.
    gone = next(e for e in roster.rows("enrollments") if e["userSourcedId"] == "s4")
    roster.files["enrollments"].remove(gone)
    with CaptureQueriesContext(connection) as queries:
        run = run_zip(definition, system, write_zip(tmp_path / "r3.zip", roster))
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert run.diff["section_enrollment"]["deleted"] == 1
    assert removal_matches(queries, "schools_sectionenrollment")
    assert not SectionEnrollment.objects.filter(source_id=gone["sourcedId"]).exists()
    synced = SectionEnrollment.objects.filter(district=north.district, source_system=SOURCE)
    assert synced.count() == len([e for e in roster.rows("enrollments") if e["role"] == "student"])


def test_a_kept_row_deleted_by_hand_does_not_hide_a_removal(north, system, media, tmp_path):
    """A held run's file lacks one enrollment; before it is approved, an admin deletes another,
    kept, enrollment. Counted, the two would cancel out (the kept records would still add up to
    the hub's rows): the hub changed since staging, so the rows are matched one by one."""
    from bxos.common.services import model_delete

    dropped = []

    def end_one_of_s0s_classes(roster):
        dropped.append(next(e for e in roster.rows("enrollments") if e["userSourcedId"] == "s0"))
        roster.files["enrollments"].remove(dropped[0])

    _definition, _roster, held, _before = held_run(
        north, system, tmp_path, edit=end_one_of_s0s_classes
    )
    staged = {s["entity"]: s for s in held.staging["entities"]}["section_enrollment"]
    with connection.cursor() as cur:
        cur.execute(f"SELECT _hub_id FROM {staged['kept']} LIMIT 1")
        (kept_id,) = cur.fetchone()
    model_delete(
        instance=SectionEnrollment.objects.get(pk=kept_id), actor=north.users["district_admin"]
    )

    approved = services.run_approve(run=held, actor=system, enqueue=False)
    assert approved.status == RunStatus.SUCCEEDED, approved.message
    assert approved.diff["section_enrollment"]["deleted"] == 1
    assert not SectionEnrollment.objects.filter(source_id=dropped[0]["sourcedId"]).exists()


def test_index_probes_turn_hash_and_merge_joins_off_for_few_rows_and_back_after(db):
    from django.db import transaction

    def settings() -> tuple[str, str]:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin')"
            )
            return cur.fetchone()

    with transaction.atomic(), connection.cursor() as cur:
        before = settings()
        assert before == ("on", "on")
        with pipeline.index_probes(cur, rows=pipeline.HASH_MIN_ROWS - 1):
            assert settings() == ("off", "off")
        assert settings() == before
        with pipeline.index_probes(cur, rows=pipeline.HASH_MIN_ROWS):
            assert settings() == before
