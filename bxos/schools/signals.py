"""Audit registration and event catalogue of the school-data core."""

from bxos.common import events
from bxos.common.audit import register_audit
from bxos.schools import models as m

for model in (
    m.District,
    m.School,
    m.AcademicSession,
    m.Student,
    m.Guardian,
    m.StudentGuardian,
    m.StudentDemographic,
    m.Staff,
    m.Enrollment,
    m.Section,
    m.SectionEnrollment,
    m.DailyAttendance,
    m.PeriodAttendance,
    m.Grade,
):
    register_audit(model)

for entity, label in (
    ("district", "district"),
    ("school", "school"),
    ("academic_session", "academic session"),
    ("student", "student"),
    ("guardian", "guardian"),
    ("student_guardian", "student-guardian link"),
    ("student_demographic", "student demographic record"),
    ("staff", "staff member"),
    ("enrollment", "enrollment"),
    ("section", "section"),
    ("section_enrollment", "section enrollment"),
    ("attendance", "attendance record"),
    ("grade", "grade"),
):
    events.register_crud_events(entity, label)
