"""The district admin's integrations pages, through Django's test client, across two districts:
integrations (type chooser, parameter form, secrets, Test connection, health), mappings (editor,
preview, versions), crosswalks, sync definitions (schedule, inbound secret, Run now with a
OneRoster zip), runs (progress JSON, diff, errors CSV, approve/discard/roll back/re-run),
record errors, identity reviews, the gate, and the signed inbound endpoint.

Runs in a given status are made with the ORM for what is only display; the real runs go
through ``services.run_start`` and ``services.run_execute`` (the worker's task body) with
OneRoster CSV zips from ``integrations.sample``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from bxos.schools.models import Student
from integrations import services, tasks
from integrations.choices import ErrorStatus, ReviewStatus, RunStatus, RunTrigger
from integrations.models import (
    Crosswalk,
    IdentityReview,
    Integration,
    RecordError,
    SyncDefinition,
    SyncRun,
)
from integrations.sample import build_roster, write_zip
from tests.integrations.peers.oneroster_rest import OneRosterPeer

SOURCE = "sis"
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
DIFF = {
    "student": {
        "read": 3,
        "created": 1,
        "updated": 1,
        "unchanged": 1,
        "deleted": 1,
        "failed": 0,
        "skipped": 0,
        "existing": 3,
        "samples": {
            "insert": [{"source_id": "s9", "after": {"first_name": "Nia", "grade_level": "10"}}],
            "update": [{"source_id": "s2", "id": 5, "changes": {"last_name": ["Olds", "Newman"]}}],
            "remove": [{"id": 7, "source_id": "s7"}],
        },
    }
}


def admin_url(name, *args):
    return reverse(f"admin:integrations_{name}", args=[quote(a) for a in args])


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def html_of(response) -> str:
    return response.content.decode()


@pytest.fixture
def admin_client(client, north):
    client.force_login(north.users["district_admin"])
    return client


def csv_integration(world, actor, **params) -> Integration:
    return services.integration_create(
        district=world.district,
        name=f"{world.code.title()} SIS (CSV)",
        connector_type="oneroster_csv",
        source_system=SOURCE,
        params={"source": "upload", "encoding": "auto", **params},
        actor=actor,
    )


def definition_for(integration, actor, **fields) -> SyncDefinition:
    fields.setdefault("name", "Nightly roster")
    fields.setdefault("entities", ROSTER_ENTITIES)
    return services.definition_save(
        definition=SyncDefinition(integration=integration, **fields), actor=actor
    )


def make_run(definition, status, **fields) -> SyncRun:
    now = timezone.now()
    fields.setdefault("started_at", now - timedelta(minutes=3))
    if status not in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.HELD):
        fields.setdefault("finished_at", now - timedelta(minutes=1))
    return SyncRun.objects.create(
        definition=definition,
        district_id=definition.integration.district_id,
        status=status,
        mode="full",
        **fields,
    )


def record_error(run, **fields) -> RecordError:
    data = {
        "entity": "student",
        "file": "users.csv",
        "line": 4,
        "field": "grade_level",
        "reason": "'13' is not a grade level",
        "source_id": "s3",
        **fields,
    }
    return RecordError.objects.create(
        run=run, definition=run.definition, district_id=run.district_id, **data
    )


class World:
    """One district's integration rows: an integration, a definition, runs, errors, a review."""

    def __init__(self, world, actor) -> None:
        self.integration = csv_integration(world, actor)
        self.definition = definition_for(self.integration, actor)
        self.running = make_run(self.definition, RunStatus.RUNNING, total=200, processed=50)
        self.held = make_run(
            self.definition, RunStatus.HELD, diff=DIFF, message="Held for approval: Students"
        )
        self.done = make_run(
            self.definition,
            RunStatus.PARTIAL,
            diff=DIFF,
            read_count=3,
            created_count=1,
            failed_count=1,
            log="08:00:01 reading student\n08:00:02 merged",
            message="3 read, 1 created",
        )
        self.error = record_error(self.done)
        self.review = IdentityReview.objects.create(
            district=world.district,
            integration=self.integration,
            run=self.done,
            entity="student",
            source_id="s2",
            incoming={
                "student_number": "777",
                "first_name": world.a1.first_name,
                "last_name": world.a1.last_name,
                "birth_date": world.a1.birth_date.isoformat(),
                "grade_level": "10",
            },
            candidate_id=world.a1.pk,
            reason="same name and birth date as an existing student, different identifiers",
        )


@pytest.fixture
def rows(north, system, media):
    return World(north, system)


@pytest.fixture
def south_rows(south, system, media):
    return World(south, system)


# --- every page, and the gate ----------------------------------------------------------------


