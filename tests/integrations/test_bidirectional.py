"""Bidirectional Ed-Fi syncs: hub incidents pushed to the Ed-Fi test server under each conflict
policy (integrations/push.py), through the services as the worker runs them.

The first run of every test pulls the peer's schools and students, so hub incidents of those
students are pushable; the north world's own incidents (its schools are not from Ed-Fi) are
skipped. "Changed on both sides" is a change through the peer's own mutation and one through
the hub's write service, after the push that last agreed on the record.
"""

from __future__ import annotations

from datetime import date, time
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError

from bxos.behavior import choices as bch
from bxos.behavior import services as bsvc
from bxos.behavior.models import Incident, IncidentAction
from bxos.common.services import model_create, model_update
from bxos.schools.models import School, Student
from integrations import push, services
from integrations.choices import ConflictPolicy, Direction, ErrorStatus, RunStatus
from integrations.models import ConflictStatus, RecordError, SyncConflict, SyncDefinition
from tests.factories import descriptor
from tests.integrations.peers.edfi import KNOWN_DESCRIPTORS

pytestmark = pytest.mark.usefixtures("loopback")

SOURCE = "edfi"
SCHOOL = "255901001"  # Lincoln Elementary in the peer's fixture
STUDENT = "604823"  # Chloe Nguyen, at Lincoln


def make_definition(world, actor, peer, policy=ConflictPolicy.SOURCE_WINS) -> SyncDefinition:
    integration = services.integration_create(
        district=world.district,
        name="State Ed-Fi",
        connector_type="edfi",
        source_system=SOURCE,
        params={
            "base_url": peer.url,
            "client_key": peer.client_id,
            "client_secret": peer.client_secret,
        },
        actor=actor,
    )
    return services.definition_save(
        definition=SyncDefinition(
            integration=integration,
            name="Ed-Fi both ways",
            entities=["school", "student"],
            direction=Direction.BIDIRECTIONAL,
            conflict_policy=policy,
        ),
        actor=actor,
    )


def sync(definition, actor):
    run = services.run_start(definition=definition, actor=actor)
    run = services.run_execute(run=run, actor=actor)
    run.refresh_from_db()
    return run


def pushed(run) -> dict:
    return {k: v for k, v in run.diff["push"].items() if k != "samples"}


def hub_incident(world, actor, *, behavior="disruption", on=date(2026, 10, 2), at=time(9, 30)):
    student = Student.objects.get(district=world.district, source_system=SOURCE, source_id=STUDENT)
    school = School.objects.get(district=world.district, source_system=SOURCE, source_id=SCHOOL)
    return bsvc.incident_create(
        actor=actor,
        student=student,
        school=school,
        reported_by=world.teacher_staff,
        occurred_on=on,
        occurred_at=at,
        level=bch.IncidentLevel.MINOR,
        problem_behavior=descriptor(bch.DescriptorCategory.PROBLEM_BEHAVIOR_MINOR, behavior),
        location=descriptor(bch.DescriptorCategory.LOCATION, "classroom"),
        narrative="Private account of what happened.",
    )


def add_action(incident, actor):
    return model_create(
        model=IncidentAction,
        actor=actor,
        data={
            "district_id": incident.district_id,
            "incident": incident,
            "action": descriptor(bch.DescriptorCategory.ACTION, "detention"),
            "duration_days": Decimal("0.5"),
            "start_date": date(2026, 10, 3),
        },
    )


def at_peer(peer, incident) -> dict | None:
    return peer.find("disciplineIncidents", incidentIdentifier=f"BX{incident.pk}")


def incident_posts(peer) -> int:
    return len(peer.requests_to("/ed-fi/disciplineIncidents", "POST"))


def fresh(incident) -> Incident:
    return Incident.objects.get(pk=incident.pk)


# --- Pushing new incidents ---------------------------------------------------------------------


