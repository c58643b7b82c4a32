"""Benchmark B2: a OneRoster 1.2 CSV sync of 100,000 users and 1,000,000 enrollments.

Reference, in the same process and database: PostgreSQL COPY of the same CSV files into
UNLOGGED all-text staging tables (what any loader must at least do).

The product, end to end as the worker runs it: unzip and check the manifest and encodings,
stage every file with COPY, map and validate set-wise, resolve references, match identities,
diff, merge (insert a million rows with their change-version trigger and indexes), audit and
record the run. Then a re-run of the same zip with 1% of users and 1% of enrollments changed:
the diff must update exactly the changed rows.

    python -m bench.sync_oneroster [--students 85000] [--classes-per-student 12] [--rounds 1]

Targets (shared/design/BENCHMARKS.md): full run within 3x the reference; re-run under 10% of
the full run; rows updated = rows changed.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("BXOS_DB_NAME", "bxos_bench_sync")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bxos.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.files import File  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from bxos.common.audit import system_actor  # noqa: E402
from bxos.schools.models import AcademicSession, District, SectionEnrollment, Student  # noqa: E402
from integrations import services  # noqa: E402
from integrations.models import SyncDefinition  # noqa: E402
from integrations.sample import HEADERS, STAMP, write_csv_rows  # noqa: E402

ENTITIES = [
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
SCHOOLS = 40
TEACHERS_PER_SCHOOL = 60
CLASSES_PER_SCHOOL = 150


def _row(name: str, values: dict[str, str]) -> list[str]:
    base = {"status": "active", "dateLastModified": STAMP}
    base.update(values)
    return [base.get(h, "") for h in HEADERS[name]]


class Plan:
    """Sizes and the 1% of rows a re-run changes."""

    def __init__(self, students: int, classes_per_student: int, guardian_every: int) -> None:
        self.students = students
        self.cps = classes_per_student
        self.guardian_every = guardian_every
        rnd = random.Random(11)
        self.changed_students = set(rnd.sample(range(students), students // 100))
        self.changed_enrollments = set(
            rnd.sample(range(students * classes_per_student), students * classes_per_student // 100)
        )

    def orgs(self):
        yield _row("orgs", {"sourcedId": "dist", "name": "Bench District", "type": "district"})
        for s in range(SCHOOLS):
            yield _row(
                "orgs",
                {
                    "sourcedId": f"sch{s}",
                    "name": f"School {s}",
                    "type": "school",
                    "identifier": f"S{s:03d}",
                    "parentSourcedId": "dist",
                },
            )

    def sessions(self):
        yield _row(
            "academicSessions",
            {
                "sourcedId": "sy",
                "title": "2026-27",
                "type": "schoolYear",
                "startDate": "2026-08-15",
                "endDate": "2027-06-15",
                "schoolYear": "2027",
            },
        )
        yield _row(
            "academicSessions",
            {
                "sourcedId": "t1",
                "title": "Fall",
                "type": "term",
                "startDate": "2026-08-15",
                "endDate": "2026-12-20",
                "parentSourcedId": "sy",
                "schoolYear": "2027",
            },
        )

    def roles(self):
        for s in range(SCHOOLS):
            for t in range(TEACHERS_PER_SCHOOL):
                yield self._role(f"t{s}_{t}", "teacher", f"sch{s}")
        for n in range(self.students):
            if n % self.guardian_every == 0:
                yield self._role(f"g{n}", "parent", f"sch{n % SCHOOLS}")
            yield self._role(f"s{n}", "student", f"sch{n % SCHOOLS}")

    @staticmethod
    def _role(uid: str, role: str, org: str) -> list[str]:
        return _row(
            "roles",
            {
                "sourcedId": f"r-{uid}",
                "userSourcedId": uid,
                "roleType": "primary",
                "role": role,
                "orgSourcedId": org,
            },
        )

    def users(self, changed: bool):
        for s in range(SCHOOLS):
            for t in range(TEACHERS_PER_SCHOOL):
                uid = f"t{s}_{t}"
                yield _row(
                    "users",
                    {
                        "sourcedId": uid,
                        "enabledUser": "true",
                        "username": uid,
                        "givenName": "Terry",
                        "familyName": f"T{t}",
                        "identifier": f"T{s:03d}{t:04d}",
                    },
                )
        for n in range(self.students):
            uid = f"s{n}"
            agents = ""
            if n % self.guardian_every == 0:
                gid = f"g{n}"
                agents = gid
                yield _row(
                    "users",
                    {
                        "sourcedId": gid,
                        "enabledUser": "true",
                        "username": gid,
                        "givenName": "Pat",
                        "familyName": f"P{n}",
                        "agentSourcedIds": uid,
                        "phone": "555-0100",
                    },
                )
            family = f"Family{n % 977}"
            if changed and n in self.changed_students:
                family += "-changed"
            yield _row(
                "users",
                {
                    "sourcedId": uid,
                    "enabledUser": "true",
                    "username": uid,
                    "givenName": f"Given{n % 613}",
                    "familyName": family,
                    "identifier": str(1_000_000 + n),
                    "grades": f"{9 + n % 4:02d}",
                    "agentSourcedIds": agents,
                },
            )

    def user_count(self) -> int:
        guardians = len(range(0, self.students, self.guardian_every))
        return SCHOOLS * TEACHERS_PER_SCHOOL + self.students + guardians

    def demographics(self):
        races = ["asian", "blackOrAfricanAmerican", "white"]
        for n in range(self.students):
            values = {
                "sourcedId": f"s{n}",
                "birthDate": f"{2008 + n % 5}-{1 + n % 12:02d}-{1 + n % 28:02d}",
                "sex": "female" if n % 2 else "male",
                "hispanicOrLatinoEthnicity": "false",
            }
            values[races[n % 3]] = "true"
            yield _row("demographics", values)

    def classes(self):
        for s in range(SCHOOLS):
            for c in range(CLASSES_PER_SCHOOL):
                yield _row(
                    "classes",
                    {
                        "sourcedId": f"c{s}_{c}",
                        "title": f"Course {c}",
                        "classCode": f"C{c:04d}",
                        "classType": "scheduled",
                        "schoolSourcedId": f"sch{s}",
                        "termSourcedIds": "t1",
                        "periods": str(c % 8 + 1),
                        "location": f"R{c}",
                    },
                )

    def enrollments(self, changed: bool):
        k = 0
        for n in range(self.students):
            s = n % SCHOOLS
            for j in range(self.cps):
                c = (n // SCHOOLS + j * 7) % CLASSES_PER_SCHOOL
                end = ""
                if changed and k in self.changed_enrollments:
                    end = "2026-12-01"
                yield _row(
                    "enrollments",
                    {
                        "sourcedId": f"e{n}_{j}",
                        "classSourcedId": f"c{s}_{c}",
                        "schoolSourcedId": f"sch{s}",
                        "userSourcedId": f"s{n}",
                        "primary": "false",
                        "role": "student",
                        "beginDate": "2026-08-15",
                        "endDate": end,
                    },
                )
                k += 1

    def write(self, directory: Path, changed: bool) -> tuple[Path, dict[str, Path]]:
        directory.mkdir(parents=True, exist_ok=True)
        files = {
            "orgs": self.orgs(),
            "academicSessions": self.sessions(),
            "users": self.users(changed),
            "roles": self.roles(),
            "demographics": self.demographics(),
            "classes": self.classes(),
            "enrollments": self.enrollments(changed),
        }
        paths = {}
        for name, rows in files.items():
            path = directory / f"{name}.csv"
            with open(path, "wb") as fh:
                write_csv_rows(fh, HEADERS[name], rows)
            paths[name] = path
        archive = directory / "roster.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
            manifest = ["propertyName,value", "manifest.version,1.0", "oneroster.version,1.2"]
            for name in HEADERS:
                manifest.append(f"file.{name},{'bulk' if name in paths else 'absent'}")
            zf.writestr("manifest.csv", "\n".join(manifest) + "\n")
            for name, path in paths.items():
                zf.write(path, f"{name}.csv")
        return archive, paths


def reference(paths: dict[str, Path]) -> float:
    """COPY every CSV into an UNLOGGED all-text table with no indexes."""
    started = time.perf_counter()
    with connection.cursor() as cur:
        for name, path in paths.items():
            cols = ", ".join(f'"{h}" text' for h in HEADERS[name])
            cur.execute(f'DROP TABLE IF EXISTS "bench_ref_{name}"')
            cur.execute(f'CREATE UNLOGGED TABLE "bench_ref_{name}" ({cols})')
            with (
                open(path, "rb") as fh,
                cur.copy(
                    f'COPY "bench_ref_{name}" FROM STDIN WITH (FORMAT csv, HEADER true)'
                ) as copy,
            ):
                while chunk := fh.read(1 << 20):
                    copy.write(chunk)
    elapsed = time.perf_counter() - started
    with connection.cursor() as cur:
        for name in paths:
            cur.execute(f'DROP TABLE IF EXISTS "bench_ref_{name}"')
    return elapsed


def setup_district(code: str):
    district = District.objects.create(name=f"B2 {code}", code=code, state_code="TX")
    AcademicSession.objects.create(
        district=district,
        name="2026-27 (district)",
        session_type="schoolYear",
        school_year=2027,
        start_date="2026-08-10",
        end_date="2027-06-20",
    )
    actor = system_actor()
    integration = services.integration_create(
        district=district,
        name="Bench SIS",
        connector_type="oneroster_csv",
        source_system="bench",
        params={"source": "upload", "encoding": "utf-8"},
        actor=actor,
    )
    definition = services.definition_save(
        definition=SyncDefinition(
            integration=integration,
            name="B2",
            entities=ENTITIES,
            hold_removal_pct=100,
            hold_change_pct=100,
        ),
        actor=actor,
    )
    return district, definition, actor


def sync(definition, actor, archive: Path):
    with open(archive, "rb") as fh:
        run = services.run_start(definition=definition, actor=actor, upload=File(fh, archive.name))
    started = time.perf_counter()
    run = services.run_execute(run=run, actor=actor)
    return run, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=85_000)
    parser.add_argument("--classes-per-student", type=int, default=12)
    parser.add_argument("--guardian-every", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    settings.MEDIA_ROOT = tempfile.mkdtemp(prefix="b2-media-")
    plan = Plan(args.students, args.classes_per_student, args.guardian_every)
    work = Path(tempfile.mkdtemp(prefix="b2-"))
    print(
        f"writing CSVs: {plan.user_count():,} users, "
        f"{args.students * args.classes_per_student:,} enrollments ..."
    )
    archive, paths = plan.write(work / "full", changed=False)
    changed_archive, _ = plan.write(work / "changed", changed=True)
    sizes = {n: p.stat().st_size // 1_000_000 for n, p in paths.items()}
    print(f"files (MB): {sizes}")
    rows = []
    for r in range(args.rounds):
        ref = reference(paths)
        code = f"b2r{int(time.time()) % 100000}{r}"
        district, definition, actor = setup_district(code)
        run, full = sync(definition, actor, archive)
        assert run.status == "succeeded", (run.status, run.message)
        rerun, again = sync(definition, actor, changed_archive)
        students_updated = rerun.diff["student"]["updated"]
        enrollments_updated = rerun.diff["section_enrollment"]["updated"]
        rows.append((ref, full, again, run, rerun, students_updated, enrollments_updated))
        print(
            f"round {r + 1}: reference COPY {ref:.2f} s | full run {full:.2f} s "
            f"({full / ref:.2f}x) | re-run {again:.2f} s ({again / full:.1%} of full) | "
            f"updated students {students_updated} (changed {len(plan.changed_students)}), "
            f"section enrollments {enrollments_updated} (changed {len(plan.changed_enrollments)})"
        )
        print(f"  full: {run.message}")
        print(f"  re-run: {rerun.message}")
        total = Student.objects.filter(district=district).count()
        se = SectionEnrollment.objects.filter(district=district).count()
        print(f"  hub rows: {total:,} students, {se:,} section enrollments")
    best = min(rows, key=lambda x: x[1] / x[0])
    print(
        f"\nB2 best: full {best[1] / best[0]:.2f}x reference (target <= 3x), re-run "
        f"{best[2] / best[1]:.1%} of full (target < 10%), rows updated = rows changed: "
        f"{best[5] == len(plan.changed_students) and best[6] == len(plan.changed_enrollments)}"
    )


if __name__ == "__main__":
    main()