def test_every_page_renders_for_a_district_admin(admin_client, rows):
    pages = [
        reverse("admin:app_list", args=["integrations"]),
        admin_url("integration_changelist"),
        admin_url("integration_add"),
        admin_url("integration_add") + "?type=oneroster_csv",
        admin_url("integration_change", rows.integration.pk),
        admin_url("integration_history", rows.integration.pk),
        admin_url("integration_mapping", rows.integration.pk, "student"),
        admin_url("crosswalk_changelist"),
        admin_url("crosswalk_add"),
        admin_url("syncdefinition_changelist"),
        admin_url("syncdefinition_add"),
        admin_url("syncdefinition_add") + f"?integration={rows.integration.pk}",
        admin_url("syncdefinition_change", rows.definition.pk),
        admin_url("syncdefinition_run", rows.definition.pk),
        admin_url("syncrun_changelist"),
        admin_url("syncrun_change", rows.running.pk),
        admin_url("syncrun_change", rows.held.pk),
        admin_url("syncrun_change", rows.done.pk),
        admin_url("syncrun_approve", rows.held.pk),
        admin_url("syncrun_discard", rows.held.pk),
        admin_url("syncrun_rollback", rows.done.pk),
        admin_url("syncrun_rerun", rows.done.pk),
        admin_url("recorderror_changelist"),
        admin_url("recorderror_change", rows.error.pk),
        admin_url("identityreview_changelist"),
        admin_url("identityreview_change", rows.review.pk),
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, (page, response.status_code)
    index = html_of(admin_client.get(reverse("admin:index")))
    for name in ("Integrations", "Sync runs", "Identity reviews", "Record errors"):
        assert name in index


def test_another_districts_rows_are_a_404(admin_client, rows, south_rows):
    s = south_rows
    gets = [
        admin_url("integration_change", s.integration.pk),
        admin_url("integration_mapping", s.integration.pk, "student"),
        admin_url("syncdefinition_change", s.definition.pk),
        admin_url("syncdefinition_run", s.definition.pk),
        admin_url("syncdefinition_add") + f"?integration={s.integration.pk}",
        admin_url("syncrun_change", s.running.pk),
        admin_url("syncrun_progress", s.running.pk),
        admin_url("syncrun_errors_csv", s.done.pk),
        admin_url("syncrun_approve", s.held.pk),
        admin_url("syncrun_rollback", s.done.pk),
        admin_url("recorderror_change", s.error.pk),
        admin_url("identityreview_change", s.review.pk),
    ]
    for page in gets:
        assert admin_client.get(page).status_code == 404, page
    posts = [
        admin_url("integration_test", s.integration.pk),
        admin_url("syncrun_approve", s.held.pk),
        admin_url("syncrun_discard", s.held.pk),
        admin_url("syncrun_rollback", s.done.pk),
        admin_url("identityreview_merge", s.review.pk),
        admin_url("identityreview_distinct", s.review.pk),
    ]
    for page in posts:
        assert admin_client.post(page).status_code == 404, page
    s.held.refresh_from_db()
    s.review.refresh_from_db()
    assert s.held.status == RunStatus.HELD and s.review.status == ReviewStatus.OPEN
    # Lists show the district's own rows only.
    for name, own, other in [
        ("integration_changelist", rows.integration, s.integration),
        ("syncrun_changelist", rows.done, s.done),
        ("identityreview_changelist", rows.review, s.review),
    ]:
        listed = admin_client.get(admin_url(name)).context["cl"].result_list
        assert own in listed and other not in listed
    # Dismissing another district's error through the action does nothing.
    admin_client.post(
        admin_url("recorderror_changelist"),
        {"action": "dismiss", "_selected_action": [s.error.pk, rows.error.pk]},
    )
    s.error.refresh_from_db()
    rows.error.refresh_from_db()
    assert s.error.status == ErrorStatus.OPEN and rows.error.status == ErrorStatus.DISMISSED


@pytest.mark.parametrize("role", ["school_admin", "counselor", "teacher"])
def test_other_roles_see_none_of_these_models(client, north, rows, role):
    client.force_login(north.users[role])
    assert "Sync runs" not in html_of(client.get(reverse("admin:index")))
    for name in (
        "integration_changelist",
        "crosswalk_changelist",
        "syncdefinition_changelist",
        "syncrun_changelist",
        "recorderror_changelist",
        "identityreview_changelist",
    ):
        assert client.get(admin_url(name)).status_code == 403, name
    for page in (
        admin_url("integration_change", rows.integration.pk),
        admin_url("integration_mapping", rows.integration.pk, "student"),
        admin_url("syncrun_progress", rows.running.pk),
        admin_url("syncrun_errors_csv", rows.done.pk),
    ):
        assert client.get(page).status_code in (403, 404), page
    for page in (
        admin_url("integration_test", rows.integration.pk),
        admin_url("syncrun_discard", rows.held.pk),
        admin_url("identityreview_merge", rows.review.pk),
    ):
        assert client.post(page).status_code in (403, 404), page
    rows.held.refresh_from_db()
    assert rows.held.status == RunStatus.HELD


# --- integrations: the type, its parameters, secrets, the connection test --------------------


def rest_form(peer, **overrides) -> dict:
    data = {
        "name": "North SIS API",
        "source_system": "sis-api",
        "param_base_url": peer.base_url,
        "param_token_url": peer.token_url,
        "param_client_id": peer.client_id,
        "param_client_secret": peer.client_secret,
        "param_scope": "",
        "param_page_size": "200",
    }
    data.update(overrides)
    return data


def test_add_an_integration_from_its_type_and_test_the_connection(admin_client, north, loopback):
    chooser = html_of(admin_client.get(admin_url("integration_add")))
    assert "OneRoster 1.2 REST" in chooser and "OneRoster 1.2 CSV (zip)" in chooser
    assert "?type=oneroster_rest" in chooser

    with OneRosterPeer() as peer:
        add = admin_url("integration_add") + "?type=oneroster_rest"
        form_page = html_of(admin_client.get(add))
        assert 'name="param_base_url"' in form_page and "Client secret" in form_page
        assert re.search(r'<input type="password" name="param_client_secret"[^>]*>', form_page)
        assert 'name="district"' not in form_page  # a district admin works in their own

        # A refused address is an error on its field, from the service's outbound check.
        refused = admin_client.post(
            add, rest_form(peer, param_base_url="http://169.254.169.254/latest")
        )
        assert refused.status_code == 200
        errors = refused.context["adminform"].form.errors
        assert set(errors) == {"param_base_url"}, errors
        assert peer.client_secret not in html_of(refused)  # not even put back into the form
        missing = admin_client.post(add, rest_form(peer, param_client_id=""))
        assert "param_client_id" in missing.context["adminform"].form.errors

        response = admin_client.post(add, rest_form(peer), follow=True)
        integration = Integration.objects.get(name="North SIS API")
        assert response.redirect_chain[-1][0] == admin_url("integration_change", integration.pk)
        assert integration.district == north.district
        assert integration.params["base_url"] == peer.base_url
        assert integration.params["page_size"] == 200
        assert services.integration_secrets(integration) == {"client_secret": peer.client_secret}
        assert integration.mappings.filter(entity="student", current__isnull=False).exists()
        html = html_of(response)
        assert peer.client_secret not in html
        assert "integration-stored" in html and ">stored<" in html

        tested = admin_client.post(admin_url("integration_test", integration.pk), follow=True)
        (message,) = messages_of(tested)
        assert message.startswith("Connection test succeeded: Connected")
        assert "OK" in html_of(tested)  # the last test on the page

        # Edit leaving the secret empty: the stored one is kept.
        change = admin_url("integration_change", integration.pk)
        data = rest_form(peer, name="North SIS", param_client_secret="", is_active="on")
        del data["source_system"]  # read-only once created: it is the rows' lineage
        saved = admin_client.post(change, data, follow=True)
        assert saved.status_code == 200, saved.context["adminform"].form.errors
        integration.refresh_from_db()
        assert integration.name == "North SIS"
        assert services.integration_secrets(integration)["client_secret"] == peer.client_secret

        # A wrong secret: saved, and the test says the credentials were rejected.
        admin_client.post(change, {**data, "param_client_secret": "wrong-secret-123"})
        failed = admin_client.post(admin_url("integration_test", integration.pk), follow=True)
        message = messages_of(failed)[-1]
        assert message.startswith("Connection test failed:") and "credentials rejected" in message

        # The secret is in no page: change form, list, mappings (history: see below).
        for page in (
            change,
            admin_url("integration_changelist"),
            admin_url("integration_mapping", integration.pk, "student"),
        ):
            text = html_of(admin_client.get(page))
            assert "wrong-secret-123" not in text and peer.client_secret not in text, page


def test_secrets_are_not_in_the_history_pages(admin_client, rows, system):
    integration = services.integration_create(
        district=rows.integration.district,
        name="API",
        connector_type="oneroster_rest",
        source_system="sis-api",
        params={
            "base_url": "https://sis.example.org/ims/oneroster/rostering/v1p2",
            "token_url": "https://sis.example.org/token",
            "client_id": "hub",
            "client_secret": "a-long-client-secret-value-0123456789",
        },
        actor=system,
    )
    definition = definition_for(rows.integration, system, name="Live", schedule_kind="event")
    pages = html_of(admin_client.get(admin_url("integration_history", integration.pk)))
    pages += html_of(admin_client.get(admin_url("syncdefinition_history", definition.pk)))
    assert "0123456789" not in pages
    assert definition.inbound_secret[-12:] not in pages


def test_a_superuser_chooses_the_district(client, north, south, admin_user):
    client.force_login(admin_user)
    page = client.get(admin_url("integration_add") + "?type=oneroster_csv")
    assert page.status_code == 200 and 'name="district"' in html_of(page)
    client.post(
        admin_url("integration_add") + "?type=oneroster_csv",
        {
            "district": south.district.pk,
            "name": "South CSV",
            "source_system": SOURCE,
            "param_source": "upload",
            "param_encoding": "auto",
        },
    )
    assert Integration.objects.get(name="South CSV").district == south.district


def test_the_change_page_shows_health(admin_client, rows):
    integration = rows.integration
    Integration.objects.filter(pk=integration.pk).update(
        circuit_state="open",
        circuit_opened_at=timezone.now(),
        consecutive_failures=3,
        last_error="credentials rejected: invalid_client",
        last_failure_at=timezone.now(),
    )
    make_run(rows.definition, RunStatus.FAILED)
    make_run(rows.definition, RunStatus.SUCCEEDED)
    html = html_of(admin_client.get(admin_url("integration_change", integration.pk)))
    assert 'integration-badge integration-bad">Open' in html
    assert "credentials rejected: invalid_client" in html
    # partial + failed + succeeded (the held and running runs have not finished).
    assert "67% of the last 3 runs (2 succeeded)" in html
    assert "Nightly roster" in html  # its sync definitions
    assert admin_url("integration_mapping", integration.pk, "student") in html
    listed = html_of(admin_client.get(admin_url("integration_changelist")))
    assert "OneRoster 1.2 CSV (zip)" in listed and ">Open<" in listed
    assert admin_url("syncrun_change", SyncRun.objects.order_by("-id").first().pk) in listed


def test_a_duplicate_source_system_is_an_error_not_a_crash(admin_client, rows):
    response = admin_client.post(
        admin_url("integration_add") + "?type=oneroster_csv",
        {
            "name": "Second",
            "source_system": SOURCE,
            "param_source": "upload",
            "param_encoding": "auto",
        },
    )
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert "already uses this source system name" in str(form.errors)
    assert Integration.objects.filter(name="Second").count() == 0


# --- mappings and crosswalks ---------------------------------------------------------------


def test_mapping_editor_preview_save_and_restore(admin_client, rows):
    integration = rows.integration
    page = admin_url("integration_mapping", integration.pk, "student")
    mapping = integration.mappings.get(entity="student")
    first = mapping.current
    response = admin_client.get(page)
    rules_text = response.context["form"]["rules"].value()
    assert rules_text == json.dumps(first.rules, indent=2, ensure_ascii=False)
    rules = json.loads(rules_text)

    # Preview: the rules over pasted rows; a bad date is an error on its cell.
    sample_rows = [dict.fromkeys({f for r in rules for f in _sources(r)}, "") for _ in range(2)]
    birth = next(r for r in rules if r["target"] == "birth_date")
    birth_field = _sources(birth)[0]
    sample_rows[0][birth_field] = "2011-03-04"
    sample_rows[1][birth_field] = "not a date"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(sample_rows[0]))
    writer.writeheader()
    writer.writerows(sample_rows)
    preview = admin_client.post(
        page, {"rules": rules_text, "sample": out.getvalue(), "_preview": "1"}
    )
    assert preview.status_code == 200
    table = preview.context["preview"]
    birth_row = next(r for r in table["rows"] if r["target"] == "birth_date")
    assert birth_row["cells"][0]["value"] == "2011-03-04" and not birth_row["cells"][0]["error"]
    assert "not a date" in birth_row["cells"][1]["error"]
    assert 'class="integration-error"' in html_of(preview)
    mapping.refresh_from_db()
    assert mapping.current_id == first.pk  # a preview saves nothing

    # Saving broken rules lists every problem and keeps what was typed.
    broken = [*rules, {"target": "no_such_field", "source": "x"}, {"target": "state_id"}]
    bad = admin_client.post(page, {"rules": json.dumps(broken), "_save": "1"})
    assert bad.status_code == 200 and len(bad.context["problems"]) >= 1
    assert "no_such_field" in html_of(bad)
    not_json = admin_client.post(page, {"rules": "[{", "_save": "1"})
    assert "Not valid JSON" in str(not_json.context["form"].errors["rules"])

    changed = [r for r in rules if r["target"] != "middle_name"]
    saved = admin_client.post(
        page, {"rules": json.dumps(changed), "note": "no middle names", "_save": "1"}, follow=True
    )
    mapping.refresh_from_db()
    assert mapping.current.number == 2 and mapping.current.note == "no middle names"
    assert messages_of(saved) == ["Saved as version 2 of the mapping."]
    history = html_of(saved)
    assert "no middle names" in history and "connector default" in history

    restored = admin_client.post(
        admin_url("integration_mapping_restore", integration.pk, "student", first.pk), follow=True
    )
    mapping.refresh_from_db()
    assert mapping.current.number == 3 and mapping.current.rules == first.rules
    assert mapping.current.note == "restored from v1"
    assert messages_of(restored) == ["Version 1 restored as version 3."]
    assert (
        admin_client.get(
            admin_url("integration_mapping", integration.pk, "daily_attendance")
        ).status_code
        == 404
    )  # the CSV connector does not read attendance


