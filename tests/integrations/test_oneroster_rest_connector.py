"""The OneRoster 1.2 REST connector against a OneRoster server on 127.0.0.1 (the test peer).

No database: the connector never writes, so these are plain functions over the peer.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from datetime import date

import pytest

from integrations import entities as hub
from integrations import transforms
from integrations.connectors import registry
from integrations.connectors.base import ConnectorError, CredentialsRejected, EntityRead
from integrations.connectors.oneroster_rest import (
    ONEROSTER_DEFAULT_MAPPINGS,
    OneRosterRestConnector,
    race_code,
    role_fields,
)
from tests.integrations.peers.fixtures import (
    CSV_HEADERS,
    NHS,
    RHS,
    Demographics,
    Role,
    User,
    build_roster,
)
from tests.integrations.peers.oneroster_rest import SCOPE_CORE, OneRosterPeer

ENTITIES = OneRosterRestConnector.entities

#: The fields of a users record: the 1.2 CSV columns (less password and resourceSourcedIds,
#: never carried), plus role and orgSourcedIds (from the user's roles).
USER_FIELDS = (set(CSV_HEADERS["users"]) - {"password", "resourceSourcedIds"}) | {
    "role",
    "orgSourcedIds",
}


class Harness:
    """A connector pointed at a peer, with its waits, log and progress recorded."""

    def __init__(self, peer: OneRosterPeer, **params) -> None:
        self.waits: list[float] = []
        self.lines: list[str] = []
        self.progress: list[int] = []
        self.state: dict = {}
        self.connector = OneRosterRestConnector(
            params={
                "base_url": peer.base_url,
                "token_url": peer.token_url,
                "client_id": peer.client_id,
                "client_secret": peer.client_secret,
                **params,
            },
            state=self.state,
            log=self.lines.append,
            progress=self.progress.append,
        )
        self.connector.sleep = self.waits.append

    def read(self, entity: str, window) -> tuple[EntityRead, dict]:
        read = self.connector.read(entity, window)
        records = list(read.records)
        ids = [r.source_id for r in records]
        assert len(ids) == len(set(ids)), f"{entity}: a record was handed over twice: {ids}"
        return read, {r.source_id: r for r in records}


@pytest.fixture
def roster():
    return build_roster()


@pytest.fixture
def peer(loopback, roster):
    with OneRosterPeer(roster) as peer:
        yield peer


@pytest.fixture
def harness(peer):
    h = Harness(peer)
    yield h
    h.connector.close()


def test_registered_with_its_parameters():
    cls = registry.get("oneroster_rest")
    assert cls is OneRosterRestConnector
    assert cls.cursor_kind == "timestamp" and cls.label == "OneRoster 1.2 REST"
    params = {p.name: p for p in cls.params}
    assert params["client_secret"].kind == "secret"
    assert params["page_size"].default == 500 and params["scope"].required is False
    assert "roster-demographics.readonly" in params["scope"].default
    assert hub.in_merge_order(ENTITIES) == list(ENTITIES)


def test_connection_test_reports_orgs_and_token_lifetime(harness, peer):
    message = harness.connector.test()
    assert re.fullmatch(r"Connected: 3 orgs, token valid for 3[56]\d\d s", message), message
    assert peer.tokens_issued == 1
    assert harness.state["token"]


def test_connection_test_with_a_wrong_secret_is_credentials_rejected(peer):
    h = Harness(peer, client_secret="wrong")
    with pytest.raises(CredentialsRejected) as caught:
        h.connector.test()
    assert "credentials rejected" in str(caught.value)
    assert peer.token_url in str(caught.value) and "invalid_client" in str(caught.value)
    h.connector.close()


def test_missing_parameter_is_named(peer):
    connector = OneRosterRestConnector(params={"base_url": peer.base_url})
    with pytest.raises(ConnectorError) as caught:
        connector.test()
    assert caught.value.kind == "input" and "token_url" in str(caught.value)


def test_full_window_upper_bound_is_the_sources_clock(harness, roster):
    window = harness.connector.begin(mode="full", cursor=None)
    # The peer's Date is the roster clock (2026-03-02T08:00:00Z), less the 5 s margin.
    assert window.upper == window.cursor_after == "2026-03-02T07:59:55Z"
    assert window.lower is None
    roster.clock.advance(3600)
    window = harness.connector.begin(mode="incremental", cursor="2026-03-02T07:59:55Z")
    assert (window.lower, window.upper) == ("2026-03-02T07:59:55Z", "2026-03-02T08:59:55Z")


def test_full_read_of_every_entity_uses_the_csv_column_names(harness, roster, peer):
    window = harness.connector.begin(mode="full", cursor=None)
    got = {}
    for entity in ENTITIES:
        read, records = harness.read(entity, window)
        assert read.complete and read.entity == entity
        assert not any(r.deleted for r in records.values())
        assert read.expected_total is not None
        got[entity] = (read, records)

    _read, schools = got["school"]
    assert set(schools) == {RHS, NHS}
    assert set(schools[RHS].fields) == set(CSV_HEADERS["orgs"])
    assert schools[RHS].fields["name"] == "Riverside High School"
    assert schools[RHS].fields["parentSourcedId"] == "org-district"
    assert schools[RHS].fields["identifier"] == "063315004871"

    _read, sessions = got["academic_session"]
    assert set(sessions) == {"as-2026", "as-2026-fall", "as-2026-spring"}
    assert set(sessions["as-2026-fall"].fields) == set(CSV_HEADERS["academicSessions"])
    assert sessions["as-2026-fall"].fields | {"dateLastModified": None} == {
        "sourcedId": "as-2026-fall",
        "status": "active",
        "dateLastModified": None,
        "title": "Fall 2025",
        "type": "term",
        "startDate": "2025-08-18",
        "endDate": "2025-12-19",
        "parentSourcedId": "as-2026",
        "schoolYear": "2026",
    }

    _read, staff = got["staff"]
    assert set(staff) == {"tch-0001", "tch-0002", "tch-0003", "adm-0001"}
    assert set(staff["adm-0001"].fields) == USER_FIELDS
    assert staff["adm-0001"].fields["role"] == "principal"
    assert staff["tch-0003"].fields["orgSourcedIds"] == NHS
    assert staff["tch-0001"].fields["identifier"] == "T1001"

    read, students = got["student"]
    assert set(students) == {u.sourced_id for u in roster.users_with_role("student")}
    assert read.expected_total == 12
    sofia = students["stu-0003"].fields
    assert set(sofia) == USER_FIELDS | {"birthDate"}
    assert sofia["givenName"] == "Sofía" and sofia["familyName"] == "Ramírez"
    assert sofia["preferredGivenName"] == "Sofi" and sofia["middleName"] == "Isabel"
    assert sofia["birthDate"] == "2010-06-30"  # joined from demographics
    assert sofia["grades"] == "10" and sofia["role"] == "student"
    assert sofia["orgSourcedIds"] == RHS and sofia["primaryOrgSourcedId"] == RHS
    assert sofia["agentSourcedIds"] == "gdn-0002" and sofia["enabledUser"] == "true"
    assert re.fullmatch(r"\{SSID:CA\d+\},\{LDAP:\w+\}", sofia["userIds"])
    assert sofia["dateLastModified"] == "2026-02-02T07:30:00.000Z"

    read, guardians = got["guardian"]
    assert set(guardians) == {"gdn-0001", "gdn-0002", "gdn-0003", "gdn-0004"}
    assert read.explode is None
    assert guardians["gdn-0001"].fields["agentSourcedIds"] == "stu-0001,stu-0002"
    assert guardians["gdn-0003"].fields["role"] == "guardian"
    assert guardians["gdn-0004"].fields["phone"] == "+1-951-555-0190"

    read, links = got["student_guardian"]
    assert read.explode == "agentSourcedIds" and set(links) == set(guardians)

    read, enrollments = got["enrollment"]
    assert read.explode == "orgSourcedIds" and set(enrollments) == set(students)
    assert enrollments["stu-0009"].fields["orgSourcedIds"] == NHS

    _read, demographics = got["student_demographic"]
    assert set(demographics) == set(students)
    fields = demographics["stu-0007"].fields
    assert set(fields) == set(CSV_HEADERS["demographics"]) | {"raceEthnicityCode"}
    assert fields["white"] == "true" and fields["demographicRaceTwoOrMoreRaces"] == "true"
    codes = {sid: r.fields["raceEthnicityCode"] for sid, r in demographics.items()}
    assert codes["stu-0003"] == "HI7"  # Hispanic and white: Hispanic of any race
    assert codes["stu-0007"] == "MU7"
    assert (codes["stu-0008"], codes["stu-0010"], codes["stu-0004"]) == ("AM7", "PI7", "BL7")
    assert (codes["stu-0001"], codes["stu-0012"]) == ("AS7", "WH7")

    _read, sections = got["section"]
    assert len(sections) == 5
    chem = sections["cls-nhs-chem-p4"].fields
    expected_columns = set(CSV_HEADERS["classes"]) | {"courseCode", "courseTitle"}
    assert set(chem) == expected_columns
    assert (chem["courseCode"], chem["courseTitle"]) == ("SCI-CHEM", "Chemistry")
    assert chem["periods"] == "4,5" and chem["location"] == "Lab B"
    assert sections["cls-rhs-eng9-p1"].fields["termSourcedIds"] == "as-2026-fall,as-2026-spring"

    _read, section_enrollments = got["section_enrollment"]
    student_rows = [e for e in roster.records("enrollments") if getattr(e, "role", "") == "student"]
    assert set(section_enrollments) == {e.sourced_id for e in student_rows}
    first = section_enrollments["enr-0001"].fields
    assert set(first) == set(CSV_HEADERS["enrollments"])
    assert first["userSourcedId"] == "stu-0001" and first["classSourcedId"] == "cls-rhs-eng9-p1"
    assert (first["beginDate"], first["endDate"]) == ("2025-08-18", "2026-06-12")

    # Every field a default mapping reads is in the records the connector hands over.
    for entity, (read, records) in got.items():
        available = set().union(*(r.fields for r in records.values()))
        if read.explode:
            available.add("_item")
        for rule in ONEROSTER_DEFAULT_MAPPINGS[entity]:
            sources = rule["source"] if isinstance(rule["source"], list) else [rule["source"]]
            missing = [s for s in sources if s and s not in available]
            assert not missing, f"{entity}.{rule['target']} reads missing {missing}"


def test_a_user_in_two_staff_roles_is_read_once(harness, roster):
    roster.change(
        "users",
        "tch-0002",
        roles=[
            Role(role="teacher", org=RHS),
            Role(role="counselor", org=RHS, role_type="secondary"),
            Role(role="teacher", org=NHS, role_type="primary"),
        ],
    )
    window = harness.connector.begin(mode="full", cursor=None)
    _read, staff = harness.read("staff", window)  # read() fails on a duplicate
    assert len(staff) == 4
    assert staff["tch-0002"].fields["role"] == "teacher"
    assert staff["tch-0002"].fields["orgSourcedIds"] == f"{RHS},{NHS}"


def test_paging_reads_every_record_exactly_once(loopback, roster):
    with OneRosterPeer(roster, page_size_cap=5) as peer:
        h = Harness(peer)
        window = h.connector.begin(mode="full", cursor=None)
        read, students = h.read("student", window)
        assert set(students) == {f"stu-{i:04d}" for i in range(1, 13)}
        pages = peer.data_requests("/students")
        assert len(pages) >= 3 and all(p.count <= 5 for p in pages)
        assert all(p.query["sort"] == "sourcedId" for p in pages)
        assert sum(h.progress) == 12 and read.expected_total == 12
        _read, enrollments = h.read("section_enrollment", window)
        assert len(enrollments) == 24
        h.connector.close()


def test_incremental_window_reads_just_the_changes_and_flags_deletes(harness, roster, peer):
    clock = roster.clock
    cursor = harness.connector.begin(mode="full", cursor=None).cursor_after
    clock.advance(60)
    roster.change("users", "stu-0003", given_name="Sofia")
    roster.mark_deleted("users", "stu-0007")
    roster.mark_deleted("enrollments", "enr-0002")
    roster.change("classes", "cls-nhs-chem-p4", location="Lab C")
    roster.add(
        "users",
        User(
            sourced_id="stu-0013",
            given_name="Mateo",
            family_name="Silva",
            roles=[Role(role="student", org=NHS)],
            username="msilva013",
            identifier="100013",
            grades=["09"],
            primary_org=NHS,
        ),
    )
    roster.add(
        "demographics",
        Demographics(sourced_id="stu-0013", birth_date=date(2011, 9, 9), sex="male"),
    )
    clock.advance(60)

    window = harness.connector.begin(mode="incremental", cursor=cursor)
    assert window.lower == cursor and window.cursor_after == window.upper > cursor
    got = {}
    for entity in ENTITIES:
        read, records = harness.read(entity, window)
        assert not read.complete
        got[entity] = records
    assert set(got["student"]) == {"stu-0003", "stu-0007", "stu-0013"}
    assert got["student"]["stu-0003"].fields["givenName"] == "Sofia"
    assert got["student"]["stu-0007"].deleted and not got["student"]["stu-0003"].deleted
    assert got["student"]["stu-0013"].fields["birthDate"] == "2011-09-09"
    assert set(got["enrollment"]) == {"stu-0003", "stu-0007", "stu-0013"}
    assert set(got["section_enrollment"]) == {"enr-0002"}
    assert got["section_enrollment"]["enr-0002"].deleted
    assert set(got["section"]) == {"cls-nhs-chem-p4"}
    assert set(got["student_demographic"]) == {"stu-0013"}
    for entity in ("school", "academic_session", "staff", "guardian", "student_guardian"):
        assert got[entity] == {}, entity
    sent = peer.data_requests("/students")[-1].query["filter"]
    assert sent == f"dateLastModified>'{cursor}' AND dateLastModified<='{window.upper}'"

    # Nothing changed since: the next window is empty.
    clock.advance(60)
    after = harness.connector.begin(mode="incremental", cursor=window.cursor_after)
    assert harness.read("student", after)[1] == {}


def test_a_small_incremental_window_looks_birth_dates_up_one_by_one(peer, roster):
    h = Harness(peer, page_size=2)  # 12 demographics: 6 pages, more than one lookup costs
    cursor = h.connector.begin(mode="full", cursor=None).cursor_after
    roster.clock.advance(60)
    roster.change("users", "stu-0009", email="bella.garcia@students.riverside-usd.example")
    roster.clock.advance(60)
    window = h.connector.begin(mode="incremental", cursor=cursor)
    _read, students = h.read("student", window)
    assert set(students) == {"stu-0009"}
    assert students["stu-0009"].fields["birthDate"] == "2011-02-27"
    demographics = [r.path for r in peer.data_requests() if "/demographics" in r.path]
    assert demographics[-1].endswith("/demographics/stu-0009")
    assert len(peer.data_requests("/demographics")) == 1  # the probe, not all six pages
    h.connector.close()


def test_records_changed_during_the_read_are_in_this_window_or_the_next(loopback, roster):
    clock = roster.clock
    with OneRosterPeer(roster, page_size_cap=3) as peer:
        h = Harness(peer)
        cursor = h.connector.begin(mode="full", cursor=None).cursor_after
        clock.advance(60)
        changed = [f"stu-{i:04d}" for i in range(1, 9)]
        for sid in changed:
            roster.change("users", sid, phone="+1-951-555-0199")
        clock.advance(60)
        first_window = h.connector.begin(mode="incremental", cursor=cursor)

        fired = []

        def during_the_read(logged):
            if logged.path.endswith("/students") and not fired:
                fired.append(logged.query.get("offset"))
                # After the first page: one record already read, one not yet read (both leave
                # the window's set), and one that was outside the window.
                roster.change("users", "stu-0002", given_name="Ethan James")
                roster.change("users", "stu-0005", given_name="Liv")
                roster.change("users", "stu-0010", given_name="Kainoa")

        peer.hooks.append(during_the_read)
        _read, first = h.read("student", first_window)
        peer.hooks.clear()
        assert fired == ["0"]
        # Unchanged during the read: all read now, none skipped by the shifted offsets.
        assert {"stu-0001", "stu-0003", "stu-0004", "stu-0006", "stu-0007", "stu-0008"} <= set(
            first
        )

        clock.advance(60)
        second_window = h.connector.begin(mode="incremental", cursor=first_window.cursor_after)
        _read, second = h.read("student", second_window)
        assert {"stu-0002", "stu-0005", "stu-0010"} <= set(second)
        assert set(first) | set(second) == set(changed) | {"stu-0010"}
        assert second["stu-0002"].fields["givenName"] == "Ethan James"
        assert second["stu-0005"].fields["givenName"] == "Liv"
        h.connector.close()


def test_a_full_read_survives_records_removed_mid_read(loopback, roster):
    # A hard delete (no tobedeleted) shifts every later record back one place: the record at
    # the next page's boundary must still be read, or a complete read would remove it.
    with OneRosterPeer(roster, page_size_cap=4) as peer:
        h = Harness(peer)
        window = h.connector.begin(mode="full", cursor=None)
        fired = []

        def remove_two(logged):
            if logged.path.endswith("/students") and not fired:
                fired.append(True)
                with roster.lock:
                    del roster.collections["users"]["stu-0001"]
                    del roster.collections["users"]["stu-0002"]

        peer.hooks.append(remove_two)
        _read, students = h.read("student", window)
        assert {f"stu-{i:04d}" for i in range(3, 13)} <= set(students)
        assert any("students changed while it was read" in line for line in h.lines)
        h.connector.close()


def test_token_is_cached_across_reads_and_refreshed_after_expiry(harness, peer):
    window = harness.connector.begin(mode="full", cursor=None)
    for entity in ENTITIES:
        harness.read(entity, window)
    assert peer.tokens_issued == 1
    assert len(peer.data_requests()) > 15
    assert all(r.authorization == f"Bearer {harness.state['token']}" for r in peer.data_requests())
    peer.expire_tokens()
    _read, students = harness.read("student", window)
    assert len(students) == 12 and peer.tokens_issued == 2


def test_429_with_retry_after_waits_then_reads(harness, peer):
    window = harness.connector.begin(mode="full", cursor=None)
    peer.force(429, headers={"Retry-After": "2"})
    _read, schools = harness.read("school", window)
    assert set(schools) == {RHS, NHS}
    assert harness.waits == [2.0]
    assert any("Retry-After: 2" in line for line in harness.lines)


def test_503_on_every_attempt_is_unavailable_naming_the_url(harness, peer):
    window = harness.connector.begin(mode="full", cursor=None)
    peer.force(503, count=OneRosterRestConnector.max_attempts)
    with pytest.raises(ConnectorError) as caught:
        harness.read("school", window)
    assert caught.value.kind == "unavailable"
    assert f"{peer.base_url}/schools" in str(caught.value) and "HTTP 503" in str(caught.value)
    assert len(harness.waits) == OneRosterRestConnector.max_attempts - 1


def test_without_the_demographics_scope_students_come_without_birth_dates(peer):
    h = Harness(peer, scope=SCOPE_CORE)
    window = h.connector.begin(mode="full", cursor=None)
    _read, students = h.read("student", window)
    assert len(students) == 12
    assert all(r.fields["birthDate"] is None for r in students.values())
    assert any("without birth dates" in line and "403" in line for line in h.lines)
    with pytest.raises(ConnectorError) as caught:
        h.read("student_demographic", window)
    assert "403" in str(caught.value) and caught.value.kind == "protocol"
    h.connector.close()


def test_unknown_entity_and_bad_cursor_are_input_errors(harness):
    window = harness.connector.begin(mode="full", cursor=None)
    with pytest.raises(ConnectorError) as caught:
        harness.connector.read("daily_attendance", window)
    assert caught.value.kind == "input" and "daily_attendance" in str(caught.value)
    with pytest.raises(ConnectorError) as caught:
        harness.connector.begin(mode="incremental", cursor="12345")
    assert caught.value.kind == "input" and "cursor" in str(caught.value)


def test_race_code_and_role_fields():
    no = "false"
    flags = {
        "americanIndianOrAlaskaNative": no,
        "asian": no,
        "blackOrAfricanAmerican": no,
        "nativeHawaiianOrOtherPacificIslander": no,
        "white": no,
        "demographicRaceTwoOrMoreRaces": no,
        "hispanicOrLatinoEthnicity": no,
    }
    assert race_code(flags) == ""
    assert race_code(flags | {"asian": "true"}) == "AS7"
    assert race_code(flags | {"asian": "TRUE", "white": "true"}) == "MU7"
    assert race_code(flags | {"demographicRaceTwoOrMoreRaces": "true"}) == "MU7"
    assert race_code(flags | {"white": "true", "hispanicOrLatinoEthnicity": "true"}) == "HI7"
    assert race_code({"nativeHawaiianOrOtherPacificIslander": True}) == "PI7"

    roles = [
        ("secondary", "principal", "org-a"),
        ("primary", "teacher", "org-a"),
        ("primary", "counselor", "org-b"),
    ]
    assert role_fields(roles) == {"role": "teacher", "orgSourcedIds": "org-a,org-b"}
    assert role_fields(roles, "org-b") == {"role": "counselor", "orgSourcedIds": "org-a,org-b"}
    assert role_fields([]) == {"role": None, "orgSourcedIds": None}


def test_default_mappings_fit_the_hub_entities():
    assert set(ONEROSTER_DEFAULT_MAPPINGS) == set(ENTITIES)
    assert OneRosterRestConnector.default_mappings is ONEROSTER_DEFAULT_MAPPINGS
    for entity, rules in ONEROSTER_DEFAULT_MAPPINGS.items():
        spec = hub.spec(entity)
        # The engine's own check of ops and parameters (regexes are compiled by PostgreSQL
        # when a mapping is saved; that part needs the database and is left out here).
        transforms.validate_rules(rules, targets={t.name for t in spec.targets}, using=None)
        targets = [rule["target"] for rule in rules]
        assert len(targets) == len(set(targets)), entity
        for rule in rules:
            target = spec.target(rule["target"])  # KeyError: not a hub field
            for transform in rule["transforms"]:
                if transform["op"] == "crosswalk" and target.codes:
                    unknown = set(transform["values"].values()) - set(target.codes)
                    assert not unknown, f"{entity}.{target.name}: {unknown}"
        required = {t.name for t in spec.targets if t.required and not t.default_sql}
        assert required <= set(targets), f"{entity} leaves {required - set(targets)} unmapped"


def test_fixture_csv_zip_is_a_oneroster_1_2_package(tmp_path, roster):
    roster.clock.advance(60)
    roster.mark_deleted("users", "stu-0012")
    bulk = roster.to_oneroster_csv_zip(tmp_path / "bulk.zip")
    with zipfile.ZipFile(bulk) as zf:
        manifest = dict(csv.reader(io.StringIO(zf.read("manifest.csv").decode())))
        assert manifest["manifest.version"] == "1.0" and manifest["oneroster.version"] == "1.2"
        assert manifest["file.users"] == "bulk" and manifest["file.results"] == "absent"
        files = {
            name.removesuffix(".csv"): list(csv.reader(io.StringIO(zf.read(name).decode())))
            for name in zf.namelist()
            if name != "manifest.csv"
        }
    for name, rows in files.items():
        assert rows[0] == CSV_HEADERS[name], name
        assert all(len(r) == len(rows[0]) for r in rows), name
        assert all(r[1] == "" and r[2] == "" for r in rows[1:]), f"{name}: bulk leaves them empty"
    assert len(files["users"]) - 1 == 19  # the tobedeleted student is absent from a bulk file
    assert len(files["roles"]) - 1 == 19 and len(files["demographics"]) - 1 == 12

    delta = roster.to_oneroster_csv_zip(
        tmp_path / "delta.zip", bulk=False, since=roster.clock.now().replace(minute=0)
    )
    with zipfile.ZipFile(delta) as zf:
        manifest = dict(csv.reader(io.StringIO(zf.read("manifest.csv").decode())))
        users = list(csv.DictReader(io.StringIO(zf.read("users.csv").decode())))
    assert manifest["file.users"] == "delta"
    assert [(u["sourcedId"], u["status"]) for u in users] == [("stu-0012", "tobedeleted")]
    assert users[0]["dateLastModified"] == "2026-03-02T08:01:00.000Z"
