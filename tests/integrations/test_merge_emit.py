"""A run's per-row domain events (integrations/pipeline.py, ``Merger._emit``).

The rows a run wrote are found from its before-images and the rows it inserted, by index: the
events are those of every row the run stamped with its id (created when it kept no image of
the row, updated otherwise, deleted from its delete images), and finding them reads no row the
run did not write (checked on the statement's plan, run with EXPLAIN ANALYZE in the merge's
own transaction).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, timedelta

import pytest
from django.db import connection

from bxos.common import events
from bxos.schools.models import StudentDemographic
from integrations import entities as ent
from integrations.choices import RunStatus
from integrations.sample import build_roster, write_zip
from tests.integrations.csv_sync import csv_definition, run_zip

SOURCE = "sis"
ENTITIES = ["school", "academic_session", "student", "enrollment", "student_demographic"]
MARKER = "/* sync: rows this run changed */"


@pytest.fixture
def definition(north, system, media):
    return csv_definition(north, system, entities=ENTITIES)


class Recorder:
    """Domain events as subscribers get them, and the plans of the statement finding them."""

    def __init__(self) -> None:
        self.events: dict[str, set] = defaultdict(set)
        self.plans: list[dict] = []

    def __call__(self, event) -> None:
        self.events[event.model].add((event.object_id, event.type.rsplit(".", 1)[1]))

    def explain(self, execute, sql, params, many, context):
        if MARKER in sql:
            # The merge's own transaction, so its temporary tables are there; seq scans
            # priced out, so that small test tables do not hide a missing index path.
            with context["connection"].connection.cursor() as cur:
                cur.execute("SET LOCAL enable_seqscan = off")
                cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
                self.plans.append(cur.fetchone()[0][0]["Plan"])
                cur.execute("SET LOCAL enable_seqscan = on")
        return execute(sql, params, many, context)


def nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def written_by(run, spec) -> set:
    """What the events must be: every row stamped with the run's id (read here by a scan,
    which a test can afford), created unless the run kept an image of it, and the rows it
    deleted."""
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT t.id, CASE WHEN EXISTS (SELECT 1 FROM integrations_runchange c WHERE "
            f"c.run_id = %s AND c.table_name = %s AND c.object_id = t.id) THEN 'updated' "
            f"ELSE 'created' END FROM \"{spec.table}\" t WHERE t.last_run_id = %s "
            f"AND t.district_id = %s",
            [run.pk, spec.table, run.pk, run.district_id],
        )
        rows = set(cur.fetchall())
        cur.execute(
            "SELECT object_id, 'deleted' FROM integrations_runchange WHERE run_id = %s "
            "AND table_name = %s AND op = 'delete'",
            [run.pk, spec.table],
        )
        return rows | set(cur.fetchall())


def test_a_runs_row_events_are_found_by_index_and_are_the_rows_it_wrote(
    north, system, definition, tmp_path
):
    roster = build_roster(students=30)
    first = run_zip(definition, system, write_zip(tmp_path / "r1.zip", roster))
    assert first.status == RunStatus.SUCCEEDED, first.message

    # The next night: a rename, a newcomer, a student gone, a changed demographic (its period
    # is closed and a new one opened).
    roster.find("users", "s2")["givenName"] = "Renamed"
    roster.add_user(
        "s999", "student", "sch1", givenName="Nova", familyName="New", identifier="999", grades="10"
    )
    roster.rows("demographics").append({**roster.find("demographics", "s1"), "sourcedId": "s999"})
    for name, key in (("users", "sourcedId"), ("roles", "userSourcedId"),
                      ("demographics", "sourcedId"), ("enrollments", "userSourcedId")):  # fmt: skip
        roster.files[name] = [r for r in roster.rows(name) if r[key] != "s4"]
    demographic = roster.find("demographics", "s1")
    demographic["sex"] = "male" if demographic["sex"] == "female" else "female"
    # s1's period began weeks ago (a period opened today would be corrected in place).
    StudentDemographic.objects.filter(
        student__source_system=SOURCE, student__source_id="s1", student__district=north.district
    ).update(valid_from=date.today() - timedelta(days=42))

    recorder = Recorder()
    events.subscribe(events.WILDCARD, recorder, in_transaction=True)
    try:
        with connection.execute_wrapper(recorder.explain):
            run = run_zip(definition, system, write_zip(tmp_path / "r2.zip", roster))
    finally:
        events.unsubscribe(events.WILDCARD, recorder)
    assert run.status == RunStatus.SUCCEEDED, run.message

    for name in ENTITIES:
        spec = ent.spec(name)
        assert recorder.events.get(spec.model._meta.label, set()) == written_by(run, spec), name
    students = recorder.events["schools.Student"]
    assert {verb for _, verb in students} == {"created", "updated"} and len(students) == 3
    assert len(recorder.events["schools.StudentDemographic"]) == 3  # closed, opened, new
    assert "deleted" in {v for _, v in recorder.events["schools.Enrollment"]}

    # Every entity's statement ran, and none read the hub's table but by index: no row of
    # it was read and thrown away.
    assert len(recorder.plans) == len(ENTITIES)
    tables = {ent.spec(name).table for name in ENTITIES}
    for plan in recorder.plans:
        hub = [n for n in nodes(plan) if n.get("Relation Name") in tables]
        assert hub, json.dumps(plan)[:2000]
        for node in hub:
            assert node["Node Type"] != "Seq Scan", json.dumps(node)[:2000]
            assert node.get("Rows Removed by Filter", 0) == 0, json.dumps(node)[:2000]