def _sources(rule) -> list[str]:
    source = rule.get("source")
    if isinstance(source, list):
        return source
    return [source] if source else []


def test_crosswalks_are_saved_through_the_services(admin_client, north):
    add = admin_url("crosswalk_add")
    bad = admin_client.post(add, {"name": "race", "values": '{"1": 7}'})
    assert "must be text" in str(bad.context["adminform"].form.errors["values"])
    admin_client.post(
        add, {"name": "race", "description": "SIS race codes", "values": '{"1": "HI7"}'}
    )
    crosswalk = Crosswalk.objects.get(name="race")
    assert crosswalk.district == north.district and crosswalk.values == {"1": "HI7"}
    html = html_of(admin_client.get(admin_url("crosswalk_change", crosswalk.pk)))
    assert "{\n  &quot;1&quot;: &quot;HI7&quot;\n}" in html  # pretty-printed


# --- sync definitions -------------------------------------------------------------------------


def definition_form(**overrides) -> dict:
    data = {
        "name": "Hourly roster",
        "entities": ["school", "student", "enrollment"],
        "mode": "full",
        "direction": "one_way",
        "conflict_policy": "source_wins",
        "schedule_kind": "interval",
        "interval_minutes": "60",
        "crontab": "",
        "hold_removal_pct": "10",
        "hold_change_pct": "100",
        "hold_min_rows": "20",
        "is_active": "on",
    }
    data.update(overrides)
    return data


