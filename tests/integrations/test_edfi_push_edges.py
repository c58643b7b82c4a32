"""Ed-Fi push edge cases (integrations/push.py, integrations/connectors/edfi.py), against the
Ed-Fi test server:

- an incident whose lineage is another system's keeps it after a push, and is then updated in
  the source as the record it was sent as (If-Match over the source's own fields), never
  POSTed again: a second POST after the hub moved it to another school created a second
  incident there;
- a discipline action's date is part of its natural key: when the hub's action moves to
  another day, the action sent before is replaced, never left beside the new one.
"""

from __future__ import annotations

import json
from datetime import date, time

import pytest

from bxos.behavior.models import IncidentAction
from bxos.common.services import model_update
from bxos.schools.models import School
from integrations.choices import RunStatus
from integrations.models import RecordError
from tests.integrations.peers.edfi import d
from tests.integrations.test_bidirectional import (
    SCHOOL,
    SOURCE,
    add_action,
    fresh,
    hub_incident,
    make_definition,
    pushed,
    sync,
)

pytestmark = pytest.mark.usefixtures("loopback")

INCIDENTS = "/ed-fi/disciplineIncidents"
ACTIONS = "/ed-fi/disciplineActions"
OTHER_SCHOOL = "255901107"  # Roosevelt High in the peer's fixture


def requests(peer, method: str, fragment: str, since: int = 0):
    return [r for r in peer.requests[since:] if r.method == method and fragment in r.path]


def sent_as(peer, incident) -> list[dict]:
    return [
        i
        for i in peer.items("disciplineIncidents")
        if i["incidentIdentifier"] == f"BX{incident.pk}"
    ]


def actions_of(peer, incident) -> list[dict]:
    return [
        a
        for a in peer.items("disciplineActions")
        if a["disciplineActionIdentifier"] == f"BX{incident.pk}"
    ]


def test_an_incident_with_another_systems_lineage_is_updated_not_posted_again(north, system, peer):
    definition = make_definition(north, system, peer)
    sync(definition, system)
    incident = hub_incident(north, system)
    # It came from the district's old SIS, which still matches it by this lineage.
    model_update(
        instance=incident, actor=system, data={"source_system": "legacy-sis", "source_id": "L-77"}
    )
    first = sync(definition, system)
    assert first.status == RunStatus.SUCCEEDED, first.message
    assert pushed(first)["pushed_created"] == 1
    assert (fresh(incident).source_system, fresh(incident).source_id) == ("legacy-sis", "L-77")
    [item] = sent_as(peer, incident)
    assert item["schoolReference"] == {"schoolId": int(SCHOOL)}

    # The source adds what the hub does not hold; only the source changed: nothing is sent.
    location = d("IncidentLocationDescriptor", "Hallway")
    peer.update("disciplineIncidents", item["id"], {"incidentLocationDescriptor": location})
    mark = len(peer.requests)
    quiet = sync(definition, system)
    assert pushed(quiet)["pushed_updated"] == 0 and pushed(quiet)["pushed_created"] == 0
    assert not requests(peer, "POST", INCIDENTS, mark) and not requests(peer, "PUT", "", mark)
    etag = sent_as(peer, incident)[0]["_etag"]

    # The hub moves it to the other school and changes its time.
    other = School.objects.get(
        district=north.district, source_system=SOURCE, source_id=OTHER_SCHOOL
    )
    model_update(
        instance=fresh(incident), actor=system, data={"school": other, "occurred_at": time(14, 5)}
    )
    mark = len(peer.requests)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["pushed_updated"] == 1 and pushed(run)["pushed_created"] == 0
    assert not requests(peer, "POST", INCIDENTS, mark)
    [put] = requests(peer, "PUT", INCIDENTS + "/", mark)
    assert put.path.endswith(f"/disciplineIncidents/{item['id']}")
    assert put.headers["if-match"] == f'"{etag}"'
    assert json.loads(put.body)["incidentLocationDescriptor"] == location
    # One record in the source, the same one, updated; in the school the source has it in.
    [after] = sent_as(peer, incident)
    assert after["id"] == item["id"] and after["incidentTime"] == "14:05:00"
    assert after["incidentLocationDescriptor"] == location
    assert after["schoolReference"] == {"schoolId": int(SCHOOL)}
    assert len(peer.items("disciplineIncidents")) == 4  # the fixture's 3 and this one
    assert (fresh(incident).source_system, fresh(incident).source_id) == ("legacy-sis", "L-77")
    assert "keeps its lineage" in run.log

    # Changed on both sides now: a conflict, settled by the policy (source wins).
    peer.update("disciplineIncidents", item["id"], {"incidentTime": "11:15:00"})
    model_update(instance=fresh(incident), actor=system, data={"occurred_at": time(13, 0)})
    settled = sync(definition, system)
    assert pushed(settled)["conflicts"] == 1 and pushed(settled)["source_won"] == 1
    assert fresh(incident).occurred_at == time(11, 15)
    assert len(sent_as(peer, incident)) == 1


