"""A district admin works the integration engine in a real browser: adds an integration from its
type, tests the connection, previews a mapping, watches a run's progress bar move, and approves
a held run after reading its preview."""

from __future__ import annotations

import json
import re
from datetime import time
from pathlib import Path

import pytest
from django.core.files import File

from integrations import services, tasks
from integrations.choices import ConflictPolicy, RunStatus
from integrations.models import (
    ConflictStatus,
    IdentityReview,
    Integration,
    SyncConflict,
    SyncDefinition,
    SyncRun,
)
from integrations.sample import build_roster, write_zip
from tests.browser.conftest import screenshot
from tests.browser.test_admin_browser import login
from tests.integrations.peers.edfi import EdFiPeer
from tests.integrations.peers.oneroster_rest import OneRosterPeer

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROSTER_ENTITIES = [
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
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path


@pytest.fixture
def peer(settings):
    # The peer listens on 127.0.0.1, which the outbound guard refuses unless told.
    settings.OUTBOUND_HTTP = {**settings.OUTBOUND_HTTP, "ALLOW_LOOPBACK": True}
    with OneRosterPeer() as peer:
        yield peer


def csv_definition(world, actor, **fields) -> SyncDefinition:
    integration = services.integration_create(
        district=world.district,
        name=f"{world.code.title()} SIS (CSV)",
        connector_type="oneroster_csv",
        source_system="sis",
        params={"source": "upload", "encoding": "auto"},
        actor=actor,
    )
    definition = SyncDefinition(
        integration=integration, name="Nightly roster", entities=ROSTER_ENTITIES, **fields
    )
    return services.definition_save(definition=definition, actor=actor)


def test_add_an_integration_test_it_and_preview_a_mapping(page, live_server, north, peer):
    login(page, live_server, north.users["district_admin"].username)
    page.goto(f"{live_server.url}/admin/integrations/integration/add/")
    assert page.locator(".integration-choice").count() >= 3
    screenshot(page, "integrations-choose-type")

    page.click("#connector-oneroster_rest")
    page.wait_for_selector("#id_param_base_url")
    assert page.locator("input[type=password]#id_param_client_secret").count() == 1
    assert "Connection: OneRoster 1.2 REST" in page.locator("#content-main").inner_text()
    page.fill("#id_name", "North SIS API")
    page.fill("#id_source_system", "sis-api")
    page.fill("#id_param_base_url", peer.base_url)
    page.fill("#id_param_token_url", peer.token_url)
    page.fill("#id_param_client_id", peer.client_id)
    page.fill("#id_param_client_secret", peer.client_secret)
    screenshot(page, "integrations-param-form")
    page.click("input[name=_save]")
    page.wait_for_selector("#integration-test")
    integration = Integration.objects.get(name="North SIS API")
    assert integration.district == north.district
    assert page.locator("#id_param_client_secret").input_value() == ""
    assert page.locator(".integration-stored").count() == 1
    assert peer.client_secret not in page.content()

    page.click("#integration-test")
    page.wait_for_selector(".messagelist")
    message = page.locator(".messagelist").inner_text()
    assert "Connection test succeeded" in message and "Connected" in message
    assert page.locator(".field-circuit .integration-ok").count() == 1
    screenshot(page, "integrations-tested")

    page.click("#integration-mappings tr:has(td:text-is('Students')) a")
    page.wait_for_selector("#mapping-form")
    assert "Mapping: Students" in page.locator("h1").inner_text()
    page.fill(
        "#id_sample",
        "sourcedId,identifier,givenName,familyName,birthDate,grades\n"
        "s1,1001,Ava,Nguyen,2011-03-04,10\n"
        "s2,1002,Liam,Garcia,not-a-date,13\n",
    )
    page.click("#mapping-preview-button")
    page.wait_for_selector("#mapping-preview")
    preview = page.locator("#mapping-preview").inner_text()
    assert "Ava" in preview and "not-a-date" in preview
    assert page.locator("#mapping-preview td.integration-error").count() >= 1
    screenshot(page, "integrations-mapping-preview")

    # Save changed rules as version 2, then restore version 1 (as version 3).
    rules = json.loads(page.locator("#id_rules").input_value())
    page.fill("#id_rules", json.dumps([r for r in rules if r["target"] != "middle_name"], indent=2))
    page.fill("#id_note", "no middle names")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist")
    assert "Saved as version 2" in page.locator(".messagelist").inner_text()
    page.click("#mapping-versions input.integration-restore[data-version='1']")
    page.wait_for_selector(".messagelist")
    assert "Version 1 restored as version 3" in page.locator(".messagelist").inner_text()
    assert page.locator("#mapping-versions tbody tr").count() == 3
    screenshot(page, "integrations-mapping-versions")

    # A sync definition of it: only what the connector reads, an interval schedule.
    page.goto(f"{live_server.url}/admin/integrations/integration/{integration.pk}/change/")
    page.click("text=Add sync definition")
    page.wait_for_selector("#id_name")
    assert page.locator("input[name=entities][value=daily_attendance]").count() == 0
    page.fill("#id_name", "Hourly roster")
    page.check("#id_schedule_kind input[value=interval]")
    page.fill("#id_interval_minutes", "60")
    screenshot(page, "integrations-definition-form")
    page.click("input[name=_save]")
    page.wait_for_selector("#integration-run-now")
    definition = SyncDefinition.objects.get(name="Hourly roster")
    assert definition.periodic_task is not None
    assert definition.periodic_task.name in page.locator(".field-periodic_task_link").inner_text()
    screenshot(page, "integrations-definition")


def test_the_progress_bar_moves_without_a_reload(page, live_server, north, system, media):
    definition = csv_definition(north, system)
    run = SyncRun.objects.create(
        definition=definition,
        district_id=north.district.pk,
        status=RunStatus.RUNNING,
        mode="full",
        total=400,
        processed=40,
        phase="Reading student",
    )
    login(page, live_server, north.users["district_admin"].username)
    page.goto(f"{live_server.url}/admin/integrations/syncrun/{run.pk}/change/")
    bar = page.locator(".field-progress_detail .integration-progress")
    assert bar.get_attribute("aria-valuenow") == "10"
    page.evaluate("window.__notReloaded = true")  # gone if the page reloads
    screenshot(page, "integrations-run-progress-10")

    SyncRun.objects.filter(pk=run.pk).update(processed=300, phase="Merging student")
    page.wait_for_function(
        "document.querySelector('.field-progress_detail .integration-progress')"
        ".getAttribute('aria-valuenow') === '75'"
    )
    text = bar.locator(".integration-progress-text").inner_text()
    assert "300 of 400" in text and "75%" in text and "Merging student" in text
    assert page.evaluate("window.__notReloaded") is True
    width = bar.locator(".integration-progress-fill").evaluate("el => el.style.width")
    assert width == "75%"
    page.wait_for_timeout(600)  # let the bar's 0.4 s transition end before the screenshot
    screenshot(page, "integrations-run-progress-75")

    page.goto(f"{live_server.url}/admin/integrations/syncrun/")
    row_bar = page.locator("#result_list .integration-progress")
    assert row_bar.count() == 1
    SyncRun.objects.filter(pk=run.pk).update(processed=360, read_count=180)
    page.wait_for_function(
        "document.querySelector('#result_list .integration-progress')"
        ".getAttribute('aria-valuenow') === '90'"
    )
    assert page.locator(f'[data-run-count="{run.pk}:read"]').inner_text() == "180"
    screenshot(page, "integrations-run-list-progress")

    # When the run stops, the list says so in place.
    SyncRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED, message="all done")
    page.wait_for_function(
        f"document.querySelector('[data-run-status=\"{run.pk}\"]').textContent === 'Succeeded'"
    )
    assert "all done" in row_bar.inner_text()


