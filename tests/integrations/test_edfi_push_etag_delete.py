"""The Ed-Fi push's optimistic writes and deletes, against the Ed-Fi test server.

- An update of an incident the source has is a PUT of that item with ``If-Match`` carrying the
  ETag of the version the engine read; the source's own fields the hub does not hold stay.
- A 412 (the source changed the incident between the engine's read and its write) writes
  nothing and is settled under the sync's conflict policy.
- A hub incident delete (its tombstone) deletes the discipline incident in the source, with its
  student behavior association and discipline action, in the order the ODS/API allows.

The server behaves as the ODS/API does for these (tests/integrations/peers/edfi.py): ETags on
every item, 412 ``optimistic-lock-failed`` for a stale ``If-Match``, 409
``dependent-item-exists`` for a delete of a referenced item.
"""

from __future__ import annotations

import json
from datetime import time

import pytest

from bxos.behavior.models import Incident
from bxos.common.models import Tombstone
from bxos.common.services import model_delete
from integrations.choices import ConflictPolicy, ErrorStatus, RunStatus
from integrations.connectors.edfi import EdFiConnector
from integrations.models import ConflictStatus, RecordError, SyncConflict, SyncDefinition
from tests.integrations.peers.edfi import d
from tests.integrations.test_bidirectional import (
    SCHOOL,
    STUDENT,
    add_action,
    at_peer,
    change_hub,
    change_source,
    fresh,
    hub_incident,
    make_definition,
    pushed,
    sync,
)

pytestmark = pytest.mark.usefixtures("loopback")

INCIDENTS = "/ed-fi/disciplineIncidents"


def writes(peer, method: str, fragment: str = INCIDENTS + "/"):
    return [r for r in peer.requests if r.method == method and fragment in r.path]


def pushed_incident(world, actor, peer, policy=ConflictPolicy.SOURCE_WINS, *, action=False):
    definition = make_definition(world, actor, peer, policy)
    sync(definition, actor)
    incident = hub_incident(world, actor)
    if action:
        add_action(incident, actor)
    run = sync(definition, actor)
    assert pushed(run)["pushed_created"] == 1, run.message
    return definition, fresh(incident)


# --- The test server speaks the ODS/API's concurrency rules ---------------------------------------


def test_the_server_refuses_a_stale_if_match_and_a_delete_of_a_referenced_item(peer):
    connector = EdFiConnector(params={"base_url": peer.url, "client_key": "edfi-key",
                                      "client_secret": "edfi-secret"})  # fmt: skip
    http = connector._http
    item = peer.find("disciplineIncidents", incidentIdentifier="INC-0002")
    path = f"/data/v3/ed-fi/disciplineIncidents/{item['id']}"
    body = {k: v for k, v in item.items() if k not in ("id", "_etag", "_lastModifiedDate")}
    stale = http.send_json("PUT", path, {**body, "incidentTime": "07:00:00"},
                           headers={"If-Match": '"123"'})  # fmt: skip
    assert stale.status_code == 412
    assert stale.json()["type"] == "urn:ed-fi:api:optimistic-lock-failed"
    assert peer.find("disciplineIncidents", incidentIdentifier="INC-0002")["incidentTime"] == (
        "13:05:00"
    )
    fine = http.send_json("PUT", path, {**body, "incidentTime": "07:00:00"},
                          headers={"If-Match": f'"{item["_etag"]}"'})  # fmt: skip
    assert fine.status_code == 204 and fine.headers["etag"] != f'"{item["_etag"]}"'
    # Its behavior association still refers to it: the ODS refuses the delete.
    refused = http.send_json("DELETE", path, None)
    assert refused.status_code == 409
    assert refused.json()["type"] == "urn:ed-fi:api:conflict:dependent-item-exists"
    assert peer.find("disciplineIncidents", incidentIdentifier="INC-0002") is not None
    connector.close()


# --- Updates: If-Match ----------------------------------------------------------------------------