def test_a_hub_incident_is_pushed_with_its_action_and_gets_its_lineage(north, system, peer):
    definition = make_definition(north, system, peer)
    first = sync(definition, system)
    assert first.status == RunStatus.SUCCEEDED, first.message
    assert Student.objects.filter(district=north.district, source_system=SOURCE).count() == 10
    # The world's own incidents are at schools Ed-Fi does not know.
    assert pushed(first) == {
        "pushed_created": 0,
        "pushed_updated": 0,
        "pushed_deleted": 0,
        "actions_deleted": 0,
        "conflicts": 0,
        "source_won": 0,
        "failed": 0,
        "skipped": 3,
        "unchanged": 0,
    }
    assert "skipped 3 incident(s): its school is not from edfi" in first.log

    incident = hub_incident(north, system)
    add_action(incident, system)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["pushed_created"] == 1 and pushed(run)["skipped"] == 0
    assert "push: 1 created" in run.message
    sent = at_peer(peer, incident)
    assert sent["schoolReference"]["schoolId"] == int(SCHOOL)
    assert (sent["incidentDate"], sent["incidentTime"]) == ("2026-10-02", "09:30:00")
    assert sent["behaviors"] == [
        {"behaviorDescriptor": "uri://ed-fi.org/BehaviorDescriptor#Disruption"}
    ]
    assert "incidentDescription" not in sent  # the narrative stays in the hub
    link = peer.find(
        "studentDisciplineIncidentBehaviorAssociations", incidentIdentifier=f"BX{incident.pk}"
    )
    assert link["studentReference"] == {"studentUniqueId": STUDENT}
    action = peer.find("disciplineActions", disciplineActionIdentifier=f"BX{incident.pk}")
    assert action["disciplines"] == [
        {"disciplineDescriptor": "uri://ed-fi.org/DisciplineDescriptor#Detention"}
    ]
    assert (action["disciplineDate"], action["disciplineActionLength"]) == ("2026-10-03", 0.5)

    incident = fresh(incident)
    assert (incident.source_system, incident.source_id) == (SOURCE, f"{SCHOOL}|BX{incident.pk}")
    assert LogEntry.objects.filter(
        object_pk=str(incident.pk),
        content_type__model="incident",
        changes__has_key="source_id",
        actor=system,
    ).exists()

    # The lineage write is the hub's own bookkeeping: read once more, found equal, not sent.
    posts = incident_posts(peer)
    again = sync(definition, system)
    assert pushed(again)["unchanged"] == 1 and pushed(again)["pushed_updated"] == 0
    assert incident_posts(peer) == posts
    quiet = sync(definition, system)
    assert pushed(quiet)["unchanged"] == 0 and incident_posts(peer) == posts
    definition.refresh_from_db()
    assert definition.push_cursor >= incident.change_version

    # A hub change only is an update of the same Ed-Fi record.
    model_update(instance=incident, actor=system, data={"occurred_at": time(14, 5)})
    changed = sync(definition, system)
    assert pushed(changed)["pushed_updated"] == 1 and pushed(changed)["conflicts"] == 0
    assert at_peer(peer, incident)["incidentTime"] == "14:05:00"
    assert len(peer.items("disciplineIncidents")) == 4  # the fixture's 3 and this one


# --- Conflicts ---------------------------------------------------------------------------------


def pushed_incident(north, system, peer, policy):
    """A definition with ``policy`` and an incident both sides agree on after a push."""
    definition = make_definition(north, system, peer, policy)
    sync(definition, system)
    incident = hub_incident(north, system)
    run = sync(definition, system)
    assert pushed(run)["pushed_created"] == 1, run.message
    return definition, fresh(incident)


def change_source(peer, incident, at="11:15:00"):
    peer.update("disciplineIncidents", at_peer(peer, incident)["id"], {"incidentTime": at})


def change_hub(incident, actor, at=time(13, 0)):
    model_update(instance=fresh(incident), actor=actor, data={"occurred_at": at})


def test_source_wins_takes_the_source_values_and_leaves_the_source_alone(north, system, peer):
    definition, incident = pushed_incident(north, system, peer, ConflictPolicy.SOURCE_WINS)
    change_source(peer, incident)
    change_hub(incident, system)
    posts = incident_posts(peer)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["conflicts"] == 1 and pushed(run)["source_won"] == 1
    assert fresh(incident).occurred_at == time(11, 15)
    assert incident_posts(peer) == posts
    assert at_peer(peer, incident)["incidentTime"] == "11:15:00"
    # The hub's write was the sync's own: the next run finds both sides equal.
    again = sync(definition, system)
    assert pushed(again)["conflicts"] == 0 and incident_posts(peer) == posts


