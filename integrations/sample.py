"""Synthetic OneRoster 1.2 CSV rosters: for the demo district, the tests and benchmark B2.

Deterministic for a given seed, any size (the benchmark writes 100,000 users and 1,000,000
enrollments), and written straight to a zip with ``manifest.csv`` as the 1.2 CSV spec lays it
out. Nothing here touches the database.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from integrations.connectors.oneroster_csv import COLUMNS as HEADERS

FIRST = [
    "Ava",
    "Liam",
    "Noah",
    "Emma",
    "Mia",
    "Lucas",
    "Amara",
    "Diego",
    "Sofia",
    "Mateo",
    "Aiyana",
    "Kenji",
    "Zara",
    "Omar",
    "Lena",
    "Ravi",
    "Chloe",
    "Ethan",
    "Nia",
    "Hugo",
]
LAST = [
    "Nguyen",
    "Garcia",
    "Smith",
    "Johnson",
    "Okafor",
    "Brown",
    "Lee",
    "Martinez",
    "Kim",
    "Patel",
    "Walker",
    "Lopez",
    "Young",
    "Hernandez",
    "Clark",
    "Begay",
    "Haddad",
    "Silva",
]
RACES = [
    "asian",
    "blackOrAfricanAmerican",
    "white",
    "americanIndianOrAlaskaNative",
    "nativeHawaiianOrOtherPacificIslander",
]
STAMP = "2026-08-01T00:00:00.000Z"


@dataclass
class Roster:
    """Rows per file (lists of dicts keyed by the 1.2 CSV headers)."""

    files: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def rows(self, name: str) -> list[dict[str, str]]:
        return self.files.setdefault(name, [])

    def add_user(self, uid: str, role: str, org: str, **values: str) -> dict[str, str]:
        _user(self, uid, role, org, **values)
        return self.rows("users")[-1]

    def find(self, name: str, sourced_id: str) -> dict[str, str]:
        for row in self.rows(name):
            if row["sourcedId"] == sourced_id:
                return row
        raise KeyError(sourced_id)


def build_roster(
    *,
    prefix: str = "",
    schools: int = 2,
    students: int = 40,
    teachers_per_school: int = 3,
    classes_per_school: int = 6,
    classes_per_student: int = 4,
    guardians: bool = True,
    seed: int = 7,
    school_year: int = 2027,
) -> Roster:
    """A consistent roster: orgs, one school year with two terms, users, classes, enrollments."""
    rnd = random.Random(seed)
    r = Roster()
    p = prefix
    r.rows("orgs").append(
        _row(
            "orgs",
            sourcedId=f"{p}dist",
            name="Sample District",
            type="district",
            identifier=f"{p}D1",
        )
    )
    for s in range(schools):
        r.rows("orgs").append(
            _row(
                "orgs",
                sourcedId=f"{p}sch{s}",
                name=f"School {s}",
                type="school",
                identifier=f"{p}S{s}",
                parentSourcedId=f"{p}dist",
            )
        )
    start, end = dt.date(school_year - 1, 8, 15), dt.date(school_year, 6, 15)
    mid = dt.date(school_year - 1, 12, 20)
    sessions = r.rows("academicSessions")
    sessions.append(
        _row(
            "academicSessions",
            sourcedId=f"{p}sy",
            title=f"{school_year - 1}-{school_year % 100:02d}",
            type="schoolYear",
            startDate=start.isoformat(),
            endDate=end.isoformat(),
            schoolYear=str(school_year),
        )
    )
    sessions.append(
        _row(
            "academicSessions",
            sourcedId=f"{p}t1",
            title="Fall",
            type="term",
            startDate=start.isoformat(),
            endDate=mid.isoformat(),
            parentSourcedId=f"{p}sy",
            schoolYear=str(school_year),
        )
    )
    sessions.append(
        _row(
            "academicSessions",
            sourcedId=f"{p}t2",
            title="Spring",
            type="term",
            startDate=(mid + dt.timedelta(days=14)).isoformat(),
            endDate=end.isoformat(),
            parentSourcedId=f"{p}sy",
            schoolYear=str(school_year),
        )
    )
    classes_by_school: dict[int, list[str]] = {}
    for s in range(schools):
        for t in range(teachers_per_school):
            uid = f"{p}t{s}_{t}"
            _user(
                r,
                uid,
                "teacher",
                f"{p}sch{s}",
                enabledUser="true",
                username=uid,
                givenName=rnd.choice(FIRST),
                familyName=rnd.choice(LAST),
                identifier=f"{p}T{s:02d}{t:03d}",
                email=f"{uid}@example.org",
            )
        ids = []
        for c in range(classes_per_school):
            cid = f"{p}c{s}_{c}"
            ids.append(cid)
            r.rows("classes").append(
                _row(
                    "classes",
                    sourcedId=cid,
                    title=f"Course {c} section {s}",
                    courseSourcedId=f"{p}course{c}",
                    classCode=f"C{c:03d}-{s}",
                    classType="scheduled",
                    location=f"Room {100 + c}",
                    schoolSourcedId=f"{p}sch{s}",
                    termSourcedIds=f"{p}t1",
                    periods=str(c % 8 + 1),
                )
            )
            r.rows("enrollments").append(
                _row(
                    "enrollments",
                    sourcedId=f"{p}e_{cid}_t",
                    classSourcedId=cid,
                    schoolSourcedId=f"{p}sch{s}",
                    userSourcedId=f"{p}t{s}_{c % teachers_per_school}",
                    role="teacher",
                    primary="true",
                    beginDate=start.isoformat(),
                )
            )
        classes_by_school[s] = ids
    for n in range(students):
        s = n % schools
        uid = f"{p}s{n}"
        grade = f"{9 + n % 4:02d}"
        birth = dt.date(school_year - 15 - n % 4, 1 + n % 12, 1 + n % 28)
        agents = ""
        if guardians and n % 2 == 0:
            gid = f"{p}g{n}"
            agents = gid
            _user(
                r,
                gid,
                "parent",
                f"{p}sch{s}",
                enabledUser="true",
                username=gid,
                givenName=rnd.choice(FIRST),
                familyName=rnd.choice(LAST),
                identifier="",
                email=f"{gid}@example.net",
                phone=f"555-01{n % 100:02d}",
                agentSourcedIds=uid,
            )
        _user(
            r,
            uid,
            "student",
            f"{p}sch{s}",
            enabledUser="true",
            username=uid,
            givenName=rnd.choice(FIRST),
            familyName=rnd.choice(LAST),
            identifier=f"{p}{100000 + n}",
            email=f"{uid}@students.example.org",
            grades=grade,
            agentSourcedIds=agents,
            userMasterIdentifier=f"ST{p}{n:07d}",
        )
        race = {k: "false" for k in RACES}
        race[RACES[n % len(RACES)]] = "true"
        r.rows("demographics").append(
            _row(
                "demographics",
                sourcedId=uid,
                birthDate=birth.isoformat(),
                sex="female" if n % 2 else "male",
                hispanicOrLatinoEthnicity="true" if n % 7 == 0 else "false",
                demographicRaceTwoOrMoreRaces="false",
                **race,
            )
        )
        picks = classes_by_school[s]
        for k in range(min(classes_per_student, len(picks))):
            cid = picks[(n + k) % len(picks)]
            r.rows("enrollments").append(
                _row(
                    "enrollments",
                    sourcedId=f"{p}e_{cid}_{uid}",
                    classSourcedId=cid,
                    schoolSourcedId=f"{p}sch{s}",
                    userSourcedId=uid,
                    role="student",
                    primary="false",
                    beginDate=start.isoformat(),
                )
            )
    return r


def _user(r: Roster, uid: str, role: str, org: str, **values: str) -> None:
    """A user row and its primary role (1.2 keeps roles in roles.csv)."""
    r.rows("users").append(_row("users", sourcedId=uid, **values))
    r.rows("roles").append(
        _row(
            "roles",
            sourcedId=f"role-{uid}",
            userSourcedId=uid,
            roleType="primary",
            role=role,
            orgSourcedId=org,
        )
    )


def _row(file: str, /, **values: str) -> dict[str, str]:
    row = {h: "" for h in HEADERS[file]}
    row.update(status="active", dateLastModified=STAMP)
    row.update(values)
    return row


def write_zip(
    path: Path,
    roster: Roster,
    *,
    modes: dict[str, str] | None = None,
    encoding: str = "utf-8",
    manifest_extra: dict[str, str] | None = None,
    raw_files: dict[str, bytes] | None = None,
) -> Path:
    """Write the roster as a OneRoster 1.2 CSV zip. ``modes`` overrides bulk per file;
    ``raw_files`` replaces a file's bytes (malformed input for tests)."""
    modes = modes or {}
    raw_files = raw_files or {}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        manifest = [
            ("manifest.version", "1.0"),
            ("oneroster.version", "1.2"),
            ("source.systemName", "Sample SIS"),
            ("source.systemCode", "sample"),
        ]
        for name in HEADERS:
            mode = modes.get(
                name, "bulk" if name in roster.files or name in raw_files else "absent"
            )
            manifest.append((f"file.{name}", mode))
        manifest += list((manifest_extra or {}).items())
        zf.writestr("manifest.csv", _csv([["propertyName", "value"], *manifest]).encode())
        for name in HEADERS:
            if name in raw_files:
                zf.writestr(f"{name}.csv", raw_files[name])
            elif name in roster.files and modes.get(name) != "absent":
                # OneRoster 1.2 allows extension columns named metadata.*; a row that has
                # one adds it to the file's header.
                rows = roster.files[name]
                extra = sorted({k for row in rows for k in row if k.startswith("metadata.")})
                with zf.open(f"{name}.csv", "w") as fh:
                    _write_rows(fh, [*HEADERS[name], *extra], rows, encoding)
    return path


def write_csv_rows(
    fh, header: list[str], rows: Iterable[Iterable[str]], encoding: str = "utf-8"
) -> None:
    """Stream rows (lists in header order) as CSV bytes: the benchmark's million rows."""
    text = io.TextIOWrapper(fh, encoding=encoding, newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    text.flush()
    text.detach()


def _write_rows(fh, header, rows, encoding) -> None:
    write_csv_rows(fh, header, ([row.get(h, "") for h in header] for row in rows), encoding)


def _csv(rows: list[list[str]] | Iterator) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()
