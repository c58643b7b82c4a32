"""The school-data core: districts, schools, sessions, people, enrollment, attendance, grades.

Vocabulary follows OneRoster 1.2 and Ed-Fi (see shared/design/DOMAIN.md). Every table with
student data inherits TenantModel (district, change version, lineage) and declares its gate.
"""

from __future__ import annotations

from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import DateRangeField, RangeOperators
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Func, Q
from django.db.models.functions import Upper
from guardian.models import UserObjectPermissionBase

from bxos.common.constraints import (
    FieldConstraintErrors,
    in_range,
    not_before,
    on_field,
    valid_code,
)
from bxos.common.models import TenantModel, User
from bxos.common.permissions import Gate
from bxos.schools import choices


def _students_enrolled_in(student_path: str):
    """Gate dimension: rows whose student has an enrollment at one of the given schools."""

    def dimension(school_ids):
        enrolled = Enrollment.objects.filter(school_id__in=school_ids).values("student_id")
        return Q(**{f"{student_path}__in": enrolled})

    return dimension


class District(FieldConstraintErrors, models.Model):
    """A school district: the tenant. Nothing of one district is ever visible to another."""

    name = models.CharField(max_length=200)
    code = models.SlugField(max_length=32, unique=True, help_text="Short code, e.g. 'lincoln'.")
    state_code = models.CharField(max_length=2, help_text="Two-letter state, e.g. 'OR'.")
    nces_id = models.CharField("NCES LEA id", max_length=7, blank=True)
    time_zone = models.CharField(max_length=64, default="America/Chicago")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    gate = Gate(district="pk")

    class Meta:
        ordering = ["name"]
        constraints = [
            on_field(
                "state_code",
                models.CheckConstraint(
                    condition=Q(state_code__regex=r"^[A-Z]{2}$"),
                    name="district_state_code_format",
                    violation_error_message="State code must be two capital letters, e.g. OR.",
                ),
            ),
            on_field(
                "nces_id",
                models.CheckConstraint(
                    condition=Q(nces_id="") | Q(nces_id__regex=r"^[0-9]{7}$"),
                    name="district_nces_id_format",
                    violation_error_message="An NCES LEA id is seven digits.",
                ),
            ),
        ]

    def __str__(self) -> str:
        return self.name


