"""The staging schema, and lineage indexes on the synced tables.

A sync finds a hub row by (district, source system, source id) for every record it reads, and
a source has one row per id: a unique partial index makes that a rule the database enforces
(demographics keep one row per period, so theirs is not unique).
"""

from django.db import migrations

SYNCED = [
    ("schools_school", True),
    ("schools_academicsession", True),
    ("schools_staff", True),
    ("schools_student", True),
    ("schools_guardian", True),
    ("schools_studentguardian", True),
    ("schools_enrollment", True),
    ("schools_studentdemographic", False),
    ("schools_section", True),
    ("schools_sectionenrollment", True),
    ("schools_dailyattendance", True),
    ("schools_grade", True),
    ("behavior_incident", True),
]


def _forward() -> str:
    statements = ["CREATE SCHEMA IF NOT EXISTS sync_stage"]
    for table, unique in SYNCED:
        kind = "UNIQUE INDEX" if unique else "INDEX"
        statements.append(
            f"CREATE {kind} IF NOT EXISTS {table}_lineage ON {table} "
            f"(district_id, source_system, source_id) WHERE source_id <> ''"
        )
    return ";\n".join(statements)


def _backward() -> str:
    statements = [f"DROP INDEX IF EXISTS {table}_lineage" for table, _ in SYNCED]
    statements.append("DROP SCHEMA IF EXISTS sync_stage CASCADE")
    return ";\n".join(statements)


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0001_initial"),
        ("schools", "0001_initial"),
        ("behavior", "0001_initial"),
    ]

    operations = [migrations.RunSQL(_forward(), _backward())]
