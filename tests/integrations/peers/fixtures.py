"""A small, mutable district roster that the test peers serve (OneRoster REST, CSV zips).

Riverside Unified: a district, two high schools, a school year with two terms, twelve
students, three teachers, a principal, four guardians linked to students (``agents`` both
ways, as OneRoster requires), five courses, five classes, their enrollments and the students'
demographics.

Every record has ``sourced_id``, ``status`` ("active" or "tobedeleted"), ``date_last_modified``
(an aware UTC datetime) and ``change_version`` (a counter over the whole roster, for peers that
speak change versions). Changes go through :class:`Roster` methods, which hold a lock (a peer
serves pages from other threads while a test mutates) and stamp the record with the roster's
clock. The clock is a :class:`ManualClock`: tests move time forward explicitly, so "changed
after the window's upper bound" is a fact of the test, not a race with the wall clock.

``Roster.to_oneroster_csv_zip`` writes the same data as a OneRoster 1.2 CSV package.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

#: When the initial records were last modified (before any test's window).
INITIAL_MODIFIED = datetime(2026, 2, 2, 7, 30, tzinfo=UTC)
#: Where a roster's clock starts.
CLOCK_START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

SCHOOL_YEAR_START = date(2025, 8, 18)
SCHOOL_YEAR_END = date(2026, 6, 12)
FALL_END = date(2025, 12, 19)
SPRING_START = date(2026, 1, 6)


class ManualClock:
    """A clock that moves only when told to. ``now()`` is an aware UTC datetime."""

    def __init__(self, start: datetime = CLOCK_START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 60.0) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


def iso_datetime(value: datetime) -> str:
    """OneRoster's DateTime form: ISO 8601 in UTC with milliseconds, ``...T07:30:00.000Z``."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- records ----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Record:
    sourced_id: str
    status: str = "active"
    date_last_modified: datetime = INITIAL_MODIFIED
    change_version: int = 0
    #: attributes a vendor adds outside the specification, served as they are
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Org(Record):
    name: str
    type: str  # district | school | ...
    identifier: str
    parent: str | None = None


@dataclass(kw_only=True)
class AcademicSession(Record):
    title: str
    type: str  # schoolYear | semester | term | gradingPeriod
    start_date: date
    end_date: date
    school_year: int
    parent: str | None = None


@dataclass(kw_only=True)
class Role:
    """One of a user's roles in an org (OneRoster 1.2 ``roles``)."""

    role: str
    org: str
    role_type: str = "primary"
    begin_date: date | None = None
    end_date: date | None = None


@dataclass(kw_only=True)
class User(Record):
    given_name: str
    family_name: str
    roles: list[Role]
    username: str
    identifier: str = ""
    email: str = ""
    middle_name: str = ""
    preferred_first_name: str = ""
    phone: str = ""
    sms: str = ""
    agents: list[str] = field(default_factory=list)
    grades: list[str] = field(default_factory=list)
    #: (type, identifier) pairs, e.g. ("SSID", "CA4820193011")
    user_ids: list[tuple[str, str]] = field(default_factory=list)
    enabled: bool = True
    primary_org: str | None = None
    user_master_identifier: str = ""
    pronouns: str = ""

    @property
    def role(self) -> str:
        """The role of the primary roleType (in the primary org when there are several)."""
        primary = [r for r in self.roles if r.role_type == "primary"] or self.roles
        for r in primary:
            if r.org == self.primary_org:
                return r.role
        return primary[0].role

    def has_role(self, role: str) -> bool:
        return any(r.role == role for r in self.roles)

    @property
    def orgs(self) -> list[str]:
        return list(dict.fromkeys(r.org for r in self.roles))


