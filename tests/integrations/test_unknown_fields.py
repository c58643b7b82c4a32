"""Source fields the protocol does not define draw a warning, never a failure, on the OneRoster
REST and Ed-Fi connectors, as unknown columns do on the OneRoster CSV one.

The test servers serve a record with a field their specification does not have (a vendor's
addition); a whole run through the services must succeed, name the field in the run's
warnings, and sync the record as if the field were not there. A mapping may still use such a
field: the connectors hand it over under its own name.
"""

from __future__ import annotations

import pytest

from bxos.schools.models import Student
from integrations import services
from integrations.choices import RunStatus, SyncMode
from integrations.connectors.base import EntityRead
from integrations.connectors.edfi import EdFiConnector
from integrations.connectors.oneroster_rest import OneRosterRestConnector
from integrations.models import SyncDefinition
from tests.integrations.peers.edfi import EdFiPeer
from tests.integrations.peers.oneroster_rest import OneRosterPeer

pytestmark = pytest.mark.usefixtures("loopback")


def execute(definition, actor):
    run = services.run_start(definition=definition, actor=actor)
    run = services.run_execute(run=run, actor=actor)
    run.refresh_from_db()
    return run


def records(read: EntityRead) -> dict[str, dict]:
    return {r.source_id: r.fields for r in read.records}


# --- OneRoster REST -----------------------------------------------------------------------------


@pytest.fixture
def oneroster():
    with OneRosterPeer() as peer:
        yield peer


def rest_params(peer) -> dict:
    return {
        "base_url": peer.base_url,
        "token_url": peer.token_url,
        "client_id": peer.client_id,
        "client_secret": peer.client_secret,
    }


def test_rest_hands_an_unknown_attribute_over_and_declares_the_known_ones(oneroster):
    student = oneroster.roster.users_with_role("student")[0].sourced_id
    oneroster.roster.change("users", student, extra={"lunchNumber": "4711", "house": {"x": 1}})
    connector = OneRosterRestConnector(params=rest_params(oneroster))
    window = connector.begin(mode="full", cursor=None)
    read = connector.read("student", window)
    fields = records(read)[student]
    assert fields["lunchNumber"] == "4711"
    assert fields["house"] == '{"x":1}'
    assert fields["givenName"]  # the defined ones as ever
    assert "lunchNumber" not in read.known_fields and "house" not in read.known_fields
    assert {"givenName", "orgSourcedIds", "birthDate", "userIds"} <= read.known_fields
    # Other students carry no such field.
    assert all("lunchNumber" not in f for sid, f in records(read).items() if sid != student)
    connector.close()


def test_rest_unknown_attributes_are_a_warning_and_the_run_succeeds(north, system, oneroster):
    roster = oneroster.roster
    student = roster.users_with_role("student")[0].sourced_id
    roster.change("users", student, extra={"lunchNumber": "4711"})
    org = next(o for o in roster.collections["orgs"].values() if o.type == "school").sourced_id
    roster.change("orgs", org, extra={"mascot": "Otters"})
    integration = services.integration_create(
        district=north.district,
        name="Riverside SIS (REST)",
        connector_type="oneroster_rest",
        source_system="riverside",
        params=rest_params(oneroster),
        actor=system,
    )
    definition = services.definition_save(
        definition=SyncDefinition(
            integration=integration,
            name="Roster",
            entities=["school", "academic_session", "student"],
            mode=SyncMode.FULL,
        ),
        actor=system,
    )
    run = execute(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert run.failed_count == 0
    assert run.warnings == [
        "school: unknown field(s) ignored: mascot",
        "student: unknown field(s) ignored: lunchNumber",
    ]
    assert Student.objects.filter(
        district=north.district, source_system="riverside", source_id=student
    ).exists()

    # A run without the extra fields has no warnings.
    roster.change("users", student, extra={})
    roster.change("orgs", org, extra={})
    clean = execute(definition, system)
    assert clean.status == RunStatus.SUCCEEDED and clean.warnings == []


# --- Ed-Fi --------------------------------------------------------------------------------------


@pytest.fixture
def edfi():
    with EdFiPeer() as peer:
        yield peer


def edfi_params(peer) -> dict:
    return {"base_url": peer.url, "client_key": peer.client_id, "client_secret": peer.client_secret}


def test_edfi_declares_the_data_standard_fields_and_flags_others(edfi):
    chloe = edfi.find("students", studentUniqueId="604823")
    edfi.update("students", chloe["id"], {"favoriteColor": "teal"})
    connector = EdFiConnector(params=edfi_params(edfi))
    window = connector.begin(mode="full", cursor=None)
    read = connector.read("student", window)
    fields = records(read)["604823"]
    assert fields["favoriteColor"] == "teal"
    known = read.known_fields
    assert "favoriteColor" not in known
    # Everything else is the standard's (fields the connector derives start with "_").
    assert all(n in known for n in fields if n != "favoriteColor" and not n.startswith("_"))
    # Members of a reference the standard defines are known; the incident's enrichment too.
    incidents = connector.read("incident", window)
    assert "schoolReference.schoolId" in incidents.known_fields
    assert "disciplineAction.disciplineActionLength" in incidents.known_fields
    assert "schoolReference2.schoolId" not in incidents.known_fields
    for fields in records(incidents).values():
        assert all(n in incidents.known_fields for n in fields if not n.startswith("_"))
    connector.close()


def test_edfi_unknown_fields_are_a_warning_and_the_run_succeeds(north, system, edfi):
    chloe = edfi.find("students", studentUniqueId="604823")
    edfi.update("students", chloe["id"], {"favoriteColor": "teal", "locker": {"number": 12}})
    lincoln = edfi.find("schools", schoolId=255901001)
    edfi.update("schools", lincoln["id"], {"mascot": "Otters"})
    integration = services.integration_create(
        district=north.district,
        name="State Ed-Fi",
        connector_type="edfi",
        source_system="edfi",
        params=edfi_params(edfi),
        actor=system,
    )
    definition = services.definition_save(
        definition=SyncDefinition(
            integration=integration, name="Ed-Fi", entities=["school", "student"]
        ),
        actor=system,
    )
    run = execute(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert run.failed_count == 0
    assert run.warnings == [
        "school: unknown field(s) ignored: mascot",
        "student: unknown field(s) ignored: favoriteColor, locker.number",
    ]
    student = Student.objects.get(district=north.district, source_system="edfi", source_id="604823")
    assert (student.first_name, student.last_name) == ("Chloe", "Nguyen")
    assert Student.objects.filter(district=north.district, source_system="edfi").count() == 10
