"""Grade book sync from Ed-Fi: grades land in the hub's grades table, one row per student,
section and grading period (the marks per term), and follow the source's changes and deletes.

The Ed-Fi test server's fixture has a first-nine-weeks (Q1) grade for every student in Math 4
and Algebra I; the test adds second-nine-weeks (Q2) grades for two of them.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from bxos.common.models import Tombstone
from bxos.schools.models import AcademicSession, Grade
from integrations import services
from integrations.choices import RunStatus, SyncMode
from integrations.models import SyncDefinition
from tests.integrations.peers.edfi import FALL, YEAR, d

pytestmark = pytest.mark.usefixtures("loopback")

SOURCE = "edfi"
ENTITIES = [
    "school",
    "academic_session",
    "staff",
    "student",
    "enrollment",
    "section",
    "section_enrollment",
    "grade",
]
LINCOLN, ROOSEVELT = 255901001, 255901107


def definition_for(world, actor, peer) -> SyncDefinition:
    integration = services.integration_create(
        district=world.district,
        name="State Ed-Fi",
        connector_type="edfi",
        source_system=SOURCE,
        params={
            "base_url": peer.url,
            "client_key": peer.client_id,
            "client_secret": peer.client_secret,
            "page_size": 4,
        },
        actor=actor,
    )
    return services.definition_save(
        definition=SyncDefinition(
            integration=integration,
            name="Grade book",
            entities=ENTITIES,
            mode=SyncMode.INCREMENTAL,
        ),
        actor=actor,
    )


def execute(definition, actor):
    run = services.run_start(definition=definition, actor=actor)
    run = services.run_execute(run=run, actor=actor)
    run.refresh_from_db()
    return run


def q2_grade(student: str, school: int, section: str, course: str, letter: str, number: float):
    section_ref = {
        "localCourseCode": course,
        "schoolId": school,
        "schoolYear": YEAR,
        "sectionIdentifier": section,
        "sessionName": FALL,
    }
    return {
        "gradeTypeDescriptor": d("GradeTypeDescriptor", "Grading Period"),
        "gradingPeriodReference": {
            "gradingPeriodDescriptor": d("GradingPeriodDescriptor", "Second Nine Weeks"),
            "gradingPeriodName": "Q2",
            "schoolId": school,
            "schoolYear": YEAR,
        },
        "studentSectionAssociationReference": {
            **section_ref,
            "beginDate": "2026-08-17",
            "studentUniqueId": student,
        },
        "letterGradeEarned": letter,
        "numericGradeEarned": number,
        "diagnosticStatement": "End of term",
    }


def marks(world) -> dict[tuple[str, str, str], tuple[str, Decimal | None, str]]:
    """(student, section code, grading period) -> (letter, number, comment) in the hub."""
    rows = Grade.objects.filter(district=world.district, source_system=SOURCE).select_related(
        "student", "section", "grading_period"
    )
    return {
        (g.student.source_id, g.section.section_code, g.grading_period.name): (
            g.letter_grade,
            g.numeric_grade,
            g.comment,
        )
        for g in rows
    }


def test_grades_land_per_grading_period_and_follow_the_source(north, south, system, peer):
    peer.insert("grades", q2_grade("604824", LINCOLN, "M4-01", "MATH4", "A-", 91.5))
    peer.insert("grades", q2_grade("604826", ROOSEVELT, "ALG1-01", "ALG1", "C+", 78.25))
    definition = definition_for(north, system, peer)
    first = execute(definition, system)
    assert first.status == RunStatus.SUCCEEDED, first.message
    assert first.diff["grade"]["created"] == len(peer.items("grades")) == 12
    assert first.diff["grade"]["failed"] == 0

    hub = marks(north)
    assert len(hub) == 12
    # Every student has the Q1 mark of the fixture in their math section...
    for student in ("604821", "604822", "604823", "604824", "604825"):
        assert hub[(student, "M4-01", "Q1")] == ("B", Decimal("85.00"), "Steady progress")
    for student in ("604826", "604827", "604828", "604829", "604830"):
        assert hub[(student, "ALG1-01", "Q1")] == ("B", Decimal("85.00"), "Steady progress")
    # ... and two of them a second-term mark beside it: one row per grading period.
    assert hub[("604824", "M4-01", "Q2")] == ("A-", Decimal("91.50"), "End of term")
    assert hub[("604826", "ALG1-01", "Q2")] == ("C+", Decimal("78.25"), "End of term")
    assert not any(period == "Q2" for (s, _c, period) in hub if s not in ("604824", "604826"))
    # The terms are the district's grading periods, under the fall semester.
    q1, q2 = (
        AcademicSession.objects.get(district=north.district, source_system=SOURCE, name=name)
        for name in ("Q1", "Q2")
    )
    assert (q1.session_type, q2.session_type) == ("gradingPeriod", "gradingPeriod")
    assert q1.parent.name == q2.parent.name == FALL
    assert str(q1.start_date) == "2026-08-17" and str(q2.end_date) == "2026-12-18"
    grade = Grade.objects.get(
        district=north.district, student__source_id="604824", grading_period=q2
    )
    assert grade.section.school.source_id == str(LINCOLN)
    assert grade.source_id.endswith("|2027|Second Nine Weeks|Q2|Grading Period")
    assert not Grade.objects.filter(district=south.district, source_system=SOURCE).exists()

    # The teacher revises a Q1 mark and withdraws a Q2 one in the SIS.
    revised = next(
        g
        for g in peer.items("grades")
        if g["studentSectionAssociationReference"]["studentUniqueId"] == "604824"
        and g["gradingPeriodReference"]["gradingPeriodName"] == "Q1"
    )
    peer.update("grades", revised["id"], {"letterGradeEarned": "B+", "numericGradeEarned": 88.0})
    withdrawn = next(
        g
        for g in peer.items("grades")
        if g["studentSectionAssociationReference"]["studentUniqueId"] == "604826"
        and g["gradingPeriodReference"]["gradingPeriodName"] == "Q2"
    )
    peer.delete("grades", withdrawn["id"])
    untouched = Grade.objects.get(
        district=north.district, student__source_id="604824", grading_period=q2
    )

    second = execute(definition, system)
    assert second.status == RunStatus.SUCCEEDED, second.message
    assert (second.diff["grade"]["updated"], second.diff["grade"]["deleted"]) == (1, 1)
    assert second.diff["grade"]["created"] == 0
    hub = marks(north)
    assert len(hub) == 11
    assert hub[("604824", "M4-01", "Q1")] == ("B+", Decimal("88.00"), "Steady progress")
    assert hub[("604824", "M4-01", "Q2")] == ("A-", Decimal("91.50"), "End of term")
    assert ("604826", "ALG1-01", "Q2") not in hub
    assert hub[("604826", "ALG1-01", "Q1")] == ("B", Decimal("85.00"), "Steady progress")
    assert (
        Tombstone.objects.filter(
            table_name=Grade._meta.db_table, source_system=SOURCE, district_id=north.district.pk
        ).count()
        == 1
    )
    # The other term's row was not touched.
    assert Grade.objects.get(pk=untouched.pk).change_version == untouched.change_version