def test_a_held_run_is_previewed_then_approved(page, live_server, north, system, media):
    definition = csv_definition(north, system, hold_min_rows=20)

    def run_zip(roster, name):
        path = write_zip(media / name, roster)
        with open(path, "rb") as fh:
            run = services.run_start(definition=definition, actor=system, upload=File(fh, name))
        return services.run_execute(run=run, actor=system)

    roster = build_roster(students=40)
    assert run_zip(roster, "r1.zip").status == RunStatus.SUCCEEDED
    students = sorted(r["userSourcedId"] for r in roster.rows("roles") if r["role"] == "student")
    gone = set(students[::2])
    for name, key in [
        ("users", "sourcedId"),
        ("roles", "userSourcedId"),
        ("demographics", "sourcedId"),
        ("enrollments", "userSourcedId"),
    ]:
        roster.files[name] = [row for row in roster.rows(name) if row[key] not in gone]
    held = run_zip(roster, "r2.zip")
    assert held.status == RunStatus.HELD, held.message

    login(page, live_server, north.users["district_admin"].username)
    page.goto(f"{live_server.url}/admin/integrations/syncdefinition/{definition.pk}/change/")
    page.click("#integration-run-now")
    page.wait_for_selector("input[type=file][name=upload]")
    screenshot(page, "integrations-run-now")
    page.goto(f"{live_server.url}/admin/integrations/syncrun/")
    assert page.locator(f'[data-run-status="{held.pk}"]').inner_text() == "Held"
    screenshot(page, "integrations-run-list")
    page.goto(f"{live_server.url}/admin/integrations/syncrun/{held.pk}/change/")
    assert "remove 20 of 40" in page.locator(".field-message").inner_text()
    assert page.locator("#integration-diff .integration-removals").count() >= 1
    screenshot(page, "integrations-held-run")

    page.click("#run-approve")
    page.wait_for_selector("input[type=submit][value='Approve and apply']")
    assert "Removed" in page.locator("#integration-diff").inner_text()
    screenshot(page, "integrations-approve")
    page.click("input[type=submit][value='Approve and apply']")
    page.wait_for_selector(".messagelist")
    assert re.search(rf"Run #{held.pk} was approved", page.locator(".messagelist").inner_text())
    screenshot(page, "integrations-approval-queued")
    tasks.apply_approved_run(held.pk)  # the worker's task body
    held.refresh_from_db()
    assert held.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL)
    page.reload()
    assert page.locator("#run-rollback").count() == 1
    screenshot(page, "integrations-approved")

    # An identity review decided from the list: the row's Merge button.
    review = IdentityReview.objects.create(
        district=north.district,
        integration=definition.integration,
        run=held,
        entity="student",
        source_id="s777",
        incoming={
            "student_number": "777",
            "first_name": north.a1.first_name,
            "last_name": north.a1.last_name,
            "birth_date": north.a1.birth_date.isoformat(),
            "grade_level": north.a1.grade_level,
        },
        candidate_id=north.a1.pk,
        reason="same name and birth date as an existing student, different identifiers",
    )
    page.goto(f"{live_server.url}/admin/integrations/identityreview/")
    assert north.a1.student_number in page.locator("#result_list").inner_text()
    screenshot(page, "integrations-identity-reviews")
    page.click("#result_list button:text-is('Merge')")
    page.wait_for_selector(".messagelist")
    review.refresh_from_db()
    assert review.status == "merged"
    assert "record s777 is now linked" in page.locator(".messagelist").inner_text()

    # Rolling the applied run back: the page records the request and a worker does it; the
    # run's page shows it waiting, then reloads by itself once the worker is done.
    page.goto(f"{live_server.url}/admin/integrations/syncrun/{held.pk}/change/")
    page.click("#run-rollback")
    page.wait_for_selector("input[type=submit][value='Roll back']")
    assert "A worker does it, in your name" in page.locator(".intro").inner_text()
    page.click("input[type=submit][value='Roll back']")
    page.wait_for_selector(".messagelist")
    assert f"Run #{held.pk}: rollback requested" in page.locator(".messagelist").inner_text()
    badge = f'.field-status_badge [data-run-status="{held.pk}"]'
    assert page.locator(badge).inner_text() == "Rolling back"
    bar = page.locator(".field-progress_detail .integration-progress")
    assert "Waiting for a worker · Rollback requested" in bar.inner_text()
    assert "rollback requested by" in page.locator(".field-decision").inner_text()
    assert page.locator("#run-rollback").count() == 0
    Path("/tmp/shots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path="/tmp/shots/integrations_rollback_requested.png", full_page=True)
    screenshot(page, "integrations-rollback-requested")
    assert tasks.rollback_run(held.pk) == RunStatus.ROLLED_BACK  # the worker's task body
    page.wait_for_function(
        "selector => document.querySelector(selector).innerText.trim() === 'Rolled back'",
        arg=badge,
    )
    assert page.locator(".field-progress_detail .integration-progress").count() == 0
    assert "Rolled back by north.district" in page.locator(".field-message .readonly").inner_text()
    page.screenshot(path="/tmp/shots/integrations_rolled_back.png", full_page=True)
    screenshot(page, "integrations-rolled-back")


@pytest.fixture
def edfi_peer(settings):
    settings.OUTBOUND_HTTP = {**settings.OUTBOUND_HTTP, "ALLOW_LOOPBACK": True}
    with EdFiPeer() as peer:
        yield peer


def test_a_sync_conflict_is_compared_and_resolved(page, live_server, north, system, edfi_peer):
    # A bidirectional Ed-Fi sync under manual review; an incident pushed, then changed on both
    # sides: the next run records the conflict and changes neither side.
    from tests.integrations.test_bidirectional import (
        at_peer,
        change_hub,
        change_source,
        fresh,
        hub_incident,
        make_definition,
        sync,
    )

    definition = make_definition(north, system, edfi_peer, ConflictPolicy.MANUAL)
    sync(definition, system)
    incident = hub_incident(north, system)
    sync(definition, system)
    change_source(edfi_peer, incident, at="11:15:00")
    change_hub(incident, system, at=time(13, 0))
    sync(definition, system)
    conflict = SyncConflict.objects.get(definition=definition, status=ConflictStatus.OPEN)

    login(page, live_server, north.users["district_admin"].username)
    page.goto(f"{live_server.url}/admin/integrations/syncconflict/")
    assert conflict.source_id in page.locator("#result_list").inner_text()
    assert "Differ: Time of day" in page.locator("#result_list").inner_text()
    page.click(f"#result_list a[href*='/syncconflict/{conflict.pk}/change/']")
    page.wait_for_selector("#conflict-compare")
    differing = page.locator("#conflict-compare tr.integration-differs")
    assert differing.count() == 1
    assert differing.get_attribute("data-field") == "occurred_at"
    cells = differing.locator("td").all_inner_texts()
    assert cells == ["13:00:00", "11:15:00"]
    # The differing row is visibly marked.
    background = differing.locator("td").first.evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    assert background == "rgb(255, 243, 214)"
    Path("/tmp/shots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path="/tmp/shots/sync_conflicts.png", full_page=True)
    screenshot(page, "integrations-sync-conflict")

    page.click("#conflict-keep-source")
    page.wait_for_selector(".messagelist")
    assert "the hub took State Ed-Fi's version" in page.locator(".messagelist").inner_text()
    assert page.locator("#conflict-keep-source").count() == 0
    assert (
        "Resolved: the source's version was kept"
        in page.locator(".field-status_badge").inner_text()
    )
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.RESOLVED_SOURCE
    assert conflict.decided_by == north.users["district_admin"]
    assert fresh(incident).occurred_at == time(11, 15)
    assert at_peer(edfi_peer, incident)["incidentTime"] == "11:15:00"
    screenshot(page, "integrations-sync-conflict-resolved")


def test_an_action_removal_conflict_is_shown_and_decided(
    page, live_server, north, system, edfi_peer
):
    # A discipline action the push sent is removed in the hub while the source changed it:
    # under manual review the removal waits for an admin, who sees both sides and decides.
    from tests.integrations.test_bidirectional import sync
    from tests.integrations.test_edfi_push_action_removal import (
        bx_actions,
        pushed_with_action,
        remove,
    )

    definition, incident, action = pushed_with_action(
        north, system, edfi_peer, ConflictPolicy.MANUAL
    )
    remove(action, system)
    [sent] = bx_actions(edfi_peer, incident)
    edfi_peer.update("disciplineActions", sent["id"], {"disciplineActionLength": 3.0})
    sync(definition, system)
    conflict = SyncConflict.objects.get(definition=definition, status=ConflictStatus.OPEN)

    login(page, live_server, north.users["district_admin"].username)
    page.goto(f"{live_server.url}/admin/integrations/syncconflict/")
    listed = page.locator("#result_list").inner_text()
    assert conflict.source_id in listed and "(deleted)" in listed
    page.click(f"#result_list a[href*='/syncconflict/{conflict.pk}/change/']")
    page.wait_for_selector("#conflict-compare")
    assert "Removed in the hub" in page.locator("#conflict-compare").inner_text()
    # The comparison stays inside the page: a long key wraps in its column.
    box = page.locator("#conflict-compare").bounding_box()
    field = page.locator(".field-compare div.readonly").bounding_box()
    assert box["x"] + box["width"] <= field["x"] + field["width"] + 1
    Path("/tmp/shots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path="/tmp/shots/sync_action_conflict.png", full_page=True)
    screenshot(page, "integrations-action-conflict")

    page.click("#conflict-keep-hub")
    page.wait_for_selector(".messagelist")
    assert page.locator("#conflict-keep-hub").count() == 0
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.RESOLVED_HUB
    assert conflict.decided_by == north.users["district_admin"]
    assert bx_actions(edfi_peer, incident) == []  # the sent action is gone from the source
    page.screenshot(path="/tmp/shots/sync_action_conflict_decided.png", full_page=True)
    screenshot(page, "integrations-action-conflict-decided")
