"""The sync conflicts page: manual-review conflicts of a bidirectional Ed-Fi sync, decided by a
district admin through Django's test client.

The conflicts are real: a definition with the manual policy pushes hub incidents to the Ed-Fi
test server, both sides change them, and the next run records the conflicts
(integrations/push.py). The pages call ``push.conflict_resolve`` / ``push.conflict_dismiss``
with the signed-in user; the Ed-Fi server shows what reached it.
"""

from __future__ import annotations

from datetime import date, time

import pytest
from auditlog.models import LogEntry
from django.contrib.admin.utils import quote
from django.urls import reverse

from bxos.common.models import AccessLogEntry
from bxos.common.services import model_delete
from integrations import push
from integrations.choices import ConflictPolicy
from integrations.models import ConflictStatus, SyncConflict
from tests.integrations.test_bidirectional import (
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


def url(name, *args):
    return reverse(f"admin:integrations_syncconflict_{name}", args=[quote(a) for a in args])


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def conflicts(world, actor, peer, count=1, policy=ConflictPolicy.MANUAL):
    """``count`` incidents pushed, then changed on both sides: ``count`` open conflicts."""
    definition = make_definition(world, actor, peer, policy)
    sync(definition, actor)
    incidents = [hub_incident(world, actor, on=date(2026, 10, 2 + n)) for n in range(count)]
    assert pushed(sync(definition, actor))["pushed_created"] == count
    for incident in incidents:
        change_source(peer, incident)
        change_hub(incident, actor)
    run = sync(definition, actor)
    assert pushed(run)["conflicts"] == count, run.log
    found = list(SyncConflict.objects.filter(definition=definition).order_by("object_id"))
    assert [c.object_id for c in found] == [i.pk for i in incidents]
    return definition, incidents, found


@pytest.fixture
def admin_client(client, north):
    client.force_login(north.users["district_admin"])
    return client


def test_the_list_and_the_page_show_both_sides_with_the_differences_marked(
    admin_client, north, system, peer
):
    definition, [incident], [conflict] = conflicts(north, system, peer)
    listed = admin_client.get(url("changelist"))
    assert listed.status_code == 200
    assert [c.pk for c in listed.context["cl"].result_list] == [conflict.pk]
    html = listed.content.decode()
    assert conflict.source_id in html
    assert url("keep_hub", conflict.pk) + "?from=list" in html
    # The list's comparison marks only the time as differing.
    assert 'class="integration-differs" data-field="occurred_at"' in html
    assert 'class="" data-field="occurred_on"' in html
    assert "Differ: Time of day" in html

    page = admin_client.get(url("change", conflict.pk))
    assert page.status_code == 200
    html = page.content.decode()
    assert page.context["title"] == f"Sync conflict #{conflict.pk}"
    assert page.context["has_change_permission"] is False  # read-only but for the buttons
    for button in ("conflict-keep-hub", "conflict-keep-source", "conflict-dismiss"):
        assert f'id="{button}"' in html
    assert 'id="conflict-compare"' in html
    row = html.split('data-field="occurred_at"')[1].split("</tr>")[0]
    assert "13:00:00" in row and "11:15:00" in row
    assert 'class="integration-differs" data-field="occurred_at"' in html
    assert 'class="" data-field="behavior_code"' in html
    assert f"Run #{conflict.run_id}" in html
    # The page shows a student's incident: the view is in the access log.
    assert AccessLogEntry.objects.filter(
        actor=north.users["district_admin"],
        object_table="behavior_incident",
        object_id=incident.pk,
    ).exists()

    # Filters: the status (open by default), the integration, the entity and the date.
    assert (
        admin_client.get(url("changelist"), {"status": "dismissed"}).context["cl"].result_count == 0
    )
    by_integration = admin_client.get(url("changelist"), {"integration": definition.integration_id})
    assert by_integration.context["cl"].result_count == 1
    assert (
        admin_client.get(url("changelist"), {"entity": "student"}).context["cl"].result_count == 0
    )
    cl = listed.context["cl"]
    [dates] = [f for f in cl.filter_specs if str(f.title) == "created at"]
    links = {str(c["display"]): c["query_string"] for c in dates.choices(cl)}
    assert admin_client.get(url("changelist") + links["Today"]).context["cl"].result_count == 1
    titles = [str(f.title) for f in cl.filter_specs]
    assert titles == ["status", "integration", "entity", "created at"]


def test_keep_the_sources_version_from_the_page(admin_client, north, system, peer):
    _definition, [incident], [conflict] = conflicts(north, system, peer)
    admin = north.users["district_admin"]
    response = admin_client.post(url("keep_source", conflict.pk), follow=True)
    assert response.redirect_chain[-1][0] == url("change", conflict.pk)
    assert any("the hub took State Ed-Fi's version" in m for m in messages_of(response))
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.RESOLVED_SOURCE
    assert conflict.decided_by == admin
    assert fresh(incident).occurred_at == time(11, 15)
    assert at_peer(peer, incident)["incidentTime"] == "11:15:00"
    assert LogEntry.objects.filter(
        content_type__model="incident", object_pk=str(incident.pk), actor=admin
    ).exists()
    # Decided: the buttons are gone, the decision is shown.
    html = admin_client.get(url("change", conflict.pk)).content.decode()
    assert 'id="conflict-keep-hub"' not in html and f"by {admin}" in html
    # A second decision is refused with the reason, not a crash.
    again = admin_client.post(url("keep_hub", conflict.pk), follow=True)
    assert any("already resolved" in m for m in messages_of(again))


def test_keep_the_hubs_version_sends_it_with_if_match(admin_client, north, system, peer):
    _definition, [incident], [conflict] = conflicts(north, system, peer)
    etag = at_peer(peer, incident)["_etag"]
    response = admin_client.post(url("keep_hub", conflict.pk) + "?from=list", follow=True)
    assert response.redirect_chain[-1][0] == url("changelist")
    assert any("the hub's version was kept and sent" in m for m in messages_of(response))
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.RESOLVED_HUB
    assert at_peer(peer, incident)["incidentTime"] == "13:00:00"
    [put] = [r for r in peer.requests if r.method == "PUT" and "disciplineIncidents/" in r.path]
    assert put.headers["if-match"] == f'"{etag}"'
    # The source's own fields the hub does not hold stayed.
    assert at_peer(peer, incident)["schoolReference"] == {"schoolId": 255901001}


def test_keep_the_hubs_version_when_the_source_changed_again_asks_again(
    admin_client, north, system, peer
):
    _definition, [incident], [conflict] = conflicts(north, system, peer)

    # The source changes once more between the page and the decision: the hub's version is
    # sent only over the version read just before, so the ODS refuses it (412).
    def change_first(server, method, resource, id):
        if method == "PUT" and resource == "disciplineIncidents":
            server.before_write.remove(change_first)
            server.update(resource, id, {"incidentTime": "07:45:00"})

    peer.before_write.append(change_first)
    response = admin_client.post(url("keep_hub", conflict.pk), follow=True)
    assert any(
        "stays open" in m and "changed" in m and "decide again" in m for m in messages_of(response)
    ), messages_of(response)
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.OPEN
    assert conflict.source["incidentTime"] == "07:45:00"  # the snapshot shows the new version
    assert at_peer(peer, incident)["incidentTime"] == "07:45:00"
    assert fresh(incident).occurred_at == time(13, 0)


def test_dismiss_and_bulk_decisions(admin_client, north, system, peer):
    _definition, incidents, found = conflicts(north, system, peer, count=3)
    admin = north.users["district_admin"]
    response = admin_client.post(url("dismiss", found[0].pk), follow=True)
    assert any("dismissed; both sides were left" in m for m in messages_of(response))
    found[0].refresh_from_db()
    assert (found[0].status, found[0].decided_by) == (ConflictStatus.DISMISSED, admin)
    assert fresh(incidents[0]).occurred_at == time(13, 0)
    assert at_peer(peer, incidents[0])["incidentTime"] == "11:15:00"

    # Bulk: keep the source's version of the other two (an already decided one is ignored).
    response = admin_client.post(
        url("changelist") + "?status=all",
        {
            "action": "keep_source_selected",
            "_selected_action": [c.pk for c in found],
        },
        follow=True,
    )
    assert any("Took the source's version of 2 conflicts" in m for m in messages_of(response))
    for conflict, incident in zip(found[1:], incidents[1:], strict=True):
        conflict.refresh_from_db()
        assert conflict.status == ConflictStatus.RESOLVED_SOURCE
        assert conflict.decided_by == admin
        assert fresh(incident).occurred_at == time(11, 15)
    found[0].refresh_from_db()
    assert found[0].status == ConflictStatus.DISMISSED


def test_bulk_keep_hub_reports_the_ones_that_could_not_be_decided(
    admin_client, north, system, peer
):
    _definition, incidents, found = conflicts(north, system, peer, count=2)
    # The first incident is gone from the hub: its conflict cannot keep the hub's version.
    model_delete(instance=fresh(incidents[0]), actor=system)
    response = admin_client.post(
        url("changelist"),
        {"action": "keep_hub_selected", "_selected_action": [c.pk for c in found]},
        follow=True,
    )
    texts = messages_of(response)
    assert any("Kept the hub's version of 1 conflict." in m for m in texts), texts
    assert any(
        m.startswith("Still open: ") and f"#{found[0].pk}" in m and "no longer exists" in m
        for m in texts
    ), texts
    assert at_peer(peer, incidents[1])["incidentTime"] == "13:00:00"
    found[0].refresh_from_db()
    assert found[0].status == ConflictStatus.OPEN


def test_only_district_admins_of_the_same_district(client, north, south, system, peer):
    _definition, [incident], [conflict] = conflicts(north, system, peer)
    # Another district's admin: the conflict is not there.
    client.force_login(south.users["district_admin"])
    assert client.get(url("changelist")).context["cl"].result_count == 0
    assert client.get(url("change", conflict.pk)).status_code == 404
    for name in ("keep_hub", "keep_source", "dismiss"):
        assert client.post(url(name, conflict.pk)).status_code == 404
    # Other roles of the same district: no access at all.
    for role in ("school_admin", "counselor", "teacher"):
        client.force_login(north.users[role])
        assert client.get(url("changelist")).status_code == 403
        assert client.get(url("change", conflict.pk)).status_code == 403
        assert client.post(url("keep_hub", conflict.pk)).status_code in (403, 404)
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.OPEN
    assert at_peer(peer, incident)["incidentTime"] == "11:15:00"

    # The district admin: a decision needs a POST; the page is read-only.
    client.force_login(north.users["district_admin"])
    assert client.get(url("keep_hub", conflict.pk)).status_code == 405
    assert client.get(url("add")).status_code == 403
    assert client.get(url("delete", conflict.pk)).status_code == 403
    assert client.post(url("change", conflict.pk), {"status": "dismissed"}).status_code == 403
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.OPEN


def test_a_conflict_about_an_incident_the_hub_deleted(admin_client, north, system, peer):
    definition, [incident], [first] = conflicts(north, system, peer)
    push.conflict_dismiss(conflict=first, actor=system)
    # Both sides again: the source changes it, the hub deletes it.
    change_source(peer, incident, at="12:00:00")
    model_delete(instance=fresh(incident), actor=system)
    run = sync(definition, system)
    assert pushed(run)["conflicts"] == 1 and pushed(run)["pushed_deleted"] == 0
    conflict = SyncConflict.objects.get(definition=definition, status=ConflictStatus.OPEN)
    assert conflict.hub["deleted"] is True
    html = admin_client.get(url("change", conflict.pk)).content.decode()
    assert 'class="integration-differs" data-field="exists"' in html
    assert "Deleted in the hub" in html
    response = admin_client.post(url("keep_hub", conflict.pk), follow=True)
    assert any("deleted in State Ed-Fi too" in m for m in messages_of(response)), messages_of(
        response
    )
    assert at_peer(peer, incident) is None
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.RESOLVED_HUB