def test_an_update_is_a_put_with_if_match_keeping_the_sources_own_fields(north, system, peer):
    definition, incident = pushed_incident(north, system, peer)
    # The source adds what the hub does not hold; only the source changed: nothing is sent.
    item = at_peer(peer, incident)
    location = d("IncidentLocationDescriptor", "Hallway")
    peer.update(
        "disciplineIncidents",
        item["id"],
        {"incidentLocationDescriptor": location, "reporterName": "M. Garcia"},
    )
    quiet = sync(definition, system)
    assert pushed(quiet)["pushed_updated"] == 0 and not writes(peer, "PUT")
    etag = at_peer(peer, incident)["_etag"]

    change_hub(incident, system, at=time(14, 5))
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["pushed_updated"] == 1 and pushed(run)["conflicts"] == 0
    [put] = writes(peer, "PUT")
    assert put.path.endswith(f"/disciplineIncidents/{item['id']}")
    assert put.headers["if-match"] == f'"{etag}"'
    sent = json.loads(put.body)
    assert "id" not in sent and "_etag" not in sent
    after = at_peer(peer, incident)
    assert after["incidentTime"] == "14:05:00"
    assert after["incidentLocationDescriptor"] == location
    assert after["reporterName"] == "M. Garcia"
    assert "incidentDescription" not in after  # the hub's narrative is still never sent
    # No second incident: the update went to the same item.
    assert len([i for i in peer.items("disciplineIncidents") if i["id"] == item["id"]]) == 1
    assert len(peer.items("disciplineIncidents")) == 4


def change_before_our_put(peer, *times):
    """Another client changes the incident just before each of the engine's next PUTs lands
    (one time of day per PUT)."""
    pending = list(times or ["07:45:00"])

    def hook(server, method, resource, id):
        if method == "PUT" and resource == "disciplineIncidents":
            at = pending.pop(0)
            if not pending:
                server.before_write.remove(hook)
            server.update(resource, id, {"incidentTime": at})

    peer.before_write.append(hook)


@pytest.mark.parametrize(
    "policy, hub_time, source_time",
    [
        (ConflictPolicy.HUB_WINS, time(13, 0), "13:00:00"),
        (ConflictPolicy.SOURCE_WINS, time(7, 45), "07:45:00"),
        (ConflictPolicy.NEWEST_WINS, time(7, 45), "07:45:00"),  # the source changed last
        (ConflictPolicy.MANUAL, time(13, 0), "07:45:00"),
    ],
)
def test_a_412_is_a_conflict_settled_by_the_policy(
    north, system, peer, policy, hub_time, source_time
):
    definition, incident = pushed_incident(north, system, peer, policy)
    change_hub(incident, system, at=time(13, 0))
    change_before_our_put(peer)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    puts = writes(peer, "PUT")
    assert puts, "the engine sent its update"
    first = puts[0]
    assert "412" not in run.message
    assert "changed in the source while the hub's version was being sent" in run.log
    assert pushed(run)["conflicts"] == 1 and pushed(run)["failed"] == 0
    assert fresh(incident).occurred_at == hub_time
    assert at_peer(peer, incident)["incidentTime"] == source_time
    if policy == ConflictPolicy.HUB_WINS:
        # Sent again over the version that refused the first write.
        assert len(puts) == 2 and puts[1].headers["if-match"] != first.headers["if-match"]
        assert pushed(run)["pushed_updated"] == 1
    else:
        assert len(puts) == 1 and pushed(run)["pushed_updated"] == 0
    conflicts = SyncConflict.objects.filter(definition=definition)
    if policy == ConflictPolicy.MANUAL:
        [conflict] = conflicts
        assert conflict.status == ConflictStatus.OPEN
        assert conflict.source["incidentTime"] == "07:45:00"
        assert conflict.hub["occurred_at"] == "13:00:00"
    else:
        assert not conflicts.exists()