def test_hub_wins_overwrites_the_source(north, system, peer):
    definition, incident = pushed_incident(north, system, peer, ConflictPolicy.HUB_WINS)
    change_source(peer, incident)
    change_hub(incident, system)
    run = sync(definition, system)
    assert pushed(run)["conflicts"] == 1 and pushed(run)["pushed_updated"] == 1
    assert pushed(run)["source_won"] == 0
    assert at_peer(peer, incident)["incidentTime"] == "13:00:00"
    assert fresh(incident).occurred_at == time(13, 0)


@pytest.mark.parametrize("last", ["hub", "source"])
def test_newest_wins_keeps_the_side_changed_last(north, system, peer, last):
    definition, incident = pushed_incident(north, system, peer, ConflictPolicy.NEWEST_WINS)
    if last == "hub":
        change_source(peer, incident)
        change_hub(incident, system)
    else:
        change_hub(incident, system)
        change_source(peer, incident)
    run = sync(definition, system)
    assert pushed(run)["conflicts"] == 1
    expected = time(13, 0) if last == "hub" else time(11, 15)
    assert fresh(incident).occurred_at == expected
    assert at_peer(peer, incident)["incidentTime"] == expected.strftime("%H:%M:%S")
    assert pushed(run)["source_won"] == (1 if last == "source" else 0)


@pytest.mark.parametrize("keep", ["hub", "source", "dismissed"])
def test_manual_review_changes_nothing_until_an_admin_decides(north, system, peer, keep):
    definition, incident = pushed_incident(north, system, peer, ConflictPolicy.MANUAL)
    admin = north.users["district_admin"]
    change_source(peer, incident)
    change_hub(incident, system)
    posts = incident_posts(peer)
    run = sync(definition, system)
    assert pushed(run)["conflicts"] == 1 and pushed(run)["source_won"] == 0
    [conflict] = SyncConflict.objects.filter(definition=definition)
    assert conflict.status == ConflictStatus.OPEN
    assert (conflict.object_id, conflict.source_id) == (incident.pk, f"{SCHOOL}|BX{incident.pk}")
    assert (conflict.run_id, conflict.district_id) == (run.pk, north.district.pk)
    assert conflict.hub["occurred_at"] == "13:00:00" and "narrative" not in conflict.hub
    assert conflict.source["incidentTime"] == "11:15:00"
    assert fresh(incident).occurred_at == time(13, 0)
    assert incident_posts(peer) == posts
    assert at_peer(peer, incident)["incidentTime"] == "11:15:00"

    # Changed again in the hub while waiting: still nothing is sent, the snapshot follows.
    change_hub(incident, system, at=time(13, 30))
    waiting = sync(definition, system)
    assert pushed(waiting)["conflicts"] == 1 and incident_posts(peer) == posts
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.OPEN and conflict.hub["occurred_at"] == "13:30:00"
    assert SyncConflict.objects.filter(definition=definition).count() == 1

    if keep == "dismissed":
        push.conflict_dismiss(conflict=conflict, actor=admin)
    else:
        push.conflict_resolve(conflict=conflict, keep=keep, actor=admin)
    conflict.refresh_from_db()
    assert conflict.status == (keep if keep == "dismissed" else f"resolved_{keep}")
    assert conflict.decided_by == admin and conflict.decided_at is not None
    assert LogEntry.objects.filter(
        content_type__model="syncconflict", object_pk=str(conflict.pk), actor=admin
    ).exists()
    hub_time, source_time = {
        "hub": (time(13, 30), "13:30:00"),
        "source": (time(11, 15), "11:15:00"),
        "dismissed": (time(13, 30), "11:15:00"),  # both left as they were
    }[keep]
    assert fresh(incident).occurred_at == hub_time
    assert at_peer(peer, incident)["incidentTime"] == source_time
    with pytest.raises(ValidationError, match="already"):
        push.conflict_resolve(conflict=conflict, keep="hub", actor=admin)

    # The decision is the new baseline: a later hub change is a plain update, no conflict.
    settled = sync(definition, system)
    assert pushed(settled)["conflicts"] == 0
    change_hub(incident, system, at=time(15, 0))
    later = sync(definition, system)
    assert pushed(later)["conflicts"] == 0 and pushed(later)["pushed_updated"] == 1
    assert at_peer(peer, incident)["incidentTime"] == "15:00:00"


# --- Failures ----------------------------------------------------------------------------------


