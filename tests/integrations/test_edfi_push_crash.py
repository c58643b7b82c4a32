"""A worker killed after Ed-Fi took a pushed discipline action, before it heard so: the action
is still on record, so a later removal in the hub is carried to the source
(integrations/push.py ``incident_send``, integrations/models.PushedAction).

The push records the action it is about to POST before it POSTs it (pending) and confirms the
record when the source answers. Here a real Celery worker runs the sync; the Ed-Fi test server
applies the ``disciplineActions`` POST and holds its answer back; the worker is killed with
SIGKILL while it waits. Nothing of the worker's commits after that moment, as when a machine
dies. The pending record is what lets the next push delete the action (or confirm it, when the
hub still has it) instead of leaving it in the source for good.

The killed run keeps the status its pull committed (the push step runs after the merge) and
has no push outcome; the push cursor did not move, so the next run pushes from the same point.
"""

from __future__ import annotations

from datetime import time as clock

import pytest

from bxos.common.services import model_update
from integrations import services
from integrations.choices import RunStatus
from integrations.models import PushedAction, SyncRun
from tests.integrations.held_worker import worker_waiting_on
from tests.integrations.test_bidirectional import (
    SCHOOL,
    STUDENT,
    add_action,
    fresh,
    hub_incident,
    make_definition,
    pushed,
    sync,
)
from tests.integrations.test_edfi_push_action_removal import ACTIONS, bx_actions, remove

pytestmark = pytest.mark.usefixtures("loopback")


def sync_here(definition, actor) -> SyncRun:
    """A whole run in this process; nothing is sent to a broker's shared queue."""
    run = services.run_start(definition=definition, actor=actor, enqueue=False)
    run = services.run_execute(run=run, actor=actor)
    run.refresh_from_db()
    return run


def records(definition) -> list[tuple[str, bool]]:
    """The integration's records of sent actions: (natural key, pending)."""
    return [
        (r.source_id, r.pending)
        for r in PushedAction.objects.filter(integration=definition.integration).order_by("pk")
    ]


def killed_after_the_action_post(definition, peer, actor, monkeypatch) -> tuple[SyncRun, list]:
    """Run a sync on a real worker and SIGKILL it while the peer holds its answer to the
    discipline action POST (applied already). Returns the run and the records as they were
    while the answer was held."""
    run = services.run_start(definition=definition, actor=actor, enqueue=False)
    with worker_waiting_on(peer, monkeypatch, run, method="POST", match=ACTIONS) as waiting:
        # Read while the worker waits for the answer: what it committed before the POST.
        while_held = records(definition)
        waiting.kill()
    run.refresh_from_db()
    return run, while_held


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_an_action_a_killed_worker_sent_is_deleted_when_the_hub_removes_it(
    north, system, peer, monkeypatch
):
    definition = make_definition(north, system, peer)  # source wins conflicts
    first = sync_here(definition, system)
    assert first.status == RunStatus.SUCCEEDED, first.message
    incident = hub_incident(north, system)
    action = add_action(incident, system)

    killed, while_held = killed_after_the_action_post(definition, peer, system, monkeypatch)
    key = f"BX{incident.pk}|2026-10-03|{STUDENT}"
    # The source took the action; the worker died before it heard so.
    [sent] = bx_actions(peer, incident)
    assert "push" not in (killed.diff or {})  # the push step never finished

    # The hub removes the action; the next push deletes it in the source.
    tomb = remove(action, system)
    mark = len(peer.requests)
    run = sync_here(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["actions_deleted"] == 1, run.log
    assert pushed(run)["failed"] == 0 and pushed(run)["conflicts"] == 0, run.log
    assert bx_actions(peer, incident) == []
    [delete] = [r for r in peer.requests[mark:] if r.method == "DELETE" and ACTIONS in r.path]
    assert delete.path.endswith(f"/disciplineActions/{sent['id']}")
    assert delete.headers["if-match"] == f'"{sent["_etag"]}"'
    assert f"its discipline action {key}, removed in the hub, was deleted" in run.log
    # The incident was posted again under its stable identifier: still one in the source.
    ours = [
        i
        for i in peer.items("disciplineIncidents")
        if i["incidentIdentifier"] == f"BX{incident.pk}"
    ]
    assert len(ours) == 1
    assert records(definition) == []
    definition.refresh_from_db()
    assert definition.push_cursor >= tomb.change_version

    # What made it possible: the record was committed before the POST, pending.
    assert while_held == [(key, True)]


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_an_action_a_killed_worker_sent_is_confirmed_by_the_next_push(
    north, system, peer, monkeypatch
):
    definition = make_definition(north, system, peer)
    sync_here(definition, system)
    incident = hub_incident(north, system)
    add_action(incident, system)
    _killed, while_held = killed_after_the_action_post(definition, peer, system, monkeypatch)
    key = f"BX{incident.pk}|2026-10-03|{STUDENT}"
    assert while_held == [(key, True)]

    # The hub keeps the action: the next push sends the same natural key again (an upsert)
    # and confirms the record.
    run = sync_here(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert pushed(run)["failed"] == 0, run.log
    [action] = bx_actions(peer, incident)
    assert action["disciplineDate"] == "2026-10-03"
    assert records(definition) == [(key, False)]


# --- The normal path -------------------------------------------------------------------------


def test_a_push_leaves_one_confirmed_record_and_none_pending(north, system, peer):
    definition = make_definition(north, system, peer)
    sync(definition, system)
    incident = hub_incident(north, system)
    add_action(incident, system)
    run = sync(definition, system)
    assert pushed(run)["pushed_created"] == 1, run.message
    [sent] = bx_actions(peer, incident)
    [record] = PushedAction.objects.filter(integration=definition.integration)
    assert not record.pending and record.sent_at is not None
    assert record.resource_id == sent["id"]
    assert record.incident_key == f"{SCHOOL}|BX{incident.pk}"

    # Sent again (the incident changed): still one record, confirmed.
    model_update(instance=fresh(incident), actor=system, data={"occurred_at": clock(11, 0)})
    again = sync(definition, system)
    assert pushed(again)["pushed_updated"] == 1, again.message
    assert records(definition) == [(f"BX{incident.pk}|2026-10-03|{STUDENT}", False)]


def test_an_action_the_source_refuses_leaves_no_record(north, system, peer):
    definition = make_definition(north, system, peer)
    sync(definition, system)
    incident = hub_incident(north, system)
    add_action(incident, system)
    peer.force(
        400,
        body={
            "type": "urn:ed-fi:api:bad-request:data-validation-failed",
            "title": "Data Validation Failed",
            "validationErrors": {"$.disciplines": ["is not valid"]},
        },
        match=ACTIONS,
    )
    run = sync(definition, system)
    assert run.status == RunStatus.PARTIAL, run.message
    assert pushed(run)["failed"] == 1
    assert bx_actions(peer, incident) == []
    # Recorded ahead of the POST, deleted again when the source refused it.
    assert records(definition) == []