def test_definitions_get_their_schedule_and_errors_on_fields(admin_client, rows):
    integration = rows.integration
    chooser = html_of(admin_client.get(admin_url("syncdefinition_add")))
    assert f"?integration={integration.pk}" in chooser
    add = admin_url("syncdefinition_add") + f"?integration={integration.pk}"
    form_page = html_of(admin_client.get(add))
    # Only what the connector reads is offered.
    assert 'value="student_demographic"' in form_page
    assert 'value="daily_attendance"' not in form_page

    bad = admin_client.post(add, definition_form(schedule_kind="crontab", crontab="every night"))
    errors = bad.context["adminform"].form.errors
    assert set(errors) == {"crontab"} and "five fields" in str(errors["crontab"])
    incremental = admin_client.post(add, definition_form(mode="incremental"))
    assert "no change tracking" in str(incremental.context["adminform"].form.errors["mode"])

    response = admin_client.post(add, definition_form(), follow=True)
    definition = SyncDefinition.objects.get(name="Hourly roster")
    assert definition.integration == integration
    assert definition.entities == ["school", "student", "enrollment"]
    task = PeriodicTask.objects.get(pk=definition.periodic_task_id)
    assert task.interval.every == 60 and json.loads(task.args) == [definition.pk]
    assert task.name in html_of(response)

    change = admin_url("syncdefinition_change", definition.pk)
    admin_client.post(change, definition_form(schedule_kind="crontab", crontab="30 2 * * 1-5"))
    task.refresh_from_db()
    assert task.crontab.minute == "30" and task.crontab.day_of_week == "1-5"
    admin_client.post(change, definition_form(schedule_kind="manual"))
    assert not PeriodicTask.objects.filter(pk=task.pk).exists()

    # Deleting a definition deletes its beat task too.
    admin_client.post(change, definition_form())
    definition.refresh_from_db()
    task_id = definition.periodic_task_id
    admin_client.post(admin_url("syncdefinition_delete", definition.pk), {"post": "yes"})
    assert not SyncDefinition.objects.filter(pk=definition.pk).exists()
    assert not PeriodicTask.objects.filter(pk=task_id).exists()