def test_a_refused_incident_is_a_record_error_retried_next_run(north, system, peer, monkeypatch):
    definition = make_definition(north, system, peer)
    sync(definition, system)
    refused = hub_incident(north, system, behavior="disrespect")  # unknown to this ODS
    accepted = hub_incident(north, system, on=date(2026, 10, 5))
    run = sync(definition, system)
    assert run.status == RunStatus.PARTIAL, run.message
    assert pushed(run)["failed"] == 1 and pushed(run)["pushed_created"] == 1
    assert run.failed_count == 1
    [error] = RecordError.objects.filter(run=run)
    assert (error.entity, error.field, error.source_id) == (
        "incident",
        "behaviors[0].behaviorDescriptor",
        f"{SCHOOL}|BX{refused.pk}",
    )
    assert "BehaviorDescriptor#Disrespect' does not exist" in error.reason
    assert error.status == ErrorStatus.OPEN
    assert at_peer(peer, refused) is None and at_peer(peer, accepted) is not None
    assert not fresh(refused).source_id
    definition.refresh_from_db()
    assert definition.push_cursor == fresh(refused).change_version - 1

    # Still refused: tried again, a new error; the cursor stays below it.
    again = sync(definition, system)
    assert pushed(again)["failed"] == 1 and again.status == RunStatus.PARTIAL
    error.refresh_from_db()
    assert error.status == ErrorStatus.RETRIED
    definition.refresh_from_db()
    assert definition.push_cursor == fresh(refused).change_version - 1

    # The ODS learns the descriptor: the next run sends the record without any hub change.
    behaviors = KNOWN_DESCRIPTORS["behaviorDescriptor"] | {"Disrespect"}
    monkeypatch.setitem(KNOWN_DESCRIPTORS, "behaviorDescriptor", behaviors)
    version = fresh(refused).change_version
    fixed = sync(definition, system)
    assert fixed.status == RunStatus.SUCCEEDED, fixed.message
    assert pushed(fixed)["pushed_created"] == 1 and pushed(fixed)["failed"] == 0
    assert at_peer(peer, refused)["behaviors"][0]["behaviorDescriptor"].endswith("#Disrespect")
    assert not RecordError.objects.filter(definition=definition, status=ErrorStatus.OPEN).exists()
    definition.refresh_from_db()
    assert definition.push_cursor >= version
    assert fresh(refused).source_id == f"{SCHOOL}|BX{refused.pk}"


def test_a_dismissed_push_error_is_not_retried_until_the_incident_changes(north, system, peer):
    definition = make_definition(north, system, peer)
    sync(definition, system)
    refused = hub_incident(north, system, behavior="disrespect")
    run = sync(definition, system)
    assert pushed(run)["failed"] == 1
    assert services.record_errors_dismiss(errors=run.errors.all(), actor=system) == 1

    quiet = sync(definition, system)
    assert quiet.status == RunStatus.SUCCEEDED, quiet.message
    assert pushed(quiet)["skipped"] == 1 and pushed(quiet)["failed"] == 0
    assert "an admin dismissed its push error" in quiet.log
    definition.refresh_from_db()
    assert definition.push_cursor >= fresh(refused).change_version

    model_update(instance=fresh(refused), actor=system, data={"occurred_at": time(8, 0)})
    changed = sync(definition, system)
    assert pushed(changed)["failed"] == 1  # tried again: still refused by this ODS


def test_source_down_during_the_push_keeps_the_cursor_and_the_next_run_pushes(north, system, peer):
    definition = make_definition(north, system, peer)
    sync(definition, system)
    definition.refresh_from_db()
    cursor, push_at = definition.push_cursor, definition.push_at
    incident = hub_incident(north, system)
    for _ in range(5):  # every attempt the HTTP layer makes
        peer.force(503, headers={"Retry-After": "0"}, match="/ed-fi/disciplineIncidents")
    run = sync(definition, system)
    assert run.status == RunStatus.PARTIAL
    assert "the push did not finish" in run.message
    assert "State Ed-Fi could not be reached" in run.message and "503" in run.message
    assert run.diff["student"]["unchanged"] == 10  # the pull itself went through
    definition.refresh_from_db()
    assert (definition.push_cursor, definition.push_at) == (cursor, push_at)
    assert at_peer(peer, incident) is None and not fresh(incident).source_id
    assert "push failed" in run.log

    retry = sync(definition, system)
    assert retry.status == RunStatus.SUCCEEDED, retry.message
    assert pushed(retry)["pushed_created"] == 1
    assert at_peer(peer, incident) is not None
    assert fresh(incident).source_id == f"{SCHOOL}|BX{incident.pk}"
