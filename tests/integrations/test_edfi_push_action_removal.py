"""A hub incident's discipline action removed: the action the push sent to Ed-Fi goes too
(integrations/push.py, integrations/models.PushedAction), against the Ed-Fi test server.

Deleting an action changes no version of its incident, so the push finds the incident through
the action's tombstone and its record of the actions it sent. It deletes only those, with
``If-Match`` on the version just read: an action the source holds of its own under the same
identifier is never touched (also not when the hub's action moves to another day). A source
that changed the sent action after the last push makes the removal a conflict, settled by the
definition's policy as an incident delete is.
"""

from __future__ import annotations

from datetime import date, time
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from bxos.behavior import choices as bch
from bxos.behavior.models import IncidentAction
from bxos.common.models import AccessLogEntry, Tombstone
from bxos.common.services import model_create, model_delete, model_update
from integrations import push
from integrations.choices import ConflictPolicy, ErrorStatus, RunStatus
from integrations.models import ConflictStatus, PushedAction, RecordError, SyncConflict
from integrations.selectors import conflict_rows
from tests.factories import descriptor
from tests.integrations.peers.edfi import d
from tests.integrations.test_bidirectional import (
    SCHOOL,
    STUDENT,
    add_action,
    at_peer,
    fresh,
    hub_incident,
    make_definition,
    pushed,
    sync,
)

pytestmark = pytest.mark.usefixtures("loopback")

ACTIONS = "/ed-fi/disciplineActions"
FIXTURE_ACTIONS = 2  # the Ed-Fi test server's own: ACT-0001 and ACT-0002


def bx_actions(peer, incident) -> list[dict]:
    """The source's actions under the identifier the push uses for ``incident``."""
    return [
        a
        for a in peer.items("disciplineActions")
        if a["disciplineActionIdentifier"] == f"BX{incident.pk}"
    ]


def action_writes(peer, since: int = 0):
    return [r for r in peer.requests[since:] if ACTIONS in r.path and r.method != "GET"]


def pushed_with_action(world, actor, peer, policy=ConflictPolicy.SOURCE_WINS):
    """A definition, and a hub incident pushed with its action (dated 2026-10-03)."""
    definition = make_definition(world, actor, peer, policy)
    sync(definition, actor)
    incident = hub_incident(world, actor)
    action = add_action(incident, actor)
    run = sync(definition, actor)
    assert pushed(run)["pushed_created"] == 1, run.message
    return definition, fresh(incident), action


def own_action(peer, incident, *, on: str, student: str = STUDENT) -> dict:
    """An action the source enters itself under the identifier the push uses."""
    return peer.insert(
        "disciplineActions",
        {
            "disciplineActionIdentifier": f"BX{incident.pk}",
            "disciplineDate": on,
            "disciplines": [{"disciplineDescriptor": d("DisciplineDescriptor", "Conference")}],
            "studentReference": {"studentUniqueId": student},
            "responsibilitySchoolReference": {"schoolId": int(SCHOOL)},
            "studentDisciplineIncidentBehaviorAssociations": [],
        },
    )


def remove(action, actor) -> Tombstone:
    action_id = action.pk
    model_delete(instance=IncidentAction.objects.get(pk=action_id), actor=actor)
    return Tombstone.objects.get(table_name=IncidentAction._meta.db_table, object_id=action_id)


# --- The record of what the push sent -------------------------------------------------------------


def test_a_pushed_action_is_recorded_with_its_natural_key(north, system, peer):
    definition, incident, action = pushed_with_action(north, system, peer)
    [sent] = bx_actions(peer, incident)
    [record] = PushedAction.objects.filter(integration=definition.integration)
    assert (record.incident_id, record.hub_action_id) == (incident.pk, action.pk)
    assert record.incident_key == f"{SCHOOL}|BX{incident.pk}"
    assert record.key == {
        "identifier": f"BX{incident.pk}",
        "student": STUDENT,
        "date": "2026-10-03",
    }
    assert record.resource_id == sent["id"]

    # The natural key is unique per integration, in the database.
    twin = PushedAction(
        district_id=record.district_id,
        integration=record.integration,
        incident_id=incident.pk,
        hub_action_id=action.pk,
        incident_key=record.incident_key,
        identifier=record.identifier,
        student=record.student,
        action_date=record.action_date,
        sent_at=record.sent_at,
    )
    with pytest.raises(ValidationError, match="already recorded as sent"):
        twin.full_clean()


# --- Removal ------------------------------------------------------------------------------------


