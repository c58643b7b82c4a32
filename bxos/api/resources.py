"""The resources of /api/v1/: what each exposes, under which scope, filtered how.

A resource maps API field names (camelCase, as OneRoster and Ed-Fi do) to ORM paths, read
with ``.values()``: a field profile removes fields before the query, so a field a client may
not receive is never even selected. ``student`` names the path to the student a row is about,
for the disclosure log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import models

from bxos.api import scopes
from bxos.behavior import models as bm
from bxos.schools import models as sm


@dataclass(frozen=True)
class Resource:
    name: str
    model: type[models.Model]
    scope: str
    fields: dict[str, str]
    student: str | None = None  # ORM path to the student id; None: no student data
    filters: dict[str, str] = field(default_factory=dict)  # query parameter -> ORM lookup

    def selected(self, allowed: list[str] | None) -> dict[str, str]:
        """The fields to read for a client whose profile allows ``allowed`` (None: all)."""
        if allowed is None:
            return dict(self.fields)
        keep = {"id", "changeVersion", *allowed}
        return {k: v for k, v in self.fields.items() if k in keep}


def _base(**extra: str) -> dict[str, str]:
    return {"id": "id", "changeVersion": "change_version", "sourceId": "source_id", **extra}


RESOURCES: list[Resource] = [
    Resource(
        "schools",
        sm.School,
        scopes.ROSTER,
        _base(
            name="name",
            localCode="code",
            schoolType="school_type",
            gradeLow="grade_low",
            gradeHigh="grade_high",
            ncesId="nces_id",
            timeZone="time_zone",
        ),
    ),
    Resource(
        "academicSessions",
        sm.AcademicSession,
        scopes.ROSTER,
        _base(
            name="name",
            sessionType="session_type",
            parentId="parent_id",
            schoolYear="school_year",
            startDate="start_date",
            endDate="end_date",
        ),
    ),
    Resource(
        "students",
        sm.Student,
        scopes.ROSTER,
        _base(
            studentNumber="student_number",
            stateId="state_id",
            firstName="first_name",
            middleName="middle_name",
            lastName="last_name",
            preferredName="preferred_name",
            birthDate="birth_date",
            gradeLevel="grade_level",
            email="email",
            isActive="is_active",
        ),
        student="id",
        filters={"gradeLevel": "grade_level"},
    ),
    Resource(
        "demographics",
        sm.StudentDemographic,
        scopes.DEMOGRAPHICS,
        _base(
            studentId="student_id",
            validFrom="valid_from",
            validTo="valid_to",
            raceEthnicity="race_ethnicity",
            sex="sex",
            ideaDisability="idea_disability",
            section504="section_504",
            englishLearner="english_learner",
            economicallyDisadvantaged="economically_disadvantaged",
        ),
        student="student_id",
        filters={"studentId": "student_id"},
    ),
    Resource(
        "guardians",
        sm.Guardian,
        scopes.GUARDIANS,
        _base(
            firstName="first_name",
            lastName="last_name",
            email="email",
            phone="phone",
            preferredLanguage="preferred_language",
        ),
    ),
    Resource(
        "studentGuardians",
        sm.StudentGuardian,
        scopes.GUARDIANS,
        _base(
            studentId="student_id",
            guardianId="guardian_id",
            relationship="relationship",
            isPrimaryContact="is_primary_contact",
            livesWith="lives_with",
            hasCustody="has_custody",
            receivesNotifications="receives_notifications",
        ),
        student="student_id",
        filters={"studentId": "student_id"},
    ),
    Resource(
        "staff",
        sm.Staff,
        scopes.ROSTER,
        _base(
            staffNumber="staff_number",
            firstName="first_name",
            lastName="last_name",
            email="email",
            position="position",
            isActive="is_active",
        ),
    ),
    Resource(
        "enrollments",
        sm.Enrollment,
        scopes.ROSTER,
        _base(
            studentId="student_id",
            schoolId="school_id",
            schoolYearId="school_year_id",
            gradeLevel="grade_level",
            entryDate="entry_date",
            exitDate="exit_date",
            exitReason="exit_reason",
            isPrimary="is_primary",
        ),
        student="student_id",
        filters={"schoolId": "school_id", "studentId": "student_id"},
    ),
    Resource(
        "sections",
        sm.Section,
        scopes.ROSTER,
        _base(
            schoolId="school_id",
            sessionId="session_id",
            courseCode="course_code",
            courseTitle="course_title",
            sectionCode="section_code",
            period="period",
            room="room",
            teacherId="teacher_id",
        ),
        filters={"schoolId": "school_id"},
    ),
    Resource(
        "sectionEnrollments",
        sm.SectionEnrollment,
        scopes.ROSTER,
        _base(
            sectionId="section_id",
            studentId="student_id",
            beginDate="begin_date",
            endDate="end_date",
        ),
        student="student_id",
        filters={"sectionId": "section_id", "studentId": "student_id"},
    ),
    Resource(
        "attendance",
        sm.DailyAttendance,
        scopes.ATTENDANCE,
        _base(
            studentId="student_id",
            schoolId="school_id",
            date="date",
            status="status",
            minutesAbsent="minutes_absent",
        ),
        student="student_id",
        filters={"schoolId": "school_id", "studentId": "student_id", "date": "date"},
    ),
    Resource(
        "periodAttendance",
        sm.PeriodAttendance,
        scopes.ATTENDANCE,
        _base(studentId="student_id", sectionId="section_id", date="date", status="status"),
        student="student_id",
        filters={"sectionId": "section_id", "studentId": "student_id"},
    ),
    Resource(
        "grades",
        sm.Grade,
        scopes.GRADES,
        _base(
            studentId="student_id",
            sectionId="section_id",
            gradingPeriodId="grading_period_id",
            letterGrade="letter_grade",
            numericGrade="numeric_grade",
            comment="comment",
        ),
        student="student_id",
        filters={"sectionId": "section_id", "studentId": "student_id"},
    ),
    Resource(
        "incidents",
        bm.Incident,
        scopes.BEHAVIOR,
        _base(
            studentId="student_id",
            schoolId="school_id",
            reportedById="reported_by_id",
            date="occurred_on",
            time="occurred_at",
            level="level",
            problemBehavior="problem_behavior__code",
            subtype="subtype__code",
            location="location__code",
            motivation="motivation__code",
            othersInvolved="others_involved__code",
            restraintSeclusion="restraint_seclusion",
            lawEnforcementReferral="law_enforcement_referral",
            schoolRelatedArrest="school_related_arrest",
            zeroToleranceExpulsion="zero_tolerance_expulsion",
            ideaRemoval="idea_removal",
            servicesAfterRemoval="services_after_removal",
            narrative="narrative",
        ),
        student="student_id",
        filters={"schoolId": "school_id", "studentId": "student_id", "level": "level"},
    ),
    Resource(
        "behaviorSupportRequests",
        bm.BehaviorSupportRequest,
        scopes.BEHAVIOR,
        _base(
            studentId="student_id",
            schoolId="school_id",
            requestedById="requested_by_id",
            concern="concern",
            state="state",
            priority="priority",
            assigneeId="assignee_id",
            submittedAt="submitted_at",
            dueAt="due_at",
            closedAt="closed_at",
        ),
        student="student_id",
        filters={"schoolId": "school_id", "studentId": "student_id", "state": "state"},
    ),
    # Confidential notes are never part of the API.
    Resource(
        "interventions",
        bm.Intervention,
        scopes.BEHAVIOR,
        _base(
            studentId="student_id",
            schoolId="school_id",
            tier="tier",
            interventionType="intervention_type__code",
            staffId="staff_id",
            startDate="start_date",
            plannedEndDate="planned_end_date",
            endDate="end_date",
            fidelityPct="fidelity_pct",
            outcome="outcome",
            goal="goal",
        ),
        student="student_id",
        filters={"schoolId": "school_id", "studentId": "student_id"},
    ),
]
BY_NAME = {r.name: r for r in RESOURCES}