def test_deleting_an_integration_removes_its_beat_tasks(admin_client, rows, system):
    hourly = definition_for(
        rows.integration, system, name="Hourly", schedule_kind="interval", interval_minutes=60
    )
    task_id = hourly.periodic_task_id
    assert task_id is not None
    page = admin_client.get(admin_url("integration_delete", rows.integration.pk))
    assert page.status_code == 200
    admin_client.post(admin_url("integration_delete", rows.integration.pk), {"post": "yes"})
    assert not Integration.objects.filter(pk=rows.integration.pk).exists()
    assert not SyncRun.objects.filter(pk=rows.done.pk).exists()
    assert not PeriodicTask.objects.filter(pk=task_id).exists()


def test_an_event_driven_definition_shows_its_secret_once(admin_client, rows):
    add = admin_url("syncdefinition_add") + f"?integration={rows.integration.pk}"
    response = admin_client.post(add, definition_form(schedule_kind="event", name="Live"))
    definition = SyncDefinition.objects.get(name="Live")
    html = html_of(response)
    assert definition.inbound_secret and definition.inbound_secret in html
    inbound = reverse("integrations:inbound", args=[definition.pk])
    assert f"http://testserver{inbound}" in html
    assert definition.periodic_task_id is None
    # Never again: not on its page, not after another save.
    change = admin_url("syncdefinition_change", definition.pk)
    page = html_of(admin_client.get(change))
    assert definition.inbound_secret not in page and inbound in page
    again = admin_client.post(
        change, definition_form(schedule_kind="event", name="Live"), follow=True
    )
    assert definition.inbound_secret not in html_of(again)


# --- runs ------------------------------------------------------------------------------------


def test_progress_json_and_the_live_bar(admin_client, rows):
    progress = admin_client.get(admin_url("syncrun_progress", rows.running.pk))
    assert "no-store" in progress["Cache-Control"]
    data = progress.json()
    assert {k: data[k] for k in ("processed", "total", "percent", "status", "active")} == {
        "processed": 50,
        "total": 200,
        "percent": 25,
        "status": "running",
        "active": True,
    }
    SyncRun.objects.filter(pk=rows.running.pk).update(processed=150, phase="Merging student")
    data = admin_client.get(admin_url("syncrun_progress", rows.running.pk)).json()
    assert data["percent"] == 75 and data["phase"] == "Merging student"
    SyncRun.objects.filter(pk=rows.running.pk).update(status=RunStatus.SUCCEEDED)
    data = admin_client.get(admin_url("syncrun_progress", rows.running.pk)).json()
    assert data["percent"] == 100 and data["active"] is False and data["finished"] is True

    listed = html_of(admin_client.get(admin_url("syncrun_changelist")))
    assert 'data-progress-url="' not in listed  # nothing is running now
    make_run(rows.definition, RunStatus.QUEUED)
    listed = html_of(admin_client.get(admin_url("syncrun_changelist")))
    assert listed.count('data-progress-url="') == 1 and "integrations/progress.js" in listed
    assert "Waiting for a worker" in listed