@dataclass(kw_only=True)
class Course(Record):
    title: str
    course_code: str
    org: str
    school_year: str | None = None
    grades: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class RosterClass(Record):
    title: str
    course: str
    school: str
    terms: list[str]
    class_code: str = ""
    class_type: str = "scheduled"
    location: str = ""
    periods: list[str] = field(default_factory=list)
    grades: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class Enrollment(Record):
    user: str
    class_: str
    school: str
    role: str  # student | teacher | administrator | proctor
    primary: bool = False
    begin_date: date | None = None
    end_date: date | None = None


@dataclass(kw_only=True)
class Demographics(Record):
    """Per user; the sourcedId is the user's (OneRoster: "should be the same")."""

    birth_date: date | None = None
    sex: str = ""  # male | female | other | unspecified
    american_indian_or_alaska_native: bool = False
    asian: bool = False
    black_or_african_american: bool = False
    native_hawaiian_or_other_pacific_islander: bool = False
    white: bool = False
    demographic_race_two_or_more_races: bool = False
    hispanic_or_latino_ethnicity: bool = False
    country_of_birth_code: str = ""
    state_of_birth_abbreviation: str = ""
    city_of_birth: str = ""
    public_school_residence_status: str = ""


#: collection name (as OneRoster names its endpoints and CSV files) -> record class
COLLECTIONS: dict[str, type[Record]] = {
    "orgs": Org,
    "academicSessions": AcademicSession,
    "users": User,
    "courses": Course,
    "classes": RosterClass,
    "enrollments": Enrollment,
    "demographics": Demographics,
}


# --- the roster -------------------------------------------------------------------------------


class Roster:
    """The district's data: ``collections[name][sourced_id] -> record``, thread-safe."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self.lock = threading.RLock()
        self.version = 0
        self.collections: dict[str, dict[str, Record]] = {name: {} for name in COLLECTIONS}

    # reading (copies, so a caller can look at them while the roster changes)

    def records(self, collection: str) -> list[Record]:
        with self.lock:
            return [copy.deepcopy(r) for r in self._collection(collection).values()]

    def get(self, collection: str, sourced_id: str) -> Record:
        with self.lock:
            try:
                return copy.deepcopy(self._collection(collection)[sourced_id])
            except KeyError:
                raise KeyError(f"no {collection} record {sourced_id!r}") from None

    def users_with_role(self, role: str) -> list[User]:
        return [u for u in self.records("users") if isinstance(u, User) and u.has_role(role)]

    # changing

    def add(self, collection: str, record: Record) -> Record:
        with self.lock:
            records = self._collection(collection)
            if record.sourced_id in records:
                raise ValueError(f"{collection} already has {record.sourced_id!r}")
            if not isinstance(record, COLLECTIONS[collection]):
                raise TypeError(f"{collection} holds {COLLECTIONS[collection].__name__} records")
            records[record.sourced_id] = record
            self._stamp(record)
            return copy.deepcopy(record)

    def change(self, collection: str, sourced_id: str, **fields: Any) -> Record:
        """Set fields (Python names: ``given_name="Sam"``) and stamp the record as modified."""
        with self.lock:
            record = self._collection(collection)[sourced_id]
            names = {f.name for f in dataclasses.fields(record)}
            unknown = set(fields) - names
            if unknown:
                raise AttributeError(f"{type(record).__name__} has no field(s) {sorted(unknown)}")
            for name, value in fields.items():
                setattr(record, name, value)
            self._stamp(record)
            return copy.deepcopy(record)

    def touch(self, collection: str, sourced_id: str) -> Record:
        """Stamp as modified without changing anything (a SIS re-save)."""
        return self.change(collection, sourced_id)

    def mark_deleted(self, collection: str, sourced_id: str) -> Record:
        """OneRoster's soft delete: ``status=tobedeleted``, stamped as modified."""
        return self.change(collection, sourced_id, status="tobedeleted")

    def _stamp(self, record: Record) -> None:
        self.version += 1
        record.change_version = self.version
        record.date_last_modified = self.clock.now()

    def _collection(self, name: str) -> dict[str, Record]:
        try:
            return self.collections[name]
        except KeyError:
            raise KeyError(f"no collection {name!r}; known: {', '.join(COLLECTIONS)}") from None

    # OneRoster 1.2 CSV

    def to_oneroster_csv_zip(
        self,
        path: str | Path,
        *,
        bulk: bool = True,
        since: datetime | None = None,
        system_name: str = "Riverside SIS",
        system_code: str = "riverside-sis",
    ) -> Path:
        """Write a OneRoster 1.2 CSV package (zip) and return its path.

        ``bulk``: every active record, with ``status`` and ``dateLastModified`` left empty as
        the binding requires for bulk files (a missing row means removed). Otherwise a delta:
        the records modified after ``since`` (all when None), ``tobedeleted`` ones included,
        with both columns filled.
        """
        path = Path(path)
        mode = "bulk" if bulk else "delta"
        with self.lock:
            files = {name: self._csv_rows(name, bulk=bulk, since=since) for name in CSV_FILES}
        manifest = [
            ("manifest.version", "1.0"),
            ("oneroster.version", "1.2"),
            *((f"file.{name}", mode if name in CSV_FILES else "absent") for name in MANIFEST_FILES),
            ("source.systemName", system_name),
            ("source.systemCode", system_code),
        ]
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.csv", _csv_text(["propertyName", "value"], manifest))
            for name, rows in files.items():
                zf.writestr(f"{name}.csv", _csv_text(CSV_HEADERS[name], rows))
        return path

    def _csv_rows(self, name: str, *, bulk: bool, since: datetime | None) -> list[list[str]]:
        if name == "roles":
            source = "users"
        else:
            source = name
        rows: list[list[str]] = []
        for record in self.collections[source].values():
            if bulk and record.status != "active":
                continue
            if not bulk and since is not None and record.date_last_modified <= since:
                continue
            meta = ["", ""] if bulk else [record.status, iso_datetime(record.date_last_modified)]
            if name == "roles":
                assert isinstance(record, User)
                for role in record.roles:
                    rows.append(
                        [
                            f"{record.sourced_id}-{role.role}-{role.org}",
                            *meta,
                            record.sourced_id,
                            role.role_type,
                            role.role,
                            _date(role.begin_date),
                            _date(role.end_date),
                            role.org,
                            "",
                        ]
                    )
                continue
            rows.append([record.sourced_id, *meta, *_CSV_ROW[name](record)])
        return rows


