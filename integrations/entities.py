"""The hub entities a sync can fill: their tables, target fields, types and removal rules.

A mapping produces text for each target field; the pipeline casts and checks it here, set-wise
(types, required fields, codes, lengths, references to other synced rows). The order of
``ENTITIES`` is the merge order: referenced entities first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from django.apps import apps
from django.db import models

from bxos.schools import choices as sc


@dataclass(frozen=True)
class Target:
    """A hub field a mapping can fill. ``kind``: text, date, time, bool, int, decimal, code,
    ref (a reference to another synced entity by its source id)."""

    name: str
    kind: str = "text"
    required: bool = False
    ref: str | None = None
    codes: tuple[str, ...] = ()
    #: SQL (over the run's parameters) used when the mapping leaves the field empty
    default_sql: str | None = None

    @property
    def column(self) -> str:
        return f"{self.name}_id" if self.kind == "ref" else self.name


@dataclass(frozen=True)
class EntitySpec:
    """How rows of one hub model are synced."""

    name: str
    label: str
    model_label: str
    targets: tuple[Target, ...]
    #: "delete" (a tombstone is written) or "deactivate" (people keep their history)
    removal: str = "delete"
    #: identity matching (students, staff, guardians): state id, then name and birth date
    person: bool = False
    #: a changed row is closed (valid_to) and a new one opened: demographics over time
    effective_dated: bool = False
    #: the entity's key among current rows when effective-dated (besides source id)
    current_key: str | None = None
    #: effective-dated: a date target the source may fill with the day a change took effect
    #: (the new period starts then); left empty, the period is cut at the run date. Not a
    #: compared value: a record is changed by its values, the date only places the cut.
    effective_from: str | None = None
    #: targets identifying a row the district may already have made by hand (a school by its
    #: code): such a row not yet linked to any source is adopted instead of duplicated
    natural_key: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @cached_property
    def model(self) -> type[models.Model]:
        return apps.get_model(self.model_label)

    @property
    def table(self) -> str:
        return self.model._meta.db_table

    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def max_length(self, target: Target) -> int | None:
        if target.kind in ("text", "code"):
            return getattr(self.model._meta.get_field(target.name), "max_length", None)
        return None


def _codes(choices_cls) -> tuple[str, ...]:
    return tuple(choices_cls.values)


# The district's current school year: enrollments from sources that do not name one use it.
CURRENT_SCHOOL_YEAR = (
    "(SELECT s.id FROM schools_academicsession s WHERE s.district_id = %(district)s "
    "AND s.session_type = 'schoolYear' AND CURRENT_DATE BETWEEN s.start_date AND s.end_date "
    "ORDER BY s.start_date DESC LIMIT 1)"
)
CURRENT_SCHOOL_YEAR_START = (
    "(SELECT s.start_date FROM schools_academicsession s WHERE s.district_id = %(district)s "
    "AND s.session_type = 'schoolYear' AND CURRENT_DATE BETWEEN s.start_date AND s.end_date "
    "ORDER BY s.start_date DESC LIMIT 1)"
)

ENTITIES: tuple[EntitySpec, ...] = (
    EntitySpec(
        "school",
        "Schools",
        "schools.School",
        (
            Target("name", required=True),
            Target("code", required=True),
            Target("school_type", "code", codes=_codes(sc.SchoolType), default_sql="'other'"),
            Target("grade_low", "code", codes=_codes(sc.GradeLevel), default_sql="'KG'"),
            Target("grade_high", "code", codes=_codes(sc.GradeLevel), default_sql="'12'"),
            Target("nces_id"),
        ),
        natural_key=("code",),
    ),
    EntitySpec(
        "academic_session",
        "Academic sessions",
        "schools.AcademicSession",
        (
            Target("name", required=True),
            Target("session_type", "code", required=True, codes=_codes(sc.SessionType)),
            Target("school_year", "int", required=True),
            Target("start_date", "date", required=True),
            Target("end_date", "date", required=True),
            Target("parent", "ref", ref="academic_session"),
        ),
        natural_key=("session_type", "name", "school_year"),
    ),
    EntitySpec(
        "staff",
        "Staff",
        "schools.Staff",
        (
            Target("staff_number", required=True),
            Target("first_name", required=True),
            Target("last_name", required=True),
            Target("email"),
            Target("position", "code", codes=_codes(sc.StaffPosition), default_sql="'teacher'"),
            Target("is_active", "bool", default_sql="true"),
        ),
        removal="deactivate",
    ),
    EntitySpec(
        "student",
        "Students",
        "schools.Student",
        (
            Target("student_number", required=True),
            Target("state_id"),
            Target("first_name", required=True),
            Target("middle_name"),
            Target("last_name", required=True),
            Target("preferred_name"),
            Target("birth_date", "date", required=True),
            Target("grade_level", "code", required=True, codes=_codes(sc.GradeLevel)),
            Target("email"),
            Target("is_active", "bool", default_sql="true"),
        ),
        removal="deactivate",
        person=True,
    ),
    EntitySpec(
        "guardian",
        "Guardians",
        "schools.Guardian",
        (
            Target("first_name", required=True),
            Target("last_name", required=True),
            Target("email"),
            Target("phone"),
        ),
    ),
    EntitySpec(
        "student_guardian",
        "Student-guardian links",
        "schools.StudentGuardian",
        (
            Target("student", "ref", required=True, ref="student"),
            Target("guardian", "ref", required=True, ref="guardian"),
            Target(
                "relationship",
                "code",
                codes=_codes(sc.GuardianRelationship),
                default_sql="'guardian'",
            ),
        ),
    ),
    EntitySpec(
        "enrollment",
        "Enrollments",
        "schools.Enrollment",
        (
            Target("student", "ref", required=True, ref="student"),
            Target("school", "ref", required=True, ref="school"),
            Target(
                "school_year",
                "ref",
                required=True,
                ref="academic_session",
                default_sql=CURRENT_SCHOOL_YEAR,
            ),
            Target("grade_level", "code", required=True, codes=_codes(sc.GradeLevel)),
            Target("entry_date", "date", required=True, default_sql=CURRENT_SCHOOL_YEAR_START),
            Target("exit_date", "date"),
            Target("exit_reason", "code", codes=_codes(sc.ExitReason)),
        ),
    ),
    EntitySpec(
        "student_demographic",
        "Demographics",
        "schools.StudentDemographic",
        (
            Target("student", "ref", required=True, ref="student"),
            Target("race_ethnicity", "code", required=True, codes=_codes(sc.RaceEthnicity)),
            Target("sex", "code", required=True, codes=_codes(sc.Sex)),
            Target("idea_disability", "bool", default_sql="false"),
            Target("section_504", "bool", default_sql="false"),
            Target("english_learner", "bool", default_sql="false"),
            Target("economically_disadvantaged", "bool", default_sql="false"),
            Target("valid_from", "date"),
        ),
        effective_dated=True,
        current_key="student",
        effective_from="valid_from",
    ),
    EntitySpec(
        "section",
        "Sections",
        "schools.Section",
        (
            Target("school", "ref", required=True, ref="school"),
            Target("session", "ref", required=True, ref="academic_session"),
            Target("course_code", required=True),
            Target("course_title", required=True),
            Target("section_code", required=True),
            Target("period"),
            Target("room"),
            Target("teacher", "ref", ref="staff"),
        ),
        natural_key=("school", "session", "section_code"),
    ),
    EntitySpec(
        "section_enrollment",
        "Section enrollments",
        "schools.SectionEnrollment",
        (
            Target("section", "ref", required=True, ref="section"),
            Target("student", "ref", required=True, ref="student"),
            Target("begin_date", "date", required=True, default_sql=CURRENT_SCHOOL_YEAR_START),
            Target("end_date", "date"),
        ),
    ),
    EntitySpec(
        "daily_attendance",
        "Daily attendance",
        "schools.DailyAttendance",
        (
            Target("student", "ref", required=True, ref="student"),
            Target("school", "ref", required=True, ref="school"),
            Target("date", "date", required=True),
            Target("status", "code", required=True, codes=_codes(sc.DailyAttendanceStatus)),
            Target("minutes_absent", "int", default_sql="0"),
        ),
        natural_key=("student", "school", "date"),
    ),
    EntitySpec(
        "grade",
        "Grades",
        "schools.Grade",
        (
            Target("student", "ref", required=True, ref="student"),
            Target("section", "ref", required=True, ref="section"),
            Target("grading_period", "ref", required=True, ref="academic_session"),
            Target("letter_grade"),
            Target("numeric_grade", "decimal"),
            Target("comment"),
        ),
        natural_key=("student", "section", "grading_period"),
    ),
)

BY_NAME: dict[str, EntitySpec] = {e.name: e for e in ENTITIES}
ORDER: dict[str, int] = {e.name: i for i, e in enumerate(ENTITIES)}


def spec(name: str) -> EntitySpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise LookupError(f"unknown entity {name!r}; known: {', '.join(BY_NAME)}") from None


def in_merge_order(names) -> list[str]:
    return sorted(names, key=lambda n: ORDER[n])