def test_a_finished_run_page_shows_its_diff_log_and_errors(admin_client, rows):
    for n in range(60):
        record_error(rows.done, line=10 + n, source_id=f"s{100 + n}")
    page = admin_client.get(admin_url("syncrun_change", rows.done.pk))
    html = html_of(page)
    assert "Newman" in html and "Olds" in html  # update: before -> after
    assert "Nia" in html and "s7" in html  # an insert's fields, a removal
    assert "08:00:02 merged" in html
    assert page.context["errors_count"] == 61 and len(page.context["errors_page"]) == 50
    assert "Download errors as CSV" in html and "Roll back" in html
    assert "Re-run failed records" in html and "Approve" not in html
    second = admin_client.get(admin_url("syncrun_change", rows.done.pk) + "?errors_page=2")
    assert len(second.context["errors_page"]) == 11
    held = html_of(admin_client.get(admin_url("syncrun_change", rows.held.pk)))
    assert "Approve" in held and "Discard" in held and "Roll back" not in held
    assert "would change" in held


def test_errors_download_as_csv(admin_client, rows):
    record_error(rows.done, entity="enrollment", line=9, field="school", reason="=HYPERLINK(1)")
    record_error(rows.done, entity="student", line=2, source_id="s1", status=ErrorStatus.DISMISSED)
    response = admin_client.get(admin_url("syncrun_errors_csv", rows.done.pk))
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert f"sync-run-{rows.done.pk}-errors.csv" in response["Content-Disposition"]
    body = b"".join(response.streaming_content).decode()
    lines = list(csv.reader(io.StringIO(body)))
    assert lines[0] == ["entity", "file", "line", "field", "reason", "source_id", "status"]
    assert lines[1:] == [
        ["enrollment", "users.csv", "9", "school", "'=HYPERLINK(1)", "s3", "open"],
        [
            "student",
            "users.csv",
            "2",
            "grade_level",
            "'13' is not a grade level",
            "s1",
            "dismissed",
        ],
        ["student", "users.csv", "4", "grade_level", "'13' is not a grade level", "s3", "open"],
    ]


def test_discard_and_rollback_buttons_call_the_services(admin_client, north, rows):
    confirm = admin_client.get(admin_url("syncrun_discard", rows.held.pk))
    assert "Newman" in html_of(confirm)  # the held preview comes first
    response = admin_client.post(admin_url("syncrun_discard", rows.held.pk), follow=True)
    rows.held.refresh_from_db()
    assert rows.held.status == RunStatus.DISCARDED
    assert rows.held.decided_by == north.users["district_admin"]
    assert f"Run #{rows.held.pk} was discarded" in messages_of(response)[0]
    again = admin_client.post(admin_url("syncrun_approve", rows.held.pk))
    assert "is discarded" in html_of(again)  # nothing to approve any more

    confirm = html_of(admin_client.get(admin_url("syncrun_rollback", rows.done.pk)))
    assert "Undo run" in confirm and "A worker does it, in your name" in confirm
    response = admin_client.post(admin_url("syncrun_rollback", rows.done.pk), follow=True)
    assert response.redirect_chain[-1][0] == admin_url("syncrun_change", rows.done.pk)
    assert f"Run #{rows.done.pk}: rollback requested" in messages_of(response)[0]
    rows.done.refresh_from_db()
    # Recorded, not done inside the request: a worker does it, in the asker's name.
    admin = north.users["district_admin"]
    assert rows.done.status == RunStatus.ROLLING_BACK
    assert rows.done.rollback_requested_by == admin and rows.done.rollback_requested_at
    page = html_of(response)
    assert 'data-progress-url="' in page and "Waiting for a worker · Rollback requested" in page
    assert "rollback requested by" in page and 'id="run-rollback"' not in page
    progress = admin_client.get(admin_url("syncrun_progress", rows.done.pk)).json()
    assert progress["status"] == "rolling_back" and progress["active"] is True
    assert progress["status_label"] == "Rolling back" and not progress["finished"]
    assert progress["phase"] == "Rollback requested"
    # A second press changes nothing and says why.
    again = admin_client.post(admin_url("syncrun_rollback", rows.done.pk))
    assert "This run is rolling back" in html_of(again)
    assert tasks.rollback_run(rows.done.pk) == RunStatus.ROLLED_BACK  # the worker's task body
    rows.done.refresh_from_db()
    assert rows.done.status == RunStatus.ROLLED_BACK
    assert rows.done.message.startswith(f"Rolled back by {admin}")
    progress = admin_client.get(admin_url("syncrun_progress", rows.done.pk)).json()
    assert progress["active"] is False and progress["finished"] is True