def test_a_second_412_in_the_same_run_is_a_failure_retried_next_run(north, system, peer):
    definition, incident = pushed_incident(north, system, peer, ConflictPolicy.HUB_WINS)
    change_hub(incident, system, at=time(13, 0))
    change_before_our_put(peer, "07:45:00", "07:50:00")
    run = sync(definition, system)
    assert run.status == RunStatus.PARTIAL
    assert pushed(run)["failed"] == 1
    [error] = RecordError.objects.filter(run=run)
    assert "changed the record again while it was being sent" in error.reason
    assert at_peer(peer, incident)["incidentTime"] == "07:50:00"
    definition.refresh_from_db()
    assert definition.push_cursor < fresh(incident).change_version

    retry = sync(definition, system)
    assert retry.status == RunStatus.SUCCEEDED, retry.message
    assert at_peer(peer, incident)["incidentTime"] == "13:00:00"
    error.refresh_from_db()
    assert error.status == ErrorStatus.RETRIED


# --- Deletes --------------------------------------------------------------------------------------


def test_a_hub_delete_deletes_the_incident_its_association_and_action(north, system, peer):
    definition, incident = pushed_incident(north, system, peer, action=True)
    key = f"BX{incident.pk}"
    assert peer.find("disciplineActions", disciplineActionIdentifier=key) is not None
    etag = at_peer(peer, incident)["_etag"]
    incident_id = incident.pk
    model_delete(instance=incident, actor=system)
    incident.pk = incident_id  # at_peer finds it by its identifier
    tomb = Tombstone.objects.get(table_name=Incident._meta.db_table, object_id=incident_id)
    assert (tomb.source_system, tomb.source_id) == ("edfi", f"{SCHOOL}|{key}")

    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["pushed_deleted"] == 1 and pushed(run)["failed"] == 0
    assert "1 deleted" in run.message
    assert at_peer(peer, incident) is None
    assert peer.find("disciplineActions", disciplineActionIdentifier=key) is None
    assert (
        peer.find("studentDisciplineIncidentBehaviorAssociations", incidentIdentifier=key) is None
    )
    deletes = [r for r in peer.requests if r.method == "DELETE"]
    assert [r.path.split("/")[-2] for r in deletes] == [
        "disciplineActions",
        "studentDisciplineIncidentBehaviorAssociations",
        "disciplineIncidents",
    ]
    assert deletes[-1].headers["if-match"] == f'"{etag}"'
    # The fixture's incidents and the student's other records are untouched.
    assert len(peer.items("disciplineIncidents")) == 3
    assert peer.find("students", studentUniqueId=STUDENT) is not None
    definition.refresh_from_db()
    assert definition.push_cursor >= tomb.change_version

    again = sync(definition, system)
    assert pushed(again)["pushed_deleted"] == 0 and not writes(peer, "DELETE", "/ed-fi/")[3:]


def test_an_action_shared_with_another_incident_only_loses_the_deleted_ones_link(peer):
    """An Ed-Fi discipline action may answer several incidents: deleting one of them keeps the
    action for the other."""
    first = peer.find(
        "studentDisciplineIncidentBehaviorAssociations", incidentIdentifier="INC-0001"
    )
    peer.insert(
        "disciplineIncidents",
        {
            "incidentIdentifier": "INC-0009",
            "schoolReference": {"schoolId": 255901107},
            "incidentDate": "2026-09-15",
            "behaviors": [{"behaviorDescriptor": first["behaviorDescriptor"]}],
        },
    )
    peer.insert(
        "studentDisciplineIncidentBehaviorAssociations",
        {
            "behaviorDescriptor": first["behaviorDescriptor"],
            "disciplineIncidentReference": {
                "incidentIdentifier": "INC-0009",
                "schoolId": 255901107,
            },
            "studentReference": {"studentUniqueId": "604826"},
        },
    )
    action = peer.find("disciplineActions", disciplineActionIdentifier="ACT-0001")
    links = action["studentDisciplineIncidentBehaviorAssociations"]
    other = {
        "studentDisciplineIncidentBehaviorAssociationReference": {
            **links[0]["studentDisciplineIncidentBehaviorAssociationReference"],
            "incidentIdentifier": "INC-0009",
        }
    }
    peer.update(
        "disciplineActions",
        action["id"],
        {"studentDisciplineIncidentBehaviorAssociations": [*links, other]},
    )
    connector = EdFiConnector(params={"base_url": peer.url, "client_key": "edfi-key",
                                      "client_secret": "edfi-secret"})  # fmt: skip
    result = connector.delete_incident("255901107|INC-0009")
    assert (result.action, result.message) == ("deleted", "")
    kept = peer.find("disciplineActions", disciplineActionIdentifier="ACT-0001")
    assert kept["studentDisciplineIncidentBehaviorAssociations"] == links
    assert peer.find("disciplineIncidents", incidentIdentifier="INC-0009") is None
    assert peer.find("disciplineIncidents", incidentIdentifier="INC-0001") is not None

    # A stale ETag: nothing at all is deleted.
    stale = connector.delete_incident("255901107|INC-0001", etag="1")
    assert stale.action == "conflict"
    assert peer.find("disciplineIncidents", incidentIdentifier="INC-0001") is not None
    assert peer.find("disciplineActions", disciplineActionIdentifier="ACT-0001") is not None
    # Gone already: nothing to do.
    assert connector.delete_incident("255901107|NOPE").action == "unchanged"
    connector.close()


