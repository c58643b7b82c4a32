"""Syncs from the OneRoster REST and Ed-Fi test servers on 127.0.0.1, through the whole engine.

The servers are written for the tests and speak the protocols (tests/integrations/peers/);
the runs go through the services as the worker does. These check what only a whole run shows:
an incremental pull while the source changes misses nothing, deletes and key changes reach the
hub, rejected credentials open the circuit, a 429 is waited out.
"""

from __future__ import annotations

import pytest

from bxos.common.models import Tombstone
from bxos.schools.models import DailyAttendance, SectionEnrollment, Student
from integrations import services
from integrations.choices import CircuitState, RunStatus, SyncMode
from integrations.models import Integration, SyncDefinition
from tests.integrations.peers.edfi import EdFiPeer
from tests.integrations.peers.oneroster_rest import OneRosterPeer

REST_ENTITIES = [
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


def summary(run):
    errors = sorted({(e.entity, e.field, e.source_id, e.reason[:150]) for e in run.errors.all()})
    return run.message, errors[:8]


def execute(definition, actor, **kwargs):
    run = services.run_start(definition=definition, actor=actor, **kwargs)
    return services.run_execute(run=run, actor=actor)


@pytest.fixture
def oneroster(loopback):
    with OneRosterPeer(page_size_cap=4) as peer:
        yield peer


def rest_definition(world, actor, peer, *, secret=None, mode=SyncMode.INCREMENTAL):
    integration = services.integration_create(
        district=world.district,
        name="Riverside SIS (REST)",
        connector_type="oneroster_rest",
        source_system="riverside",
        params={
            "base_url": peer.base_url,
            "token_url": peer.token_url,
            "client_id": peer.client_id,
            "client_secret": secret or peer.client_secret,
            "page_size": 4,
        },
        actor=actor,
    )
    return services.definition_save(
        definition=SyncDefinition(
            integration=integration, name="Roster", entities=REST_ENTITIES, mode=mode
        ),
        actor=actor,
    )


def hub_students(world):
    return {
        s.source_id: s
        for s in Student.objects.filter(district=world.district, source_system="riverside")
    }


def test_an_incremental_pull_while_the_source_changes_misses_nothing(north, system, oneroster):
    definition = rest_definition(north, system, oneroster)
    roster = oneroster.roster
    students = sorted(u.sourced_id for u in roster.users_with_role("student"))
    changed = {"first": students[0], "last": students[-1]}

    # While the first run pages through the students (4 a page), the SIS renames one student
    # already read and one not yet read.
    def rename_during_paging(request) -> None:
        if request.path.endswith("/students") and int(request.query.get("offset", 0)) > 0:
            if not getattr(rename_during_paging, "done", False):
                rename_during_paging.done = True
                roster.change("users", changed["first"], family_name="Earlier-Changed")
                roster.change("users", changed["last"], family_name="Later-Changed")

    oneroster.hooks.append(rename_during_paging)
    first = execute(definition, system)
    assert getattr(rename_during_paging, "done", False), "the peer never reached page two"
    # The student renamed after the window's upper bound was fixed is not read by this run
    # (it is newer than the bound); its unchanged demographics and enrollments, read later in
    # the same run, fail for now and are retried.
    hub = hub_students(north)
    assert set(hub) | {changed["last"]} == set(students)
    reasons = [e.reason for e in first.errors.all()]
    assert all(repr(changed["last"]) in reason for reason in reasons), summary(first)
    cursor = SyncDefinition.objects.get(pk=definition.pk).cursor
    assert cursor, "a committed incremental run leaves its cursor"

    # The next run reads what changed after the first run's upper bound: both renames.
    roster.clock.advance(60)
    second = execute(definition, system)
    assert second.status == RunStatus.SUCCEEDED, summary(second)
    hub = hub_students(north)
    assert set(hub) == set(students)
    assert hub[changed["first"]].last_name == "Earlier-Changed"
    assert hub[changed["last"]].last_name == "Later-Changed"
    # Only what changed was read: the renamed student read before is updated, the one the
    # first run could not see is created, and its retried records now go in.
    assert (second.diff["student"]["updated"], second.diff["student"]["created"]) == (1, 1)
    assert second.read_count < first.read_count
    # Those retried records are the failed section enrollments of the student the first run
    # could not see: unchanged in the source, so this incremental pull does not read them
    # again; they come back from their errors.
    failed_enrollments = {e.source_id for e in first.errors.filter(entity="section_enrollment")}
    assert failed_enrollments
    assert failed_enrollments <= set(
        SectionEnrollment.objects.filter(
            district=north.district, student__source_id=changed["last"]
        ).values_list("source_id", flat=True)
    )

    # A third run with nothing new changes nothing.
    roster.clock.advance(60)
    third = execute(definition, system)
    assert third.status == RunStatus.SUCCEEDED
    assert third.updated_count == 0 and third.created_count == 0


def test_deletes_propagate_from_a_oneroster_server(north, system, oneroster):
    definition = rest_definition(north, system, oneroster)
    roster = oneroster.roster
    first = execute(definition, system)
    assert first.status == RunStatus.SUCCEEDED, summary(first)
    enrollment = next(
        e for e in roster.records("enrollments") if e.role == "student" and e.status == "active"
    )
    student = next(iter(sorted(u.sourced_id for u in roster.users_with_role("student"))))
    roster.mark_deleted("enrollments", enrollment.sourced_id)
    roster.mark_deleted("users", student)
    roster.clock.advance(60)
    before = Tombstone.objects.filter(table_name="schools_sectionenrollment").count()
    run = execute(definition, system)
    assert run.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL), summary(run)
    assert not SectionEnrollment.objects.filter(
        district=north.district, source_id=enrollment.sourced_id
    ).exists()
    assert Tombstone.objects.filter(table_name="schools_sectionenrollment").count() > before
    # A person is deactivated, never deleted: their behavior history stays.
    assert hub_students(north)[student].is_active is False