def test_a_removed_hub_action_deletes_the_action_the_push_sent(north, system, peer):
    definition, incident, action = pushed_with_action(north, system, peer)
    [sent] = bx_actions(peer, incident)
    version = fresh(incident).change_version
    tomb = remove(action, system)
    # Deleting the action did not touch its incident: the tombstone is what the push sees.
    assert fresh(incident).change_version == version

    mark = len(peer.requests)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["actions_deleted"] == 1 and pushed(run)["failed"] == 0
    assert "1 discipline action(s) deleted" in run.message
    assert f"its discipline action BX{incident.pk}|2026-10-03|{STUDENT}" in run.log
    assert bx_actions(peer, incident) == []
    [delete] = [r for r in action_writes(peer, mark) if r.method == "DELETE"]
    assert delete.path.endswith(f"/disciplineActions/{sent['id']}")
    assert delete.headers["if-match"] == f'"{sent["_etag"]}"'
    # The incident and its student link stay; the server's own actions are untouched.
    assert at_peer(peer, incident) is not None
    assert peer.find(
        "studentDisciplineIncidentBehaviorAssociations", incidentIdentifier=f"BX{incident.pk}"
    )
    assert len(peer.items("disciplineActions")) == FIXTURE_ACTIONS
    assert not PushedAction.objects.filter(integration=definition.integration).exists()
    definition.refresh_from_db()
    assert definition.push_cursor >= tomb.change_version

    # Idempotent: the next run has nothing more to do.
    mark = len(peer.requests)
    again = sync(definition, system)
    assert again.status == RunStatus.SUCCEEDED, again.message
    assert pushed(again)["actions_deleted"] == 0 and pushed(again)["failed"] == 0
    assert not action_writes(peer, mark)
    assert not RecordError.objects.filter(definition=definition).exists()


def test_a_source_owned_action_under_the_same_identifier_is_left_alone(north, system, peer):
    definition, incident, action = pushed_with_action(north, system, peer)
    # The source holds actions of its own under the same identifier: another day, and
    # another student on the same day. The push never sent them.
    other_day = own_action(peer, incident, on="2026-10-09")
    other_student = own_action(peer, incident, on="2026-10-03", student="604822")
    remove(action, system)

    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["actions_deleted"] == 1
    left = {a["id"] for a in bx_actions(peer, incident)}
    assert left == {other_day["id"], other_student["id"]}

    again = sync(definition, system)
    assert pushed(again)["actions_deleted"] == 0
    assert {a["id"] for a in bx_actions(peer, incident)} == left


def test_a_moved_action_replaces_only_the_one_the_push_sent(north, system, peer):
    definition, incident, action = pushed_with_action(north, system, peer)
    [sent] = bx_actions(peer, incident)
    theirs = own_action(peer, incident, on="2026-10-09")
    model_update(
        instance=IncidentAction.objects.get(pk=action.pk),
        actor=system,
        data={"start_date": date(2026, 10, 6)},
    )
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    dates = sorted(a["disciplineDate"] for a in bx_actions(peer, incident))
    assert dates == ["2026-10-06", "2026-10-09"]
    assert peer.find("disciplineActions", disciplineDate="2026-10-09")["id"] == theirs["id"]
    assert all(a["id"] != sent["id"] for a in bx_actions(peer, incident))
    [record] = PushedAction.objects.filter(integration=definition.integration)
    assert record.action_date == date(2026, 10, 6)


def test_the_next_action_takes_the_place_of_a_removed_first_one(north, system, peer):
    """The push sends an incident's first action. When that one is removed and another stays,
    the incident is pushed again (selected by the tombstone) with the other one."""
    definition, incident, first = pushed_with_action(north, system, peer)
    second = model_create(
        model=IncidentAction,
        actor=system,
        data={
            "district_id": incident.district_id,
            "incident": incident,
            "action": descriptor(bch.DescriptorCategory.ACTION, "detention"),
            "duration_days": Decimal("1.0"),
            "start_date": date(2026, 10, 5),
        },
    )
    sync(definition, system)  # the first one is still first: nothing changes in the source
    assert [a["disciplineDate"] for a in bx_actions(peer, incident)] == ["2026-10-03"]

    remove(first, system)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    [now] = bx_actions(peer, incident)
    assert now["disciplineDate"] == "2026-10-05", run.log
    assert now["disciplineActionLength"] == 1.0
    [record] = PushedAction.objects.filter(integration=definition.integration)
    assert record.hub_action_id == second.pk