@pytest.mark.parametrize("policy", [ConflictPolicy.SOURCE_WINS, ConflictPolicy.HUB_WINS])
def test_a_delete_of_an_incident_the_source_changed_follows_the_policy(north, system, peer, policy):
    definition, incident = pushed_incident(north, system, peer, policy)
    change_source(peer, incident, at="11:15:00")
    model_delete(instance=fresh(incident), actor=system)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["conflicts"] == 1
    assert "was deleted in the hub and changed in the source" in run.log
    if policy == ConflictPolicy.SOURCE_WINS:
        assert at_peer(peer, incident)["incidentTime"] == "11:15:00"
        assert pushed(run)["source_won"] == 1 and pushed(run)["pushed_deleted"] == 0
    else:
        assert at_peer(peer, incident) is None
        assert pushed(run)["pushed_deleted"] == 1


def test_a_refused_delete_is_retried_and_an_already_gone_one_is_no_error(north, system, peer):
    definition, incident = pushed_incident(north, system, peer)
    model_delete(instance=fresh(incident), actor=system)
    peer.refuse_as_referenced(INCIDENTS + "/", by="an existing Grade item")
    run = sync(definition, system)
    assert run.status == RunStatus.PARTIAL
    assert pushed(run)["failed"] == 1 and pushed(run)["pushed_deleted"] == 0
    [error] = RecordError.objects.filter(run=run)
    assert "409" in error.reason and error.source_id == f"{SCHOOL}|BX{incident.pk}"
    assert at_peer(peer, incident) is not None

    retry = sync(definition, system)
    assert retry.status == RunStatus.SUCCEEDED, retry.message
    assert pushed(retry)["pushed_deleted"] == 1 and at_peer(peer, incident) is None

    # An incident the source deleted itself and the hub then deleted: nothing to send.
    other = hub_incident(north, system)
    sync(definition, system)
    peer.delete("disciplineIncidents", at_peer(peer, other)["id"])
    model_delete(instance=fresh(other), actor=system)
    gone = sync(definition, system)
    assert gone.status == RunStatus.SUCCEEDED, gone.message
    assert pushed(gone)["pushed_deleted"] == 0 and pushed(gone)["failed"] == 0
    assert "were not in the source (any more): nothing to delete" in gone.log


def test_deletes_of_incidents_that_never_went_to_the_source_are_not_sent(north, system, peer):
    definition = make_definition(north, system, peer)
    sync(definition, system)
    before = len(peer.requests)
    # The world's own incidents (schools Ed-Fi does not know) are deleted in the hub.
    for incident in Incident.objects.filter(district=north.district):
        model_delete(instance=incident, actor=system)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["pushed_deleted"] == 0 and pushed(run)["unchanged"] == 0
    assert not [r for r in peer.requests[before:] if INCIDENTS in r.path]
    assert SyncDefinition.objects.get(pk=definition.pk).push_cursor > 0