def test_an_actions_new_date_replaces_the_action_sent_before(north, system, peer):
    definition = make_definition(north, system, peer)
    sync(definition, system)
    incident = hub_incident(north, system)
    action = add_action(incident, system)  # starts 2026-10-03
    first = sync(definition, system)
    assert pushed(first)["pushed_created"] == 1, first.message
    [sent] = actions_of(peer, incident)
    assert sent["disciplineDate"] == "2026-10-03"

    model_update(
        instance=IncidentAction.objects.get(pk=action.pk),
        actor=system,
        data={"start_date": date(2026, 10, 6)},
    )
    mark = len(peer.requests)
    run = sync(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["pushed_updated"] == 1 and pushed(run)["failed"] == 0
    [now] = actions_of(peer, incident)
    assert now["disciplineDate"] == "2026-10-06" and now["disciplineActionLength"] == 0.5
    assert (
        now["studentDisciplineIncidentBehaviorAssociations"]
        == (sent["studentDisciplineIncidentBehaviorAssociations"])
    )
    # The old one was deleted (with If-Match on the version read) before the new one was made.
    writes = [r for r in peer.requests[mark:] if ACTIONS in r.path and r.method != "GET"]
    assert [r.method for r in writes] == ["DELETE", "POST"]
    assert writes[0].path.endswith(f"/disciplineActions/{sent['id']}")
    assert writes[0].headers["if-match"] == f'"{sent["_etag"]}"'
    # The fixture's own actions are untouched.
    assert len(peer.items("disciplineActions")) == 3

    # Nothing changed since: nothing is replaced again.
    mark = len(peer.requests)
    sync(definition, system)
    assert not requests(peer, "DELETE", ACTIONS, mark)
    assert len(actions_of(peer, incident)) == 1


def test_a_refused_replacement_posts_nothing_and_is_retried(north, system, peer):
    definition = make_definition(north, system, peer)
    sync(definition, system)
    incident = hub_incident(north, system)
    action = add_action(incident, system)
    sync(definition, system)
    model_update(
        instance=IncidentAction.objects.get(pk=action.pk),
        actor=system,
        data={"start_date": date(2026, 10, 6)},
    )
    peer.refuse_as_referenced(ACTIONS + "/")
    run = sync(definition, system)
    assert run.status == RunStatus.PARTIAL, run.message
    [error] = RecordError.objects.filter(run=run)
    assert "moved to 2026-10-06, but the one of 2026-10-03 could not be replaced" in error.reason
    assert [a["disciplineDate"] for a in actions_of(peer, incident)] == ["2026-10-03"]

    retry = sync(definition, system)
    assert retry.status == RunStatus.SUCCEEDED, retry.message
    assert [a["disciplineDate"] for a in actions_of(peer, incident)] == ["2026-10-06"]