class School(TenantModel):
    """A school of a district; each has its own time zone and BSR queue."""

    name = models.CharField(max_length=200)
    code = models.CharField(max_length=32, help_text="Local school code, unique in the district.")
    school_type = models.CharField(max_length=16, choices=choices.SchoolType.choices)
    grade_low = models.CharField(max_length=2, choices=choices.GradeLevel.choices)
    grade_high = models.CharField(max_length=2, choices=choices.GradeLevel.choices)
    nces_id = models.CharField("NCES school id", max_length=12, blank=True)
    time_zone = models.CharField(max_length=64, default="America/Chicago")

    gate = Gate(school="pk")
    event_prefix = "school"

    class Meta:
        ordering = ["name"]
        permissions = [("access_school", "Work with this school's student records")]
        constraints = [
            models.UniqueConstraint(
                fields=["district", "code"],
                name="school_code_unique_in_district",
                violation_error_message="Another school in this district has this code.",
            ),
            valid_code("school_type", choices.SchoolType, name="school_type_valid"),
            valid_code("grade_low", choices.GradeLevel, name="school_grade_low_valid"),
            valid_code("grade_high", choices.GradeLevel, name="school_grade_high_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class AcademicSession(TenantModel):
    """A school year, semester, term or grading period (OneRoster academicSession)."""

    name = models.CharField(max_length=100)
    session_type = models.CharField(max_length=16, choices=choices.SessionType.choices)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    school_year = models.PositiveSmallIntegerField(
        help_text="The year the school year ends in, e.g. 2027 for 2026-27."
    )
    start_date = models.DateField()
    end_date = models.DateField()

    gate = Gate()
    event_prefix = "academic_session"

    class Meta:
        ordering = ["start_date", "session_type", "name"]
        constraints = [
            valid_code("session_type", choices.SessionType, name="session_type_valid"),
            not_before("end_date", "start_date", name="session_end_after_start"),
            models.UniqueConstraint(
                fields=["district", "session_type", "name", "school_year"],
                name="session_unique_name",
                violation_error_message="This district already has a session with this name, "
                "type and school year.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if self.parent_id and self.start_date and self.end_date:
            parent = AcademicSession.objects.filter(pk=self.parent_id).first()
            if parent and (self.start_date < parent.start_date or self.end_date > parent.end_date):
                raise ValidationError(
                    {
                        "start_date": f"A session must lie within its parent {parent} "
                        f"({parent.start_date} to {parent.end_date})."
                    }
                )


class Student(TenantModel):
    """A student. Demographics live in StudentDemographic with effective dates."""

    student_number = models.CharField(max_length=32, help_text="Local student id.")
    state_id = models.CharField("state student id", max_length=32, blank=True)
    first_name = models.CharField(max_length=100)
    middle_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100)
    preferred_name = models.CharField(max_length=100, blank=True)
    birth_date = models.DateField()
    grade_level = models.CharField(max_length=2, choices=choices.GradeLevel.choices)
    email = models.EmailField(blank=True)
    is_active = models.BooleanField(default=True)

    gate = Gate(school=_students_enrolled_in("pk"), student="pk")
    event_prefix = "student"

    class Meta:
        ordering = ["last_name", "first_name", "id"]
        permissions = [("access_student", "Has this student on their caseload")]
        indexes = [
            models.Index(fields=["district", "last_name", "first_name"], name="student_name_idx"),
            # Admin search compiles to UPPER(col) LIKE UPPER('%term%'): trigram indexes on the
            # same expressions keep it an index scan in a district of a million students.
            GinIndex(OpClass(Upper("last_name"), name="gin_trgm_ops"), name="student_last_trgm"),
            GinIndex(OpClass(Upper("first_name"), name="gin_trgm_ops"), name="student_first_trgm"),
            GinIndex(
                OpClass(Upper("preferred_name"), name="gin_trgm_ops"), name="student_pref_trgm"
            ),
            models.Index(fields=["student_number"], name="student_number_idx"),
            models.Index(fields=["state_id"], name="student_state_id_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["district", "student_number"],
                name="student_number_unique_in_district",
                violation_error_message="Another student in this district has this student number.",
            ),
            models.UniqueConstraint(
                fields=["district", "state_id"],
                condition=~Q(state_id=""),
                name="student_state_id_unique_in_district",
                violation_error_message="Another student in this district has this state id.",
            ),
            valid_code("grade_level", choices.GradeLevel, name="student_grade_level_valid"),
            on_field(
                "birth_date",
                models.CheckConstraint(
                    condition=Q(birth_date__gte="1900-01-01"),
                    name="student_birth_date_plausible",
                    violation_error_message="Birth date is not plausible.",
                ),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.last_name}, {self.first_name} ({self.student_number})"

    def clean(self) -> None:
        super().clean()
        from django.utils import timezone

        if self.birth_date and self.birth_date > timezone.localdate():
            raise ValidationError({"birth_date": "Birth date cannot be in the future."})


class Guardian(TenantModel):
    """A parent or guardian; linked to students through StudentGuardian."""

    first_name = models.CharField(max_length=100)
    last_name = models.CharField(max_length=100)
    email = models.EmailField(blank=True)
    phone = models.CharField(max_length=32, blank=True)
    preferred_language = models.CharField(max_length=35, default="en", help_text="BCP 47 tag.")
    user = models.OneToOneField(
        User,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="guardian",
        help_text="Portal login, when the guardian has one.",
    )
    students = models.ManyToManyField(Student, through="StudentGuardian", related_name="guardians")

    gate = Gate(
        school=lambda ids: Q(
            pk__in=StudentGuardian.objects.filter(
                student_id__in=Enrollment.objects.filter(school_id__in=ids).values("student_id")
            ).values("guardian_id")
        ),
        student=lambda ids: Q(
            pk__in=StudentGuardian.objects.filter(student_id__in=ids).values("guardian_id")
        ),
    )
    event_prefix = "guardian"

    class Meta:
        ordering = ["last_name", "first_name", "id"]

    def __str__(self) -> str:
        return f"{self.last_name}, {self.first_name}"


class StudentGuardian(TenantModel):
    """The link between a student and a guardian, with custody and contact facts."""

    student = models.ForeignKey(Student, on_delete=models.CASCADE, related_name="guardian_links")
    guardian = models.ForeignKey(Guardian, on_delete=models.CASCADE, related_name="student_links")
    relationship = models.CharField(max_length=16, choices=choices.GuardianRelationship.choices)
    is_primary_contact = models.BooleanField(default=False)
    lives_with = models.BooleanField(default=True)
    has_custody = models.BooleanField(default=True)
    receives_notifications = models.BooleanField(default=True)

    gate = Gate(school=_students_enrolled_in("student_id"), student="student")
    event_prefix = "student_guardian"

    class Meta:
        ordering = ["student", "-is_primary_contact", "guardian"]
        verbose_name = "student-guardian link"
        constraints = [
            models.UniqueConstraint(
                fields=["student", "guardian"],
                name="student_guardian_unique",
                violation_error_message="This guardian is already linked to this student.",
            ),
            valid_code("relationship", choices.GuardianRelationship, name="guardian_rel_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.guardian} ({self.get_relationship_display()}) of {self.student}"


class StudentDemographic(TenantModel):
    """Demographics as of a date range: reports take them as of the incident date."""

    student = models.ForeignKey(Student, on_delete=models.CASCADE, related_name="demographics")
    valid_from = models.DateField()
    valid_to = models.DateField(null=True, blank=True, help_text="Exclusive; empty means current.")
    race_ethnicity = models.CharField(max_length=3, choices=choices.RaceEthnicity.choices)
    sex = models.CharField(max_length=1, choices=choices.Sex.choices)
    idea_disability = models.BooleanField("IDEA disability", default=False)
    section_504 = models.BooleanField("Section 504", default=False)
    english_learner = models.BooleanField(default=False)
    economically_disadvantaged = models.BooleanField(default=False)

    gate = Gate(school=_students_enrolled_in("student_id"), student="student")
    event_prefix = "student_demographic"

    class Meta:
        ordering = ["student", "-valid_from"]
        constraints = [
            on_field(
                "valid_to",
                models.CheckConstraint(
                    condition=Q(valid_to__isnull=True) | Q(valid_to__gt=F("valid_from")),
                    name="demographic_valid_to_after_from",
                    violation_error_message="Valid to must be after valid from.",
                ),
            ),
            ExclusionConstraint(
                name="demographic_no_overlap",
                expressions=[
                    ("student", RangeOperators.EQUAL),
                    (
                        Func(
                            F("valid_from"),
                            F("valid_to"),
                            models.Value("[)"),
                            function="daterange",
                            output_field=DateRangeField(),
                        ),
                        RangeOperators.OVERLAPS,
                    ),
                ],
                violation_error_message="These dates overlap another demographic record of "
                "this student.",
            ),
            valid_code("race_ethnicity", choices.RaceEthnicity, name="demographic_race_valid"),
            valid_code("sex", choices.Sex, name="demographic_sex_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.student} from {self.valid_from}"

    def clean(self) -> None:
        super().clean()
        if self.valid_to and self.valid_from and self.valid_to <= self.valid_from:
            raise ValidationError({"valid_to": "Valid to must be after valid from."})


class Staff(TenantModel):
    """A staff member (OneRoster teacher/administrator), optionally with a login."""

    user = models.OneToOneField(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="staff"
    )
    staff_number = models.CharField(max_length=32)
    first_name = models.CharField(max_length=100)
    last_name = models.CharField(max_length=100)
    email = models.EmailField(blank=True)
    position = models.CharField(max_length=24, choices=choices.StaffPosition.choices)
    schools = models.ManyToManyField(School, blank=True, related_name="staff")
    is_active = models.BooleanField(default=True)

    gate = Gate(
        school=lambda ids: Q(
            pk__in=Staff.schools.through.objects.filter(school_id__in=ids).values("staff_id")
        )
    )
    event_prefix = "staff"

    class Meta:
        ordering = ["last_name", "first_name", "id"]
        verbose_name_plural = "staff"
        constraints = [
            models.UniqueConstraint(
                fields=["district", "staff_number"],
                name="staff_number_unique_in_district",
                violation_error_message="Another staff member in this district has this number.",
            ),
            valid_code("position", choices.StaffPosition, name="staff_position_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.last_name}, {self.first_name}"


class Enrollment(TenantModel):
    """A student's enrollment at a school for a school year (Ed-Fi studentSchoolAssociation)."""

    student = models.ForeignKey(Student, on_delete=models.CASCADE, related_name="enrollments")
    school = models.ForeignKey(School, on_delete=models.PROTECT, related_name="enrollments")
    school_year = models.ForeignKey(
        AcademicSession,
        on_delete=models.PROTECT,
        related_name="enrollments",
        limit_choices_to={"session_type": choices.SessionType.SCHOOL_YEAR},
    )
    grade_level = models.CharField(max_length=2, choices=choices.GradeLevel.choices)
    entry_date = models.DateField()
    exit_date = models.DateField(null=True, blank=True)
    exit_reason = models.CharField(max_length=16, choices=choices.ExitReason.choices, blank=True)
    is_primary = models.BooleanField(default=True)

    gate = Gate(school="school", student="student")
    event_prefix = "enrollment"

    class Meta:
        ordering = ["-entry_date", "id"]
        indexes = [
            # The gate asks "students enrolled at these schools": an index-only scan.
            models.Index(fields=["school", "student"], name="enrollment_school_student"),
        ]
        constraints = [
            not_before(
                "exit_date",
                "entry_date",
                name="enrollment_exit_after_entry",
                message="Exit date cannot be before the entry date.",
            ),
            models.UniqueConstraint(
                fields=["student", "school"],
                condition=Q(exit_date__isnull=True),
                name="enrollment_one_open_per_school",
                violation_error_message="This student already has an open enrollment at this "
                "school; set an exit date on it first.",
            ),
            valid_code("grade_level", choices.GradeLevel, name="enrollment_grade_valid"),
            valid_code(
                "exit_reason", choices.ExitReason, name="enrollment_exit_reason_valid", blank=True
            ),
        ]

    def __str__(self) -> str:
        return f"{self.student} at {self.school} from {self.entry_date}"

    def clean(self) -> None:
        super().clean()
        if self.exit_date and self.entry_date and self.exit_date < self.entry_date:
            raise ValidationError({"exit_date": "Exit date cannot be before the entry date."})
        if self.exit_reason and not self.exit_date:
            raise ValidationError({"exit_reason": "An exit reason needs an exit date."})


class Section(TenantModel):
    """A class section (OneRoster class) taught in a term."""

    school = models.ForeignKey(School, on_delete=models.PROTECT, related_name="sections")
    session = models.ForeignKey(AcademicSession, on_delete=models.PROTECT, related_name="sections")
    course_code = models.CharField(max_length=32)
    course_title = models.CharField(max_length=200)
    section_code = models.CharField(max_length=32)
    period = models.CharField(max_length=16, blank=True)
    room = models.CharField(max_length=32, blank=True)
    teacher = models.ForeignKey(
        Staff, null=True, blank=True, on_delete=models.SET_NULL, related_name="sections"
    )

    gate = Gate(school="school", section="pk")
    event_prefix = "section"

    class Meta:
        ordering = ["school", "course_code", "section_code"]
        permissions = [("access_section", "Teaches or supports this section")]
        constraints = [
            models.UniqueConstraint(
                fields=["school", "session", "section_code"],
                name="section_code_unique",
                violation_error_message="This school already has a section with this code in "
                "this session.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.course_title} ({self.section_code})"


class SectionEnrollment(TenantModel):
    """A student in a section (Ed-Fi studentSectionAssociation)."""

    section = models.ForeignKey(Section, on_delete=models.CASCADE, related_name="enrollments")
    student = models.ForeignKey(
        Student, on_delete=models.CASCADE, related_name="section_enrollments"
    )
    begin_date = models.DateField()
    end_date = models.DateField(null=True, blank=True)

    gate = Gate(school="section__school", student="student", section="section")
    event_prefix = "section_enrollment"

    class Meta:
        ordering = ["section", "student"]
        constraints = [
            not_before("end_date", "begin_date", name="section_enrollment_end_after_begin"),
            models.UniqueConstraint(
                fields=["section", "student"],
                condition=Q(end_date__isnull=True),
                name="section_enrollment_one_open",
                violation_error_message="This student is already enrolled in this section.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.student} in {self.section}"

    def clean(self) -> None:
        super().clean()
        if self.end_date and self.begin_date and self.end_date < self.begin_date:
            raise ValidationError({"end_date": "End date cannot be before the begin date."})


class DailyAttendance(TenantModel):
    """A student's attendance for one school day."""

    student = models.ForeignKey(Student, on_delete=models.CASCADE, related_name="daily_attendance")
    school = models.ForeignKey(School, on_delete=models.PROTECT, related_name="daily_attendance")
    date = models.DateField()
    status = models.CharField(max_length=16, choices=choices.DailyAttendanceStatus.choices)
    minutes_absent = models.PositiveSmallIntegerField(default=0)

    gate = Gate(school="school", student="student")
    event_prefix = "attendance"

    class Meta:
        ordering = ["-date", "student"]
        verbose_name_plural = "daily attendance"
        constraints = [
            models.UniqueConstraint(
                fields=["student", "school", "date"],
                name="daily_attendance_one_per_day",
                violation_error_message="This student already has attendance for this day.",
            ),
            valid_code(
                "status", choices.DailyAttendanceStatus, name="daily_attendance_status_valid"
            ),
            in_range(
                "minutes_absent", 0, 1440, name="daily_attendance_minutes_range", nullable=False
            ),
        ]
        indexes = [models.Index(fields=["school", "date"], name="daily_att_school_date")]

    def __str__(self) -> str:
        return f"{self.student} {self.date}: {self.get_status_display()}"


class PeriodAttendance(TenantModel):
    """A student's attendance in one section meeting."""

    student = models.ForeignKey(Student, on_delete=models.CASCADE, related_name="period_attendance")
    section = models.ForeignKey(Section, on_delete=models.CASCADE, related_name="attendance")
    date = models.DateField()
    status = models.CharField(max_length=16, choices=choices.DailyAttendanceStatus.choices)

    gate = Gate(school="section__school", student="student", section="section")
    event_prefix = "attendance"

    class Meta:
        ordering = ["-date", "section", "student"]
        verbose_name_plural = "period attendance"
        constraints = [
            models.UniqueConstraint(
                fields=["student", "section", "date"],
                name="period_attendance_one_per_meeting",
                violation_error_message="This student already has attendance for this section "
                "on this day.",
            ),
            valid_code(
                "status", choices.DailyAttendanceStatus, name="period_attendance_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.student} {self.section} {self.date}: {self.get_status_display()}"


class Grade(TenantModel):
    """A mark for a student in a section for a grading period (grade book sync)."""

    student = models.ForeignKey(Student, on_delete=models.CASCADE, related_name="grades")
    section = models.ForeignKey(Section, on_delete=models.CASCADE, related_name="grades")
    grading_period = models.ForeignKey(
        AcademicSession, on_delete=models.PROTECT, related_name="grades"
    )
    letter_grade = models.CharField(max_length=4, blank=True)
    numeric_grade = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True)
    comment = models.CharField(max_length=500, blank=True)

    gate = Gate(school="section__school", student="student", section="section")
    event_prefix = "grade"

    class Meta:
        ordering = ["student", "section", "grading_period"]
        constraints = [
            models.UniqueConstraint(
                fields=["student", "section", "grading_period"],
                name="grade_one_per_period",
                violation_error_message="This student already has a grade for this section and "
                "grading period.",
            ),
            in_range("numeric_grade", 0, 100, name="grade_numeric_range"),
            on_field(
                "letter_grade",
                models.CheckConstraint(
                    condition=~Q(letter_grade="", numeric_grade__isnull=True),
                    name="grade_has_a_mark",
                    violation_error_message="Give a letter grade, a numeric grade, or both.",
                ),
            ),
        ]

    def __str__(self) -> str:
        mark = self.letter_grade or self.numeric_grade
        return f"{self.student} {self.section}: {mark}"

    def clean(self) -> None:
        super().clean()
        if self.numeric_grade is not None and not (0 <= self.numeric_grade <= 100):
            raise ValidationError({"numeric_grade": "Numeric grade must be between 0 and 100."})
        if not self.letter_grade and self.numeric_grade is None:
            raise ValidationError(
                {"letter_grade": "Give a letter grade, a numeric grade, or both."}
            )


# --- django-guardian object permissions, as direct foreign keys (fast joins on big tables) ----


class SchoolUserObjectPermission(UserObjectPermissionBase):
    """A user's access to one school (school admins, counselors)."""

    content_object = models.ForeignKey(School, on_delete=models.CASCADE)

    class Meta(UserObjectPermissionBase.Meta):
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.user} may {self.permission.codename} {self.content_object}"


class SectionUserObjectPermission(UserObjectPermissionBase):
    """A user's access to one section (teachers)."""

    content_object = models.ForeignKey(Section, on_delete=models.CASCADE)

    class Meta(UserObjectPermissionBase.Meta):
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.user} may {self.permission.codename} {self.content_object}"


class StudentUserObjectPermission(UserObjectPermissionBase):
    """A student on a user's caseload (counselors)."""

    content_object = models.ForeignKey(Student, on_delete=models.CASCADE)

    class Meta(UserObjectPermissionBase.Meta):
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.user} may {self.permission.codename} {self.content_object}"
