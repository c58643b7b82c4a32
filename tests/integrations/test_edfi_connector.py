"""The Ed-Fi ODS/API v7 connector against an Ed-Fi-style server on 127.0.0.1 (peers/edfi.py).

No database: the connector only speaks HTTP and hands records over. Expected source ids are
composed here from the peer's items, independently of the connector's helpers.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from integrations.connectors.base import ConnectorError, CredentialsRejected, Window
from integrations.connectors.edfi import EdFiConnector, _collapse, normalize_timestamp
from tests.integrations.peers.edfi import YEAR, EdFiPeer

pytestmark = pytest.mark.usefixtures("loopback")


def make(peer: EdFiPeer, **params: Any) -> tuple[EdFiConnector, list[str], list[float]]:
    logs: list[str] = []
    sleeps: list[float] = []
    connector = EdFiConnector(
        params={
            "base_url": peer.url,
            "client_key": peer.client_id,
            "client_secret": peer.client_secret,
            **params,
        },
        state={},
        log=logs.append,
        sleep=sleeps.append,
    )
    return connector, logs, sleeps


def read_all(connector: EdFiConnector, entity: str, window: Window):
    result = connector.read(entity, window)
    records = list(result.records)
    return result, records


def ids(records) -> list[str]:
    return [r.source_id for r in records]


def code(uri: str) -> str:
    return uri.split("#", 1)[1]


# Expected source ids, composed from the peer's items.
def expected_ids(peer: EdFiPeer, entity: str) -> set[str]:
    if entity == "school":
        return {str(s["schoolId"]) for s in peer.items("schools")}
    if entity == "academic_session":
        # The hub's sessions are the district's: one per year and name, whatever the school.
        sessions = {f"{YEAR}|{s['sessionName']}" for s in peer.items("sessions")}
        periods = {
            f"{YEAR}|{code(g['gradingPeriodDescriptor'])}|{g['gradingPeriodName']}"
            for g in peer.items("gradingPeriods")
        }
        return sessions | periods | {f"schoolYear|{YEAR}"}
    if entity == "staff":
        return {s["staffUniqueId"] for s in peer.items("staffs")}
    if entity == "student":
        return {s["studentUniqueId"] for s in peer.items("students")}
    if entity == "enrollment":
        return {
            f"{a['schoolReference']['schoolId']}|{a['studentReference']['studentUniqueId']}|"
            f"{a['entryDate']}"
            for a in peer.items("studentSchoolAssociations")
        }
    if entity == "section":
        return {
            section_id(s["courseOfferingReference"], s["sectionIdentifier"])
            for s in peer.items("sections")
        }
    if entity == "section_enrollment":
        return {
            f"{section_id(a['sectionReference'], a['sectionReference']['sectionIdentifier'])}|"
            f"{a['studentReference']['studentUniqueId']}|{a['beginDate']}"
            for a in peer.items("studentSectionAssociations")
        }
    if entity == "daily_attendance":
        return {
            f"{e['schoolReference']['schoolId']}|{e['studentReference']['studentUniqueId']}|"
            f"{e['eventDate']}|{YEAR}|{e['sessionReference']['sessionName']}|"
            f"{code(e['attendanceEventCategoryDescriptor'])}"
            for e in peer.items("studentSchoolAttendanceEvents")
        }
    if entity == "grade":
        out = set()
        for g in peer.items("grades"):
            ssa = g["studentSectionAssociationReference"]
            gp = g["gradingPeriodReference"]
            out.add(
                f"{section_id(ssa, ssa['sectionIdentifier'])}|{ssa['studentUniqueId']}|"
                f"{ssa['beginDate']}|{gp['schoolYear']}|{code(gp['gradingPeriodDescriptor'])}|"
                f"{gp['gradingPeriodName']}|{code(g['gradeTypeDescriptor'])}"
            )
        return out
    if entity == "incident":
        return {
            f"{i['schoolReference']['schoolId']}|{i['incidentIdentifier']}"
            for i in peer.items("disciplineIncidents")
        }
    raise AssertionError(entity)


def section_id(ref: dict, identifier: str) -> str:
    school, year, session = ref["schoolId"], ref["schoolYear"], ref["sessionName"]
    return f"{school}|{year}|{session}|{ref['localCourseCode']}|{identifier}"


# --- Connection test ---------------------------------------------------------------------------


def test_connection_test_names_the_newest_change_version(peer):
    connector, _, _ = make(peer)
    message = connector.test()
    assert f"newest change version {peer.newest_change_version}" in message
    assert connector.state["token"]  # cached for the next calls
    token_calls = len(peer.requests_to("/oauth/token", "POST"))
    connector.test()
    assert len(peer.requests_to("/oauth/token", "POST")) == token_calls


def test_a_wrong_secret_is_credentials_rejected(peer):
    connector, _, _ = make(peer, client_secret="wrong")
    with pytest.raises(CredentialsRejected) as caught:
        connector.test()
    assert "credentials rejected" in str(caught.value)
    assert "invalid_client" in str(caught.value)
    assert caught.value.kind == "credentials"


def test_year_specific_routes(peer):
    peer.year_specific = True
    connector, _, _ = make(peer)
    with pytest.raises(ConnectorError) as caught:
        connector.test()
    assert "404" in str(caught.value)
    connector, _, _ = make(peer, school_year=YEAR)
    window = connector.begin(mode="full", cursor=None)
    _, records = read_all(connector, "student", window)
    assert len(records) == 10
    assert all(f"/data/v3/{YEAR}/ed-fi/" in r.path for r in peer.requests_to("/data/"))
    assert peer.requests_to(f"/changeQueries/v1/{YEAR}/availableChangeVersions")


# --- Full reads --------------------------------------------------------------------------------


@pytest.mark.parametrize("entity", EdFiConnector.entities)
def test_full_read_of_each_entity_equals_the_fixture(peer, entity):
    connector, _, _ = make(peer)
    window = connector.begin(mode="full", cursor=None)
    assert window.upper == window.cursor_after == str(peer.newest_change_version)
    result, records = read_all(connector, entity, window)
    assert result.complete is True
    assert result.key_changes == []
    assert not any(r.deleted for r in records)
    assert len(ids(records)) == len(set(ids(records))), "each source id once"
    assert set(ids(records)) == expected_ids(peer, entity)
    if entity != "academic_session":  # sessions arrive once per school, handed over once
        assert result.expected_total == len(
            [r for r in records if not r.source_id.startswith("schoolYear|")]
        )


def test_records_carry_flattened_fields_and_composed_references(peer):
    connector, _, _ = make(peer)
    window = connector.begin(mode="full", cursor=None)
    read = {
        e: {r.source_id: r.fields for r in read_all(connector, e, window)[1]}
        for e in EdFiConnector.entities
    }
    schools, students, sessions = read["school"], read["student"], read["academic_session"]
    sections = read["section"]

    lincoln = schools["255901001"]
    assert lincoln["nameOfInstitution"] == "Lincoln Elementary School"
    assert (lincoln["_gradeLow"], lincoln["_gradeHigh"]) == ("Kindergarten", "Fifth grade")
    assert (schools["255901107"]["_gradeLow"], schools["255901107"]["_gradeHigh"]) == (
        "Ninth grade",
        "Twelfth grade",
    )
    assert lincoln["_identificationCodes.NCES"] == "480000100001"
    assert lincoln["localEducationAgencyReference.localEducationAgencyId"] == 255901
    categories = json.loads(lincoln["schoolCategories"])  # lists of objects are JSON text
    assert categories == [
        {"schoolCategoryDescriptor": "uri://ed-fi.org/SchoolCategoryDescriptor#Elementary School"}
    ]
    assert lincoln["_etag"] and lincoln["_lastModifiedDate"].endswith("+00:00")

    assert students["604822"]["preferredFirstName"] == "Benny"
    assert students["604826"]["_gradeLevel"] == "Ninth grade"

    for fields in read["enrollment"].values():
        assert fields["_studentSourceId"] in students
        assert fields["_schoolSourceId"] in schools
        assert fields["_schoolYearSourceId"] == f"schoolYear|{YEAR}"
    transferred = read["enrollment"]["255901001|604824|2026-08-17"]
    assert transferred["exitWithdrawTypeDescriptor"].endswith("#Transferred to another district")

    fall = sessions[f"{YEAR}|2026-2027 Fall Semester"]
    assert (fall["_kind"], fall["_sessionKind"], fall["_parentSourceId"]) == (
        "session",
        "Fall Semester",
        f"schoolYear|{YEAR}",
    )
    q1 = sessions[f"{YEAR}|First Nine Weeks|Q1"]
    assert (q1["_kind"], q1["_sessionKind"], q1["_name"]) == (
        "gradingPeriod",
        "Grading Period",
        "Q1",
    )
    assert q1["_parentSourceId"] == f"{YEAR}|2026-2027 Fall Semester"
    year = sessions[f"schoolYear|{YEAR}"]
    assert (year["beginDate"], year["endDate"], year["_name"]) == (
        "2026-08-17",
        "2027-05-28",
        "2026-2027",
    )

    algebra = sections[f"255901107|{YEAR}|2026-2027 Fall Semester|ALG1|ALG1-01"]
    assert algebra["_sessionSourceId"] in sessions
    assert algebra["_schoolSourceId"] == "255901107"
    assert algebra["_classPeriods"] == "P3"
    assert algebra["locationReference.classroomIdentificationCode"] == "201"
    for fields in read["section_enrollment"].values():
        assert fields["_sectionSourceId"] in sections
        assert fields["_studentSourceId"] in students
    for fields in read["daily_attendance"].values():
        assert fields["_studentSourceId"] in students
        assert fields["_sessionSourceId"] in sessions
    for fields in read["grade"].values():
        assert fields["_gradingPeriodSourceId"] in sessions
        assert fields["_sectionSourceId"] in sections
        assert fields["_sectionEnrollmentSourceId"] in read["section_enrollment"]
        assert fields["numericGradeEarned"] == 85.0

    fight = read["incident"]["255901107|INC-0001"]
    assert fight["_studentSourceId"] == "604826"
    assert fight["_behaviorCode"] == "Fighting"
    assert fight["_disciplineCode"] == "Out of School Suspension"
    assert fight["disciplineAction.disciplineActionLength"] == 2.0
    no_action = read["incident"]["255901107|INC-0003"]
    assert no_action["_studentSourceId"] == "604828"  # from the behavior association
    assert "disciplineAction.disciplineDate" not in no_action


def test_paging_with_page_size_3_reads_each_item_once(peer):
    connector, _, _ = make(peer, page_size=3)
    progress: list[int] = []
    connector.progress = progress.append
    window = connector.begin(mode="full", cursor=None)
    _, records = read_all(connector, "section_enrollment", window)
    assert sorted(ids(records)) == sorted(expected_ids(peer, "section_enrollment"))
    assert len(records) == 20
    pages = [r.query for r in peer.requests_to("/studentSectionAssociations")]
    assert [p["offset"] for p in pages] == ["0", "3", "6", "9", "12", "15", "18"]
    assert {p["limit"] for p in pages} == {"3"}
    assert all("maxChangeVersion" not in p for p in pages)  # see _window_params
    assert sum(progress) == 20


def test_the_peer_refuses_a_limit_above_500_and_the_connector_never_sends_one(peer):
    token = httpx.post(
        f"{peer.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(peer.client_id, peer.client_secret),
    ).json()["access_token"]
    refused = httpx.get(
        f"{peer.url}/data/v3/ed-fi/students",
        params={"limit": 501},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert refused.status_code == 400
    assert "between 0 and 500" in refused.json()["errors"][0]

    before = len(peer.requests)
    connector, _, _ = make(peer, page_size=501)
    with pytest.raises(ConnectorError) as caught:
        connector.begin(mode="full", cursor=None)
    assert "page_size 501" in str(caught.value) and caught.value.kind == "input"
    assert len(peer.requests) == before  # refused before asking anything
    connector, _, _ = make(peer)
    window = connector.begin(mode="full", cursor=None)
    for entity in EdFiConnector.entities:
        read_all(connector, entity, window)
    limits = {int(r.query["limit"]) for r in peer.requests[before:] if "limit" in r.query}
    assert limits and max(limits) <= 500


# --- Incremental windows -----------------------------------------------------------------------


def test_incremental_window_returns_exactly_the_changes(peer):
    connector, _, _ = make(peer)
    cursor = connector.begin(mode="full", cursor=None).cursor_after

    ben = peer.find("students", studentUniqueId="604822")
    peer.update("students", ben["id"], {"lastSurname": "Okafor-Reid"})
    peer.insert(
        "students",
        {
            "studentUniqueId": "604899",
            "firstName": "Kai",
            "lastSurname": "Ito",
            "birthDate": "2012-02-02",
        },
    )
    gone_event = peer.items("studentSchoolAttendanceEvents")[0]
    peer.delete("studentSchoolAttendanceEvents", gone_event["id"])
    moved = peer.find("studentSchoolAssociations", studentUniqueId="604821")
    peer.update("studentSchoolAssociations", moved["id"], {"entryDate": "2026-08-24"})
    # A key change twice in the window folds to one pair.
    section = peer.find("sections", sectionIdentifier="BIO-02")
    peer.update("sections", section["id"], {"sectionIdentifier": "BIO-03"})
    peer.update("sections", section["id"], {"sectionIdentifier": "BIO-04"})

    window = connector.begin(mode="incremental", cursor=cursor)
    assert (window.mode, window.lower, window.upper) == (
        "incremental",
        cursor,
        str(peer.newest_change_version),
    )
    assert window.cursor_after == window.upper

    result, records = read_all(connector, "student", window)
    assert result.complete is False
    # 604821's enrollment changed (its entry grade may have): the student is read again too.
    assert sorted(ids(records)) == ["604821", "604822", "604899"]
    assert {r.source_id: r.fields["lastSurname"] for r in records}["604822"] == "Okafor-Reid"

    result, records = read_all(connector, "daily_attendance", window)
    assert [(r.source_id, r.deleted, r.fields) for r in records] == [
        (f"255901001|604821|2026-09-01|{YEAR}|2026-2027 Fall Semester|Excused Absence", True, {})
    ]
    assert code(gone_event["attendanceEventCategoryDescriptor"]) == "Excused Absence"

    result, records = read_all(connector, "enrollment", window)
    assert ids(records) == ["255901001|604821|2026-08-24"]
    assert result.key_changes == [("255901001|604821|2026-08-17", "255901001|604821|2026-08-24")]

    result, records = read_all(connector, "section", window)
    new_id = f"255901107|{YEAR}|2026-2027 Fall Semester|BIO|BIO-04"
    assert ids(records) == [new_id]
    assert result.key_changes == [(f"255901107|{YEAR}|2026-2027 Fall Semester|BIO|BIO-02", new_id)]

    for entity in ("school", "staff", "section_enrollment", "grade", "incident"):
        result, records = read_all(connector, entity, window)
        assert records == [] and result.key_changes == [], entity
    params = peer.requests_to("/students")[-1].query
    assert params["minChangeVersion"] == str(int(cursor) + 1)
    assert params["maxChangeVersion"] == window.upper


def test_a_new_discipline_action_re_reads_its_incident(peer):
    connector, _, _ = make(peer)
    cursor = connector.begin(mode="full", cursor=None).cursor_after
    link = peer.find("studentDisciplineIncidentBehaviorAssociations", incidentIdentifier="INC-0003")
    peer.insert(
        "disciplineActions",
        {
            "disciplineActionIdentifier": "ACT-0003",
            "disciplineDate": "2026-09-21",
            "disciplines": [
                {"disciplineDescriptor": "uri://ed-fi.org/DisciplineDescriptor#Detention"}
            ],
            "studentReference": {"studentUniqueId": "604828"},
            "responsibilitySchoolReference": {"schoolId": 255901107},
            "studentDisciplineIncidentBehaviorAssociations": [
                {
                    "studentDisciplineIncidentBehaviorAssociationReference": {
                        "behaviorDescriptor": link["behaviorDescriptor"],
                        "incidentIdentifier": "INC-0003",
                        "schoolId": 255901107,
                        "studentUniqueId": "604828",
                    }
                }
            ],
        },
    )
    window = connector.begin(mode="incremental", cursor=cursor)
    _, records = read_all(connector, "incident", window)
    assert ids(records) == ["255901107|INC-0003"]
    assert records[0].fields["_disciplineCode"] == "Detention"


def test_a_deleted_and_recreated_key_is_a_record_not_a_delete(peer):
    connector, _, _ = make(peer)
    cursor = connector.begin(mode="full", cursor=None).cursor_after
    staff = peer.find("staffs", staffUniqueId="207222")
    peer.delete("staffs", staff["id"])
    peer.insert(
        "staffs", {"staffUniqueId": "207222", "firstName": "Thomas", "lastSurname": "Baker"}
    )
    window = connector.begin(mode="incremental", cursor=cursor)
    _, records = read_all(connector, "staff", window)
    assert [(r.source_id, r.deleted, r.fields["firstName"]) for r in records] == [
        ("207222", False, "Thomas")
    ]


def test_items_changed_while_paging_are_read_by_the_next_window_and_none_is_missed(peer):
    connector, logs, _ = make(peer, page_size=3)
    cursor = connector.begin(mode="full", cursor=None).cursor_after
    students = peer.items("students")
    for student in students:  # all ten students change: they are all in the next window
        peer.update("students", student["id"], {"firstName": student["firstName"] + "!"})
    window = connector.begin(mode="incremental", cursor=cursor)

    already_read, not_yet_read = students[0], students[7]

    def mutate(p: EdFiPeer) -> None:
        # After page 1: one student on page 1 and one on page 3 change again. Both leave the
        # window [cursor+1, upper]; every student after them moves forward.
        p.update("students", already_read["id"], {"middleName": "Changed"})
        p.update("students", not_yet_read["id"], {"middleName": "Changed"})

    peer.after_page("students", 1, mutate)
    _, first = read_all(connector, "student", window)
    first_ids = ids(first)
    assert len(first_ids) == len(set(first_ids)), "no student twice"
    assert not_yet_read["studentUniqueId"] not in first_ids  # changed above the upper bound
    expected = {s["studentUniqueId"] for s in students} - {not_yet_read["studentUniqueId"]}
    assert set(first_ids) == expected, "no unchanged student skipped by the shifted offsets"
    assert any("left the window while paging" in line for line in logs)

    following = connector.begin(mode="incremental", cursor=window.cursor_after)
    _, second = read_all(connector, "student", following)
    assert sorted(ids(second)) == sorted(
        [already_read["studentUniqueId"], not_yet_read["studentUniqueId"]]
    )
    assert all(r.fields["middleName"] == "Changed" for r in second)
    assert set(first_ids) | set(ids(second)) == {s["studentUniqueId"] for s in students}


def test_without_the_count_check_offset_paging_would_skip_an_item(peer):
    """What the Total-Count check guards against, shown on the peer with plain requests."""
    token = httpx.post(
        f"{peer.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(peer.client_id, peer.client_secret),
    ).json()["access_token"]
    low = peer.newest_change_version + 1
    for student in peer.items("students"):
        peer.update("students", student["id"], {"firstName": "X"})
    high = peer.newest_change_version
    first_on_page_one = peer.items("students")[0]
    seen: list[str] = []
    for offset in range(0, 12, 3):
        page = httpx.get(
            f"{peer.url}/data/v3/ed-fi/students",
            params={
                "offset": offset,
                "limit": 3,
                "minChangeVersion": low,
                "maxChangeVersion": high,
            },
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        seen += [s["studentUniqueId"] for s in page]
        if offset == 0:
            peer.update("students", first_on_page_one["id"], {"firstName": "Y"})
    # 10 in the window; the 1st left after being read, so the 4th slid onto page 1: skipped.
    skipped = peer.items("students")[3]["studentUniqueId"]
    assert len(seen) == 9 and skipped not in seen


def test_a_full_read_keeps_items_updated_meanwhile_and_drops_deleted_ones(peer):
    connector, logs, _ = make(peer, page_size=3)
    window = connector.begin(mode="full", cursor=None)
    students = peer.items("students")
    read_before, deleted, updated = students[1], students[7], students[5]

    def mutate(p: EdFiPeer) -> None:
        p.delete("students", read_before["id"])  # on page 1: the later students shift
        p.delete("students", deleted["id"])  # on page 3, not read yet
        p.update("students", updated["id"], {"firstName": "Updated"})

    peer.after_page("students", 1, mutate)
    _, records = read_all(connector, "student", window)
    got = ids(records)
    assert len(got) == len(set(got))
    # No maxChangeVersion in a full read: the updated student stays in place and is read with
    # its new values (a complete read must not lose an item that merely changed); the one
    # deleted before it was reached is gone, and no other student is skipped.
    assert set(got) == {s["studentUniqueId"] for s in students} - {deleted["studentUniqueId"]}
    assert {r.source_id: r.fields["firstName"] for r in records}[updated["studentUniqueId"]] == (
        "Updated"
    )
    assert any("left the window while paging" in line for line in logs)
    following = connector.begin(mode="incremental", cursor=window.cursor_after)
    _, changes = read_all(connector, "student", following)
    assert {(r.source_id, r.deleted) for r in changes} == {
        (read_before["studentUniqueId"], True),
        (deleted["studentUniqueId"], True),
        (updated["studentUniqueId"], False),
    }


def test_a_cursor_older_than_the_oldest_change_version_means_a_full_read(peer):
    connector, logs, _ = make(peer)
    peer.oldest_change_version = 50
    window = connector.begin(mode="incremental", cursor="10")
    assert window.mode == "full" and window.lower is None
    assert "older than the oldest change version" in window.context["full_read_reason"]
    assert any("full read" in line for line in logs)
    result, records = read_all(connector, "school", window)
    assert result.complete and len(records) == 2
    # A cursor just below the oldest still has every change it needs.
    assert connector.begin(mode="incremental", cursor="49").mode == "incremental"
    with pytest.raises(ConnectorError, match="not an Ed-Fi change version"):
        connector.begin(mode="incremental", cursor="abc")


def test_429_with_retry_after_is_honoured(peer):
    connector, logs, sleeps = make(peer)
    window = connector.begin(mode="full", cursor=None)
    peer.force(429, headers={"Retry-After": "7"}, match="/students")
    peer.force(503, match="/students")
    _, records = read_all(connector, "student", window)
    assert len(records) == 10
    assert sleeps[0] == 7.0
    assert len(sleeps) == 2
    assert any("Retry-After" in line for line in logs)


def test_a_revoked_token_is_replaced_mid_run(peer):
    connector, _, _ = make(peer)
    window = connector.begin(mode="full", cursor=None)
    peer.revoke_tokens()
    _, records = read_all(connector, "school", window)
    assert len(records) == 2
    assert len(peer.requests_to("/oauth/token", "POST")) == 2


# --- Pushing incidents -------------------------------------------------------------------------


def incident_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "source_id": "",
        "school_source_id": "255901001",
        "student_source_id": "604823",
        "incident_identifier": "HUB-7",
        "occurred_on": "2026-10-02",
        "occurred_at": "09:30",
        "behavior_code": "disruption",
        "narrative": "Private account of what happened.",
        "action_code": "detention",
        "action_date": "2026-10-03",
        "duration_days": 0.5,
        "etag": None,
        "changed_since": None,
    }
    row.update(overrides)
    return row


def test_push_creates_then_updates_an_incident(peer):
    connector, _, _ = make(peer)
    [created] = connector.push("incident", [incident_row()])
    assert (created.action, created.source_id) == ("created", "255901001|HUB-7")
    incident = peer.find("disciplineIncidents", incidentIdentifier="HUB-7")
    assert incident["incidentDate"] == "2026-10-02"
    assert incident["incidentTime"] == "09:30:00"
    assert incident["behaviors"] == [
        {"behaviorDescriptor": "uri://ed-fi.org/BehaviorDescriptor#Disruption"}
    ]
    assert "incidentDescription" not in incident  # narratives are never sent
    sent = [json.loads(r.body) for r in peer.requests_to("/disciplineIncidents", "POST")]
    assert all("Private account" not in json.dumps(body) for body in sent)
    link = peer.find("studentDisciplineIncidentBehaviorAssociations", incidentIdentifier="HUB-7")
    assert link["studentReference"] == {"studentUniqueId": "604823"}
    action = peer.find("disciplineActions", studentUniqueId="604823")
    assert action["disciplines"] == [
        {"disciplineDescriptor": "uri://ed-fi.org/DisciplineDescriptor#Detention"}
    ]
    assert action["disciplineActionLength"] == 0.5
    assert (
        action["studentDisciplineIncidentBehaviorAssociations"][0][
            "studentDisciplineIncidentBehaviorAssociationReference"
        ]["incidentIdentifier"]
        == "HUB-7"
    )

    before = connector.fetch_incident("255901001|HUB-7")
    assert before["_etag"] and before["_lastModifiedDate"]
    [updated] = connector.push(
        "incident", [incident_row(source_id="255901001|HUB-7", occurred_at="10:45")]
    )
    assert (updated.action, updated.source_id) == ("updated", "255901001|HUB-7")
    assert (
        peer.find("disciplineIncidents", incidentIdentifier="HUB-7")["incidentTime"] == "10:45:00"
    )
    assert (
        len([i for i in peer.items("disciplineIncidents") if i["incidentIdentifier"] == "HUB-7"])
        == 1
    )
    after = connector.fetch_incident("255901001|HUB-7")
    assert after["_etag"] != before["_etag"]
    assert after["_lastModifiedDate"] >= before["_lastModifiedDate"]
    assert after["incidentTime"] == "10:45:00"


def test_a_refused_incident_is_a_failed_result_with_the_peer_message(peer):
    connector, _, _ = make(peer)
    results = connector.push(
        "incident",
        [
            incident_row(behavior_code="juggling", incident_identifier="HUB-8"),
            incident_row(incident_identifier="HUB-9", occurred_on="02/10/2026"),
            incident_row(incident_identifier="HUB-10", school_source_id="999"),
            incident_row(incident_identifier="HUB-11"),
            incident_row(incident_identifier="HUB-12", duration_days="two days"),
        ],
    )
    bad_behavior, bad_date, unknown_school, fine, bad_length = results
    assert bad_behavior.action == "failed"
    assert "$.behaviors[0].behaviorDescriptor" in bad_behavior.message
    assert (
        "BehaviorDescriptor value 'uri://ed-fi.org/BehaviorDescriptor#juggling' does not exist"
        in bad_behavior.message
    )
    assert "Data Validation Failed" in bad_behavior.message
    assert bad_date.action == "failed" and "$.incidentDate" in bad_date.message
    assert unknown_school.action == "failed" and "409" in unknown_school.message
    assert "'School' resource does not exist" in unknown_school.message
    assert fine.action == "created"
    assert peer.find("disciplineIncidents", incidentIdentifier="HUB-8") is None
    # Checked before sending: no half-written incident without its action.
    assert bad_length.action == "failed" and "duration_days 'two days'" in bad_length.message
    assert peer.find("disciplineIncidents", incidentIdentifier="HUB-12") is None


def test_fetch_incident(peer):
    connector, _, _ = make(peer)
    fields = connector.fetch_incident("255901107|INC-0001")
    assert fields["incidentIdentifier"] == "INC-0001"
    assert fields["schoolReference.schoolId"] == 255901107
    assert (
        fields["_etag"] == peer.find("disciplineIncidents", incidentIdentifier="INC-0001")["_etag"]
    )
    # .NET's seven fractional digits become an ISO 8601 timestamp Python reads.
    assert fields["_lastModifiedDate"].endswith("+00:00")
    assert connector.fetch_incident("255901107|NOPE") is None
    query = peer.requests_to("/disciplineIncidents")[-1].query
    assert query == {"schoolId": "255901107", "incidentIdentifier": "NOPE"}


def test_push_refuses_other_entities(peer):
    connector, _, _ = make(peer)
    with pytest.raises(ConnectorError, match="cannot push 'student'"):
        connector.push("student", [{}])


# --- Pure helpers ------------------------------------------------------------------------------


def test_key_change_chains_fold():
    assert _collapse([(5, "B", "C"), (3, "A", "B"), (7, "X", "Y"), (9, "Y", "X")]) == [("A", "C")]


def test_timestamps_are_normalised():
    assert normalize_timestamp("2027-01-15T10:00:00.1234567Z") == "2027-01-15T10:00:00.123456+00:00"
    assert normalize_timestamp("2027-01-15T10:00:00Z") == "2027-01-15T10:00:00+00:00"


# --- Default mappings --------------------------------------------------------------------------


@pytest.mark.django_db
def test_default_mappings_turn_the_fixture_into_valid_hub_values(peer):
    """The shipped mappings, run by the same SQL a sync uses, give every hub field a valid value
    for every fixture record: codes from the hub's lists, references to records read."""
    from integrations import entities, transforms

    connector, _, _ = make(peer)
    window = connector.begin(mode="full", cursor=None)
    read = {e: read_all(connector, e, window)[1] for e in EdFiConnector.entities}
    source_ids = {e: {r.source_id for r in records} for e, records in read.items()}
    for entity, records in read.items():
        if entity not in entities.BY_NAME:
            continue  # the hub has no table for it yet
        spec = entities.spec(entity)
        rules = EdFiConnector.default_mappings[entity]
        results = transforms.preview(rules, [r.fields for r in records])
        for record, result in zip(records, results, strict=True):
            for target in spec.targets:
                if target.name not in result:
                    continue
                value, error = result[target.name]["value"], result[target.name]["error"]
                where = f"{entity} {record.source_id} {target.name}"
                assert error is None, f"{where}: {error}"
                if target.required and not target.default_sql:
                    assert value, f"{where} is empty"
                if value and target.codes:
                    assert value in target.codes, f"{where}: {value!r}"
                if value and target.kind == "ref":
                    assert value in source_ids[target.ref], f"{where}: {value!r}"
    incident = transforms.preview(
        EdFiConnector.default_mappings["incident"],
        [r.fields for r in read["incident"] if r.source_id == "255901107|INC-0001"],
    )[0]
    assert {k: v["value"] for k, v in incident.items()} == {
        "student": "604826",
        "school": "255901107",
        "occurred_on": "2026-09-15",
        "occurred_at": "10:20",
        "level": "major",
        "problem_behavior": "fighting-physical-aggression",
        "narrative": "Narrative of INC-0001 (confidential).",
    }