def test_rejected_credentials_fail_the_run_and_open_the_circuit(north, system, oneroster, settings):
    settings.INTEGRATIONS = {**settings.INTEGRATIONS, "CIRCUIT_FAILURES": 3}
    definition = rest_definition(north, system, oneroster, secret="wrong")
    for attempt in range(1, 4):
        run = execute(definition, system)
        assert run.status == RunStatus.FAILED
        assert "credentials rejected" in run.message
        integration = Integration.objects.get(pk=definition.integration_id)
        assert integration.consecutive_failures == attempt
    assert integration.circuit_state == CircuitState.OPEN
    asked = len(oneroster.requests)
    refused = execute(definition, system)
    assert refused.status == RunStatus.FAILED and "circuit open" in refused.message
    assert len(oneroster.requests) == asked, "an open circuit must not call the source"
    assert not Student.objects.filter(district=north.district, source_system="riverside").exists()

    # After the cool-down one trial run goes through; its success closes the circuit.
    Integration.objects.filter(pk=integration.pk).update(
        circuit_opened_at=integration.circuit_opened_at - __import__("datetime").timedelta(hours=1)
    )
    services.integration_update(
        integration=Integration.objects.get(pk=integration.pk),
        actor=system,
        data={},
        params={"client_secret": oneroster.client_secret},
    )
    trial = execute(definition, system)
    assert trial.status == RunStatus.SUCCEEDED, summary(trial)
    integration.refresh_from_db()
    assert integration.circuit_state == CircuitState.CLOSED
    assert integration.consecutive_failures == 0 and integration.last_success_at


def test_a_429_is_waited_out(north, system, oneroster):
    definition = rest_definition(north, system, oneroster)
    oneroster.force(429, count=2, headers={"Retry-After": "1"})
    run = execute(definition, system)
    assert run.status == RunStatus.SUCCEEDED, summary(run)
    assert "Retry-After" in run.log or "429" in run.log


# --- Ed-Fi ---------------------------------------------------------------------------------------

EDFI_ENTITIES = [
    "school",
    "academic_session",
    "staff",
    "student",
    "enrollment",
    "section",
    "section_enrollment",
    "daily_attendance",
    "grade",
]


@pytest.fixture
def edfi(loopback):
    with EdFiPeer() as peer:
        yield peer


def edfi_definition(world, actor, peer):
    integration = services.integration_create(
        district=world.district,
        name="State Ed-Fi ODS",
        connector_type="edfi",
        source_system="edfi",
        params={
            "base_url": peer.url,
            "client_key": peer.client_id,
            "client_secret": peer.client_secret,
            "page_size": 3,
        },
        actor=actor,
    )
    return services.definition_save(
        definition=SyncDefinition(
            integration=integration,
            name="Ed-Fi change queries",
            entities=EDFI_ENTITIES,
            mode=SyncMode.INCREMENTAL,
        ),
        actor=actor,
    )


def test_edfi_change_queries_bring_updates_deletes_and_key_changes(north, south, system, edfi):
    definition = edfi_definition(north, system, edfi)
    first = execute(definition, system)
    assert first.status == RunStatus.SUCCEEDED, summary(first)
    students = {
        s.source_id: s
        for s in Student.objects.filter(district=north.district, source_system="edfi")
    }
    assert len(students) == len(edfi.items("students"))
    assert not Student.objects.filter(district=south.district, source_system="edfi").exists()
    assert DailyAttendance.objects.filter(district=north.district, source_system="edfi").exists()
    assert int(SyncDefinition.objects.get(pk=definition.pk).cursor) == edfi.newest_change_version

    items = edfi.items("students")
    renamed, rekeyed = items[0], items[1]
    edfi.update("students", renamed["id"], {"lastSurname": "Updated"})
    edfi.update("students", rekeyed["id"], {"studentUniqueId": rekeyed["studentUniqueId"] + "X"})
    attendance = edfi.items("studentSchoolAttendanceEvents")[0]
    edfi.delete("studentSchoolAttendanceEvents", attendance["id"])

    second = execute(definition, system)
    assert second.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL), summary(second)
    hub = {
        s.source_id: s
        for s in Student.objects.filter(district=north.district, source_system="edfi")
    }
    assert hub[renamed["studentUniqueId"]].last_name == "Updated"
    # The key change moved the same hub row to the new key: no duplicate person.
    assert rekeyed["studentUniqueId"] + "X" in hub
    assert rekeyed["studentUniqueId"] not in hub
    assert hub[rekeyed["studentUniqueId"] + "X"].pk == students[rekeyed["studentUniqueId"]].pk
    assert DailyAttendance.objects.filter(
        district=north.district, source_system="edfi"
    ).count() == (len(edfi.items("studentSchoolAttendanceEvents")))
    assert second.read_count < first.read_count