def test_a_refused_delete_is_a_record_error_retried_next_run(north, system, peer):
    definition, incident, action = pushed_with_action(north, system, peer)
    tomb = remove(action, system)
    peer.refuse_as_referenced(ACTIONS + "/")
    run = sync(definition, system)
    assert run.status == RunStatus.PARTIAL, run.message
    assert pushed(run)["failed"] == 1 and pushed(run)["actions_deleted"] == 0
    [error] = RecordError.objects.filter(run=run)
    assert error.source_id == f"BX{incident.pk}|2026-10-03|{STUDENT}"
    assert "could not be deleted" in error.reason and "409" in error.reason
    assert len(bx_actions(peer, incident)) == 1
    assert PushedAction.objects.filter(integration=definition.integration).exists()
    definition.refresh_from_db()
    assert definition.push_cursor < tomb.change_version  # it stays above the cursor

    retry = sync(definition, system)
    assert retry.status == RunStatus.SUCCEEDED, retry.message
    assert pushed(retry)["actions_deleted"] == 1
    assert bx_actions(peer, incident) == []
    error.refresh_from_db()
    assert error.status == ErrorStatus.RETRIED

    mark = len(peer.requests)
    quiet = sync(definition, system)
    assert pushed(quiet)["actions_deleted"] == 0 and pushed(quiet)["failed"] == 0
    assert not action_writes(peer, mark)


def test_a_dismissed_removal_error_leaves_the_action_to_the_source(north, system, peer):
    """Dismissing the error of a refused delete is the admin saying "let the source keep it":
    the action becomes the source's own (its record is forgotten), so no later push deletes
    it or reports it skipped again."""
    from integrations import services

    definition, incident, action = pushed_with_action(north, system, peer)
    remove(action, system)
    peer.refuse_as_referenced(ACTIONS + "/")
    refused = sync(definition, system)
    assert pushed(refused)["failed"] == 1
    assert services.record_errors_dismiss(errors=refused.errors.all(), actor=system) == 1

    mark = len(peer.requests)
    after = sync(definition, system)
    assert after.status == RunStatus.SUCCEEDED, after.message
    assert pushed(after)["skipped"] == 1 and pushed(after)["actions_deleted"] == 0
    assert "kept in the source as its own" in after.log
    assert not action_writes(peer, mark)
    assert len(bx_actions(peer, incident)) == 1
    assert not PushedAction.objects.filter(integration=definition.integration).exists()

    # The incident changes later: the action stays the source's, untouched and unreported.
    model_update(instance=fresh(incident), actor=system, data={"occurred_at": time(15, 20)})
    mark = len(peer.requests)
    later = sync(definition, system)
    assert later.status == RunStatus.SUCCEEDED, later.message
    assert pushed(later)["skipped"] == 0 and pushed(later)["actions_deleted"] == 0
    assert not action_writes(peer, mark)
    assert len(bx_actions(peer, incident)) == 1


def test_an_action_already_gone_from_the_source_needs_nothing(north, system, peer):
    definition, incident, action = pushed_with_action(north, system, peer)
    peer.delete("disciplineActions", bx_actions(peer, incident)[0]["id"])
    remove(action, system)
    mark = len(peer.requests)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["actions_deleted"] == 0 and pushed(run)["failed"] == 0
    assert not action_writes(peer, mark)
    assert not PushedAction.objects.filter(integration=definition.integration).exists()


# --- Conflicts: the source changed the sent action after the last push ---------------------------


@pytest.mark.parametrize(
    "policy", [ConflictPolicy.SOURCE_WINS, ConflictPolicy.HUB_WINS, ConflictPolicy.NEWEST_WINS]
)
def test_a_removal_of_an_action_the_source_changed_follows_the_policy(north, system, peer, policy):
    definition, incident, action = pushed_with_action(north, system, peer, policy)
    remove(action, system)
    # The source changes the action after the hub removed it: newest wins keeps it.
    [sent] = bx_actions(peer, incident)
    peer.update("disciplineActions", sent["id"], {"disciplineActionLength": 3.0})
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["conflicts"] == 1
    assert "was removed in the hub and changed in the source" in run.log
    if policy == ConflictPolicy.HUB_WINS:
        assert bx_actions(peer, incident) == []
        assert pushed(run)["actions_deleted"] == 1
    else:
        [kept] = bx_actions(peer, incident)
        assert kept["disciplineActionLength"] == 3.0
        assert pushed(run)["source_won"] == 1 and pushed(run)["actions_deleted"] == 0
        # The source's from now on: later runs leave it alone.
        assert not PushedAction.objects.filter(integration=definition.integration).exists()
        model_update(instance=fresh(incident), actor=system, data={"narrative": "Edited."})
        later = sync(definition, system)
        assert pushed(later)["actions_deleted"] == 0
        assert len(bx_actions(peer, incident)) == 1