def _date(value: date | None) -> str:
    return value.isoformat() if value else ""


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _csv_text(header: list[str], rows: Iterable[Iterable[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


#: OneRoster 1.2 CSV binding: the rostering files and their columns, in the binding's order.
CSV_HEADERS: dict[str, list[str]] = {
    "orgs": [
        "sourcedId", "status", "dateLastModified", "name", "type", "identifier",
        "parentSourcedId",
    ],
    "academicSessions": [
        "sourcedId", "status", "dateLastModified", "title", "type", "startDate", "endDate",
        "parentSourcedId", "schoolYear",
    ],
    "users": [
        "sourcedId", "status", "dateLastModified", "enabledUser", "username", "userIds",
        "givenName", "familyName", "middleName", "identifier", "email", "sms", "phone",
        "agentSourcedIds", "grades", "password", "userMasterIdentifier", "resourceSourcedIds",
        "preferredGivenName", "preferredMiddleName", "preferredFamilyName",
        "primaryOrgSourcedId", "pronouns",
    ],
    "roles": [
        "sourcedId", "status", "dateLastModified", "userSourcedId", "roleType", "role",
        "beginDate", "endDate", "orgSourcedId", "userProfileSourcedId",
    ],
    "courses": [
        "sourcedId", "status", "dateLastModified", "schoolYearSourcedId", "title", "courseCode",
        "grades", "orgSourcedId", "subjects", "subjectCodes",
    ],
    "classes": [
        "sourcedId", "status", "dateLastModified", "title", "grades", "courseSourcedId",
        "classCode", "classType", "location", "schoolSourcedId", "termSourcedIds", "subjects",
        "subjectCodes", "periods",
    ],
    "enrollments": [
        "sourcedId", "status", "dateLastModified", "classSourcedId", "schoolSourcedId",
        "userSourcedId", "role", "primary", "beginDate", "endDate",
    ],
    "demographics": [
        "sourcedId", "status", "dateLastModified", "birthDate", "sex",
        "americanIndianOrAlaskaNative", "asian", "blackOrAfricanAmerican",
        "nativeHawaiianOrOtherPacificIslander", "white", "demographicRaceTwoOrMoreRaces",
        "hispanicOrLatinoEthnicity", "countryOfBirthCode", "stateOfBirthAbbreviation",
        "cityOfBirth", "publicSchoolResidenceStatus",
    ],
}  # fmt: skip
CSV_FILES = tuple(CSV_HEADERS)
#: Every file a 1.2 manifest names (``file.<name>``); those not written here are "absent".
MANIFEST_FILES = (
    "academicSessions", "categories", "classes", "classResources", "courses",
    "courseResources", "demographics", "enrollments", "lineItemLearningObjectiveIds",
    "lineItems", "lineItemScoreScales", "orgs", "resources", "resultLearningObjectiveIds",
    "results", "resultScoreScales", "roles", "scoreScales", "userProfiles", "userResources",
    "users",
)  # fmt: skip

# Each function gives a record's columns after sourcedId, status and dateLastModified.
_CSV_ROW: dict[str, Any] = {
    "orgs": lambda o: [o.name, o.type, o.identifier, o.parent or ""],
    "academicSessions": lambda s: [
        s.title, s.type, _date(s.start_date), _date(s.end_date), s.parent or "",
        str(s.school_year),
    ],
    "users": lambda u: [
        _bool(u.enabled), u.username, ",".join(f"{{{t}:{i}}}" for t, i in u.user_ids),
        u.given_name, u.family_name, u.middle_name, u.identifier, u.email, u.sms, u.phone,
        ",".join(u.agents), ",".join(u.grades), "", u.user_master_identifier, "",
        u.preferred_first_name, "", "", u.primary_org or "", u.pronouns,
    ],
    "courses": lambda c: [
        c.school_year or "", c.title, c.course_code, ",".join(c.grades), c.org,
        ",".join(c.subjects), "",
    ],
    "classes": lambda c: [
        c.title, ",".join(c.grades), c.course, c.class_code, c.class_type, c.location, c.school,
        ",".join(c.terms), ",".join(c.subjects), "", ",".join(c.periods),
    ],
    "enrollments": lambda e: [
        e.class_, e.school, e.user, e.role, _bool(e.primary), _date(e.begin_date),
        _date(e.end_date),
    ],
    "demographics": lambda d: [
        _date(d.birth_date), d.sex, _bool(d.american_indian_or_alaska_native), _bool(d.asian),
        _bool(d.black_or_african_american), _bool(d.native_hawaiian_or_other_pacific_islander),
        _bool(d.white), _bool(d.demographic_race_two_or_more_races),
        _bool(d.hispanic_or_latino_ethnicity), d.country_of_birth_code,
        d.state_of_birth_abbreviation, d.city_of_birth, d.public_school_residence_status,
    ],
}  # fmt: skip


# --- the district -----------------------------------------------------------------------------

DISTRICT = "org-district"
RHS = "org-rhs"
NHS = "org-nhs"
YEAR = "as-2026"
FALL = "as-2026-fall"
SPRING = "as-2026-spring"

_BIRTH_YEAR = {"09": 2011, "10": 2010, "11": 2009, "12": 2008}

# sourcedId, given, middle, family, preferred, grade, school, sex, race flags, birth (month, day)
_STUDENTS = [
    ("stu-0001", "Maya", "Lin", "Chen", "", "09", RHS, "female", {"asian"}, (3, 14)),
    ("stu-0002", "Ethan", "", "Chen", "", "11", RHS, "male", {"asian"}, (11, 2)),
    ("stu-0003", "Sofía", "Isabel", "Ramírez", "Sofi", "10", RHS, "female",
     {"hispanic", "white"}, (6, 30)),
    ("stu-0004", "Jamal", "", "Washington", "", "12", RHS, "male", {"black"}, (1, 22)),
    ("stu-0005", "Olivia", "Thi", "Nguyen", "", "09", RHS, "female", {"asian"}, (9, 8)),
    ("stu-0006", "Liam", "Patrick", "O'Connor", "", "10", RHS, "male", {"white"}, (12, 1)),
    ("stu-0007", "Ava", "", "Thompson", "", "11", NHS, "female", {"white", "black", "two"},
     (4, 17)),
    ("stu-0008", "Noah", "", "Begay", "", "12", NHS, "male", {"american_indian"}, (8, 5)),
    ("stu-0009", "Isabella", "", "García", "Bella", "09", NHS, "female", {"hispanic"},
     (2, 27)),
    ("stu-0010", "Kai", "", "Kealoha", "", "10", NHS, "male", {"pacific"}, (10, 11)),
    ("stu-0011", "Zoe", "Anjali", "Patel", "", "11", NHS, "female", {"asian"}, (5, 3)),
    ("stu-0012", "Lukas", "", "Müller", "Luke", "12", NHS, "male", {"white"}, (7, 19)),
]  # fmt: skip

_RACE_FLAGS = {
    "american_indian": "american_indian_or_alaska_native",
    "asian": "asian",
    "black": "black_or_african_american",
    "pacific": "native_hawaiian_or_other_pacific_islander",
    "white": "white",
    "two": "demographic_race_two_or_more_races",
    "hispanic": "hispanic_or_latino_ethnicity",
}

# guardian sourcedId, given, family, role, students, email, phone
_GUARDIANS = [
    ("gdn-0001", "Linda", "Chen", "parent", ["stu-0001", "stu-0002"],
     "linda.chen@example.com", "+1-951-555-0141"),
    ("gdn-0002", "Carlos", "Ramírez", "parent", ["stu-0003"],
     "carlos.ramirez@example.com", "+1-951-555-0172"),
    ("gdn-0003", "Denise", "Washington", "guardian", ["stu-0004"],
     "denise.washington@example.net", "+1-951-555-0108"),
    ("gdn-0004", "Margaret", "Thompson", "relative", ["stu-0007"],
     "m.thompson@example.org", "+1-951-555-0190"),
]  # fmt: skip

# class sourcedId, title, course, school, terms, code, room, periods, grades, subjects
_CLASSES = [
    ("cls-rhs-eng9-p1", "English 9 - Period 1", "crs-eng9", RHS, [FALL, SPRING], "ENG9-01",
     "Room 112", ["1"], ["09"], ["English Language Arts"]),
    ("cls-rhs-alg1-p2", "Algebra I - Period 2", "crs-alg1", RHS, [FALL], "MATH-ALG1-02",
     "Room 204", ["2"], ["09", "10"], ["Mathematics"]),
    ("cls-rhs-bio-p3", "Biology - Period 3", "crs-bio", RHS, [SPRING], "SCI-BIO-03", "Lab 3",
     ["3"], ["10"], ["Science"]),
    ("cls-nhs-ush-p1", "U.S. History - Period 1", "crs-ush", NHS, [FALL, SPRING], "SS-USH-01",
     "Room 8", ["1"], ["11"], ["Social Studies"]),
    ("cls-nhs-chem-p4", "Chemistry - Periods 4-5", "crs-chem", NHS, [FALL], "SCI-CHEM-04",
     "Lab B", ["4", "5"], ["11", "12"], ["Science"]),
]  # fmt: skip

_TERM_DATES = {
    FALL: (SCHOOL_YEAR_START, FALL_END),
    SPRING: (SPRING_START, SCHOOL_YEAR_END),
}


def build_roster(clock: ManualClock | None = None) -> Roster:
    """The Riverside Unified roster, every record active and last modified at INITIAL_MODIFIED."""
    roster = Roster(clock)
    add = roster.collections

    def put(collection: str, record: Record) -> None:
        roster.version += 1
        record.change_version = roster.version
        add[collection][record.sourced_id] = record

    put("orgs", Org(sourced_id=DISTRICT, name="Riverside Unified School District",
                    type="district", identifier="0633150",
                    date_last_modified=datetime(2025, 7, 1, 16, 0, tzinfo=UTC)))  # fmt: skip
    put("orgs", Org(sourced_id=RHS, name="Riverside High School", type="school",
                    identifier="063315004871", parent=DISTRICT,
                    date_last_modified=datetime(2025, 7, 1, 16, 0, tzinfo=UTC)))  # fmt: skip
    put("orgs", Org(sourced_id=NHS, name="North Hills High School", type="school",
                    identifier="063315011392", parent=DISTRICT,
                    date_last_modified=datetime(2025, 7, 1, 16, 0, tzinfo=UTC)))  # fmt: skip

    put("academicSessions", AcademicSession(
        sourced_id=YEAR, title="2025-2026", type="schoolYear", start_date=SCHOOL_YEAR_START,
        end_date=SCHOOL_YEAR_END, school_year=2026,
        date_last_modified=datetime(2025, 7, 15, 9, 0, tzinfo=UTC)))  # fmt: skip
    put("academicSessions", AcademicSession(
        sourced_id=FALL, title="Fall 2025", type="term", start_date=SCHOOL_YEAR_START,
        end_date=FALL_END, school_year=2026, parent=YEAR,
        date_last_modified=datetime(2025, 7, 15, 9, 0, tzinfo=UTC)))  # fmt: skip
    put("academicSessions", AcademicSession(
        sourced_id=SPRING, title="Spring 2026", type="term", start_date=SPRING_START,
        end_date=SCHOOL_YEAR_END, school_year=2026, parent=YEAR,
        date_last_modified=datetime(2025, 7, 15, 9, 0, tzinfo=UTC)))  # fmt: skip

    guardians_of: dict[str, list[str]] = {}
    for gid, _g, _f, _r, students, _e, _p in _GUARDIANS:
        for sid in students:
            guardians_of.setdefault(sid, []).append(gid)

    for n, (sid, given, middle, family, preferred, grade, school, sex, races, birth) in enumerate(
        _STUDENTS, start=1
    ):
        number = f"{100000 + n}"
        login = (
            f"{given[0]}{family}".lower()
            .replace("'", "")
            .replace("í", "i")
            .replace("ü", "u")
            .replace("á", "a")
        )
        put("users", User(
            sourced_id=sid, given_name=given, middle_name=middle, family_name=family,
            preferred_first_name=preferred, roles=[Role(role="student", org=school)],
            username=f"{login}{number[-3:]}", identifier=number,
            email=f"{login}{number[-3:]}@students.riverside-usd.example",
            agents=guardians_of.get(sid, []), grades=[grade],
            user_ids=[("SSID", f"CA{4820193000 + n * 7919}"), ("LDAP", f"{login}{number[-3:]}")],
            primary_org=school, user_master_identifier=f"RUSD-{number}",
        ))  # fmt: skip
        flags = {_RACE_FLAGS[r]: True for r in races}
        put("demographics", Demographics(
            sourced_id=sid, birth_date=date(_BIRTH_YEAR[grade], *birth), sex=sex,
            country_of_birth_code="US", state_of_birth_abbreviation="CA",
            city_of_birth="Riverside", **flags,
        ))  # fmt: skip

    staff = [
        ("tch-0001", "Rebecca", "Alvarez", "teacher", RHS, "T1001", "ralvarez"),
        ("tch-0002", "David", "Kim", "teacher", RHS, "T1002", "dkim"),
        ("tch-0003", "Angela", "Brooks", "teacher", NHS, "T1003", "abrooks"),
        ("adm-0001", "Michael", "Foster", "principal", RHS, "A2001", "mfoster"),
    ]
    for sid, given, family, role, school, number, login in staff:
        put("users", User(
            sourced_id=sid, given_name=given, family_name=family,
            roles=[Role(role=role, org=school)], username=login, identifier=number,
            email=f"{login}@riverside-usd.example", phone="+1-951-555-0100",
            user_ids=[("LDAP", login)], primary_org=school,
        ))  # fmt: skip

    for gid, given, family, role, students, email, phone in _GUARDIANS:
        school = next(s[6] for s in _STUDENTS if s[0] == students[0])
        put("users", User(
            sourced_id=gid, given_name=given, family_name=family,
            roles=[Role(role=role, org=school)], username=email, email=email, phone=phone,
            sms=phone, agents=list(students), primary_org=school,
        ))  # fmt: skip

    courses = [
        ("crs-eng9", "English 9", "ENG9", ["09"], ["English Language Arts"]),
        ("crs-alg1", "Algebra I", "MATH-ALG1", ["09", "10"], ["Mathematics"]),
        ("crs-bio", "Biology", "SCI-BIO", ["10"], ["Science"]),
        ("crs-ush", "U.S. History", "SS-USH", ["11"], ["Social Studies"]),
        ("crs-chem", "Chemistry", "SCI-CHEM", ["11", "12"], ["Science"]),
    ]
    for sid, title, code, grades, subjects in courses:
        put("courses", Course(sourced_id=sid, title=title, course_code=code, org=DISTRICT,
                              school_year=YEAR, grades=grades, subjects=subjects))  # fmt: skip

    for sid, title, course, school, terms, code, room, periods, grades, subjects in _CLASSES:
        put("classes", RosterClass(
            sourced_id=sid, title=title, course=course, school=school, terms=terms,
            class_code=code, location=room, periods=periods, grades=grades, subjects=subjects,
        ))  # fmt: skip

    # Each student takes two classes at their school; each teacher teaches theirs.
    schedule = {
        RHS: [("cls-rhs-eng9-p1", "cls-rhs-alg1-p2"), ("cls-rhs-alg1-p2", "cls-rhs-bio-p3")],
        NHS: [("cls-nhs-ush-p1", "cls-nhs-chem-p4"), ("cls-nhs-ush-p1", "cls-nhs-chem-p4")],
    }
    terms_of = {c[0]: c[4] for c in _CLASSES}
    number = 0

    def enroll(user: str, class_: str, school: str, role: str, primary: bool) -> None:
        nonlocal number
        number += 1
        terms = terms_of[class_]
        put("enrollments", Enrollment(
            sourced_id=f"enr-{number:04d}", user=user, class_=class_, school=school, role=role,
            primary=primary, begin_date=_TERM_DATES[terms[0]][0],
            end_date=_TERM_DATES[terms[-1]][1],
        ))  # fmt: skip

    for i, (sid, *_rest) in enumerate(_STUDENTS):
        school = _STUDENTS[i][6]
        for class_ in schedule[school][i % 2]:
            enroll(sid, class_, school, "student", False)
    for teacher, classes in [
        ("tch-0001", ["cls-rhs-eng9-p1"]),
        ("tch-0002", ["cls-rhs-alg1-p2", "cls-rhs-bio-p3"]),
        ("tch-0003", ["cls-nhs-ush-p1", "cls-nhs-chem-p4"]),
    ]:
        for class_ in classes:
            school = RHS if "-rhs-" in class_ else NHS
            enroll(teacher, class_, school, "teacher", True)
    return roster