def test_a_real_zip_run_now_held_approved_and_rolled_back(admin_client, north, system, media):
    integration = csv_integration(north, system)
    definition = definition_for(integration, system, hold_min_rows=20)
    run_page = admin_url("syncdefinition_run", definition.pk)
    form = html_of(admin_client.get(run_page))
    assert 'type="file" name="upload"' in form
    missing = admin_client.post(run_page, {})
    assert "This field is required" in str(missing.context["form"].errors["upload"])

    def run_now(roster, name):
        path = write_zip(media / name, roster)
        upload = SimpleUploadedFile(name, path.read_bytes(), content_type="application/zip")
        response = admin_client.post(run_page, {"upload": upload})
        run = SyncRun.objects.filter(definition=definition).order_by("-id").first()
        assert response.status_code == 302 and response["Location"] == admin_url(
            "syncrun_change", run.pk
        )
        assert run.status == RunStatus.QUEUED and run.requested_by_id is not None
        return services.run_execute(run=run, actor=system)  # the worker's task body

    roster = build_roster(students=40)
    first = run_now(roster, "r1.zip")
    assert first.status == RunStatus.SUCCEEDED, first.message
    page = html_of(admin_client.get(admin_url("syncrun_change", first.pk)))
    assert "Inserted" in page and "Students" in page and "Roll back" in page

    # Rollover gone wrong: half the students vanish from the files.
    students_ids = sorted(
        r["userSourcedId"] for r in roster.rows("roles") if r["role"] == "student"
    )
    gone = set(students_ids[::2])
    for name, key in [
        ("users", "sourcedId"),
        ("roles", "userSourcedId"),
        ("demographics", "sourcedId"),
        ("enrollments", "userSourcedId"),
    ]:
        roster.files[name] = [row for row in roster.rows(name) if row[key] not in gone]
    held = run_now(roster, "r2.zip")
    assert held.status == RunStatus.HELD, held.message
    approve = html_of(admin_client.get(admin_url("syncrun_approve", held.pk)))
    assert "remove 20 of 40" in approve and "Removed" in approve
    response = admin_client.post(admin_url("syncrun_approve", held.pk), follow=True)
    assert messages_of(response)[0].startswith(f"Run #{held.pk} was approved")
    held.refresh_from_db()
    # Not applied inside the request: a worker does it, in the approver's name.
    assert held.status == RunStatus.RUNNING
    assert held.decided_by == north.users["district_admin"]
    progress = admin_client.get(admin_url("syncrun_progress", held.pk)).json()
    assert "waiting for a worker" in progress["phase"]
    tasks.apply_approved_run(held.pk)  # the worker's task body
    held.refresh_from_db()
    assert held.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL), held.message
    students = Student.objects.filter(district=north.district, source_system=SOURCE)
    assert students.filter(is_active=True).count() == 20

    admin_client.post(admin_url("syncrun_rollback", held.pk))
    held.refresh_from_db()
    assert held.status == RunStatus.ROLLING_BACK
    assert students.filter(is_active=True).count() == 20  # nothing undone in the request
    tasks.rollback_run(held.pk)  # the worker's task body
    held.refresh_from_db()
    assert held.status == RunStatus.ROLLED_BACK
    assert students.filter(is_active=True).count() == 40


def test_a_real_runs_errors_csv_and_rerun_of_failed_records(admin_client, north, system, media):
    integration = csv_integration(north, system)
    definition = definition_for(integration, system)
    roster = build_roster(students=10)
    roster.find("users", "s3")["grades"] = "13"
    path = write_zip(media / "r.zip", roster)
    with open(path, "rb") as fh:
        from django.core.files import File

        run = services.run_start(definition=definition, actor=system, upload=File(fh, "r.zip"))
    run = services.run_execute(run=run, actor=system)
    assert run.status == RunStatus.PARTIAL
    body = b"".join(
        admin_client.get(admin_url("syncrun_errors_csv", run.pk)).streaming_content
    ).decode()
    lines = list(csv.DictReader(io.StringIO(body)))
    assert len(lines) == run.errors.count() >= 2
    student = next(line for line in lines if line["entity"] == "student")
    assert student["file"] == "users.csv" and student["field"] == "grade_level"
    assert "'13'" in student["reason"] and student["source_id"] == "s3"
    assert student["status"] == "open" and int(student["line"]) > 1

    assert "Re-run failed records" in html_of(admin_client.get(admin_url("syncrun_change", run.pk)))
    response = admin_client.post(admin_url("syncrun_rerun", run.pk))
    retry = SyncRun.objects.filter(definition=definition).order_by("-id").first()
    assert retry.pk != run.pk and retry.trigger == RunTrigger.RETRY
    assert response["Location"] == admin_url("syncrun_change", retry.pk)


def test_dismissing_errors_from_the_list(admin_client, rows):
    other = record_error(rows.done, source_id="s8")
    response = admin_client.post(
        admin_url("recorderror_changelist"),
        {"action": "dismiss", "_selected_action": [rows.error.pk, other.pk]},
        follow=True,
    )
    assert "Dismissed 2 open errors" in messages_of(response)[0]
    assert set(RecordError.objects.filter(run=rows.done).values_list("status", flat=True)) == {
        ErrorStatus.DISMISSED
    }
    filtered = admin_client.get(admin_url("recorderror_changelist") + f"?run={rows.done.pk}")
    assert len(filtered.context["cl"].result_list) == 2


# --- identity reviews ------------------------------------------------------------------------