def test_a_removal_under_manual_review_waits_for_the_admins_decision(north, system, peer):
    definition, incident, action = pushed_with_action(north, system, peer, ConflictPolicy.MANUAL)
    remove(action, system)
    [sent] = bx_actions(peer, incident)
    peer.update("disciplineActions", sent["id"], {"disciplineActionLength": 3.0})
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    [conflict] = SyncConflict.objects.filter(definition=definition)
    assert conflict.entity == PushedAction.CONFLICT_ENTITY
    assert conflict.object_id == action.pk and conflict.status == ConflictStatus.OPEN
    assert conflict.hub["deleted"] and conflict.hub["incident_id"] == incident.pk
    assert conflict.source["disciplineActionLength"] == 3.0
    assert conflict_rows(conflict)[0].label == "Discipline action"
    assert len(bx_actions(peer, incident)) == 1

    # Still open on the next run: nothing is deleted, the source's snapshot is refreshed.
    peer.update("disciplineActions", sent["id"], {"disciplineActionLength": 4.0})
    model_update(instance=fresh(incident), actor=system, data={"narrative": "Edited."})
    waiting = sync(definition, system)
    assert pushed(waiting)["conflicts"] == 1 and pushed(waiting)["actions_deleted"] == 0
    conflict.refresh_from_db()
    assert conflict.source["disciplineActionLength"] == 4.0

    decided = push.conflict_resolve(conflict=conflict, keep="hub", actor=system)
    assert decided.status == ConflictStatus.RESOLVED_HUB
    assert bx_actions(peer, incident) == []
    assert not PushedAction.objects.filter(integration=definition.integration).exists()
    with pytest.raises(ValidationError, match="already"):
        push.conflict_resolve(conflict=conflict, keep="hub", actor=system)


def test_a_412_on_the_delete_is_decided_again_on_the_new_version(north, system, peer):
    definition, incident, action = pushed_with_action(north, system, peer)
    remove(action, system)

    def hook(server, method, resource, id):
        # Another client changes the action just before the engine's delete lands.
        if method == "DELETE" and resource == "disciplineActions":
            server.before_write.remove(hook)
            server.update(resource, id, {"disciplineActionLength": 2.0})

    peer.before_write.append(hook)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert "changed in the source while its delete was being sent" in run.log
    # Source wins: the source's new version stays, and is the source's from now on.
    assert pushed(run)["conflicts"] == 1 and pushed(run)["source_won"] == 1
    [kept] = bx_actions(peer, incident)
    assert kept["disciplineActionLength"] == 2.0
    assert not PushedAction.objects.filter(integration=definition.integration).exists()


def test_deleting_the_incident_forgets_its_sent_actions(north, system, peer):
    definition, incident, _action = pushed_with_action(north, system, peer)
    model_delete(instance=fresh(incident), actor=system)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["pushed_deleted"] == 1 and pushed(run)["actions_deleted"] == 0
    assert bx_actions(peer, incident) == []
    assert not PushedAction.objects.filter(integration=definition.integration).exists()


def test_the_admin_shows_an_action_conflict_and_keeping_the_source_leaves_it(
    client, north, system, peer
):
    definition, incident, action = pushed_with_action(north, system, peer, ConflictPolicy.MANUAL)
    remove(action, system)
    [sent] = bx_actions(peer, incident)
    peer.update("disciplineActions", sent["id"], {"disciplineActionLength": 3.0})
    sync(definition, system)
    [conflict] = SyncConflict.objects.filter(definition=definition)
    admin = north.users["district_admin"]
    client.force_login(admin)

    listed = client.get(reverse("admin:integrations_syncconflict_changelist"))
    assert listed.status_code == 200
    assert f"hub {PushedAction.CONFLICT_ENTITY} #{action.pk} (deleted)" in listed.content.decode()
    page = client.get(reverse("admin:integrations_syncconflict_change", args=[conflict.pk]))
    assert page.status_code == 200
    assert "Removed in the hub" in page.content.decode()
    # The page shows a student's incident: the access is logged.
    assert AccessLogEntry.objects.filter(
        actor=admin, object_table="behavior_incident", object_id=incident.pk
    ).exists()

    done = client.post(
        reverse("admin:integrations_syncconflict_keep_source", args=[conflict.pk]), follow=True
    )
    assert done.status_code == 200
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.RESOLVED_SOURCE and conflict.decided_by == admin
    assert len(bx_actions(peer, incident)) == 1
    assert not PushedAction.objects.filter(integration=definition.integration).exists()