def test_identity_reviews_side_by_side_merge_undo_and_distinct(admin_client, north, rows):
    listed = admin_client.get(admin_url("identityreview_changelist"))
    html = html_of(listed)
    assert rows.review in listed.context["cl"].result_list
    assert north.a1.student_number in html and "777" in html  # incoming beside existing
    assert "integration-differs" in html  # the student numbers differ
    assert admin_url("identityreview_merge", rows.review.pk) in html

    # The list's Merge button posts the list's own form to the merge view.
    response = admin_client.post(
        admin_url("identityreview_merge", rows.review.pk) + "?from=list", follow=True
    )
    assert response.redirect_chain[-1][0] == admin_url("identityreview_changelist")
    rows.review.refresh_from_db()
    north.a1.refresh_from_db()
    assert rows.review.status == ReviewStatus.MERGED
    assert (north.a1.source_system, north.a1.source_id) == (SOURCE, "s2")
    # Merged reviews leave the default (open) list.
    assert (
        rows.review
        not in admin_client.get(admin_url("identityreview_changelist")).context["cl"].result_list
    )

    page = html_of(admin_client.get(admin_url("identityreview_change", rows.review.pk)))
    assert "Undo merge" in page
    admin_client.post(admin_url("identityreview_unmerge", rows.review.pk))
    rows.review.refresh_from_db()
    north.a1.refresh_from_db()
    assert rows.review.status == ReviewStatus.UNMERGED and north.a1.source_id == ""

    second = IdentityReview.objects.create(
        district=north.district,
        integration=rows.integration,
        entity="student",
        run=rows.done,
        source_id="s5",
        incoming={"first_name": north.b1.first_name},
        candidate_id=north.b1.pk,
        reason="same name and birth date",
    )
    response = admin_client.post(admin_url("identityreview_distinct", second.pk), follow=True)
    assert messages_of(response)[-1] == (
        "The incoming record s5 is a different person: the next run creates them."
    )
    second.refresh_from_db()
    assert second.status == ReviewStatus.DISTINCT
    assert admin_client.get(admin_url("identityreview_merge", second.pk)).status_code == 405


# --- the signed inbound endpoint -------------------------------------------------------------


def sign(secret: str, msg_id: str, stamp: int, body: bytes) -> str:
    """A ``webhook-signature`` value as a source using a Standard Webhooks library sends it."""
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, UTC), body.decode())


@pytest.fixture
def event_definition(rows, system):
    return definition_for(rows.integration, system, name="Live", schedule_kind="event")


def post_event(client, definition, *, body=b'{"type": "enrollment.changed"}', **headers):
    return client.post(
        reverse("integrations:inbound", args=[definition.pk]),
        data=body,
        content_type="application/json",
        headers=headers,
    )


def signed(definition, body=b'{"type": "enrollment.changed"}', *, stamp=None, secret=None):
    stamp = int(time.time()) if stamp is None else stamp
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret or definition.inbound_secret, "msg_1", stamp, body),
    }


def test_inbound_valid_signature_queues_a_run(client, event_definition):
    response = post_event(client, event_definition, **signed(event_definition))
    assert response.status_code == 202
    run = SyncRun.objects.get(pk=response.json()["run"])
    assert run.definition == event_definition and run.status == RunStatus.QUEUED
    assert run.trigger == RunTrigger.EVENT
    # A second event while that run waits joins it.
    again = post_event(client, event_definition, **signed(event_definition))
    assert again.status_code == 202 and again.json() == {"run": None}


def test_inbound_refusals_say_why(client, rows, event_definition):
    bad = post_event(
        client,
        event_definition,
        **signed(
            event_definition,
            secret="whsec_" + base64.b64encode(b"another key entirely, 32 bytes!").decode(),
        ),
    )
    assert bad.status_code == 401 and "does not match" in bad.json()["error"]
    stale = signed(event_definition, stamp=int(time.time()) - 3600)
    old = post_event(client, event_definition, **stale)
    assert old.status_code == 401 and "too far from now" in old.json()["error"]
    headers = signed(event_definition)
    del headers["webhook-signature"]
    missing = post_event(client, event_definition, **headers)
    assert missing.status_code == 400 and "webhook-signature" in missing.json()["error"]
    tampered = post_event(
        client, event_definition, body=b'{"type": "other"}', **signed(event_definition)
    )
    assert tampered.status_code == 401
    # Not event-driven, or no such definition: 404.
    assert post_event(client, rows.definition, **signed(event_definition)).status_code == 404
    event_definition.pk += 10_000
    assert post_event(client, event_definition, **signed(event_definition)).status_code == 404
    assert not SyncRun.objects.filter(trigger=RunTrigger.EVENT).exists()
    get = client.get(reverse("integrations:inbound", args=[rows.definition.pk]))
    assert get.status_code == 405


def test_inbound_accepts_a_standard_webhooks_library_signature(client, event_definition):
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    body = '{"type": "enrollment.changed"}'
    now = datetime.now(UTC)
    signature = Webhook(event_definition.inbound_secret).sign("msg_2", now, body)
    response = post_event(
        client,
        event_definition,
        body=body.encode(),
        **{
            "webhook-id": "msg_2",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        },
    )
    assert response.status_code == 202, response.json()
