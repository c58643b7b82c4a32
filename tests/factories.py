"""A small, fully linked district for tests: two schools, a user per role, a row of every model.

``build_district("north")`` returns a namespace; call it twice to get two tenants. The layout is
chosen so that each role sees a different, known subset:

- school A: students a1 (in the teacher's section) and a2 (on the counselor's caseload);
- school B: student b1;
- school admin: school A; counselor: school B plus caseload {a2}; teacher: section A1 = {a1}.
"""

from __future__ import annotations

from datetime import date, time, timedelta
from decimal import Decimal
from types import SimpleNamespace

from django.utils import timezone

from bxos.behavior import choices as bch
from bxos.behavior import services as bsvc
from bxos.behavior.models import (
    Descriptor,
    IncidentAction,
    IncidentParticipant,
    Intervention,
)
from bxos.common.audit import system_actor
from bxos.common.services import model_create
from bxos.schools import choices as sch
from bxos.schools import services as ssvc
from bxos.schools.models import (
    AcademicSession,
    DailyAttendance,
    District,
    Grade,
    Guardian,
    PeriodAttendance,
    School,
    Section,
    Staff,
    StudentDemographic,
    StudentGuardian,
)

PASSWORD = "test-pass-123"


def descriptor(category: str, code: str) -> Descriptor:
    return Descriptor.objects.get(district=None, category=category, code=code)


def build_district(code: str) -> SimpleNamespace:
    actor = system_actor()
    w = SimpleNamespace(code=code)
    w.district = District.objects.create(
        name=f"{code.title()} District", code=code, state_code="OR"
    )

    def create(model, **data):
        return model_create(model=model, actor=actor, data={"district": w.district, **data})

    w.school_a = create(
        School,
        name=f"{code} Alpha High",
        code=f"{code}-A",
        school_type=sch.SchoolType.HIGH,
        grade_low="09",
        grade_high="12",
    )
    w.school_b = create(
        School,
        name=f"{code} Beta Middle",
        code=f"{code}-B",
        school_type=sch.SchoolType.MIDDLE,
        grade_low="06",
        grade_high="08",
    )
    w.year = create(
        AcademicSession,
        name="2026-27",
        session_type=sch.SessionType.SCHOOL_YEAR,
        school_year=2027,
        start_date=date(2026, 8, 24),
        end_date=date(2027, 6, 11),
    )
    w.term = create(
        AcademicSession,
        name="Fall 2026",
        session_type=sch.SessionType.SEMESTER,
        school_year=2027,
        parent=w.year,
        start_date=date(2026, 8, 24),
        end_date=date(2027, 1, 22),
    )
    w.quarter = create(
        AcademicSession,
        name="Q1",
        session_type=sch.SessionType.GRADING_PERIOD,
        school_year=2027,
        parent=w.term,
        start_date=date(2026, 8, 24),
        end_date=date(2026, 10, 30),
    )

    def student(number, first, last, grade, school):
        s = ssvc.student_create(
            actor=actor,
            district=w.district,
            student_number=number,
            first_name=first,
            last_name=last,
            birth_date=date(2011, 3, 4),
            grade_level=grade,
        )
        ssvc.enrollment_create(
            actor=actor,
            student=s,
            school=school,
            school_year=w.year,
            grade_level=grade,
            entry_date=date(2026, 8, 24),
        )
        return s

    w.a1 = student(f"{code}-1001", "Ava", f"{code.title()}one", "10", w.school_a)
    w.a2 = student(f"{code}-1002", "Ben", f"{code.title()}two", "11", w.school_a)
    w.b1 = student(f"{code}-2001", "Cal", f"{code.title()}three", "07", w.school_b)
    w.students = [w.a1, w.a2, w.b1]

    def staff(number, first, position, schools, username):
        st = create(
            Staff,
            staff_number=number,
            first_name=first,
            last_name=code.title(),
            email=f"{username}@{code}.example.org",
            position=position,
        )
        ssvc.staff_login_create(actor=actor, staff=st, username=username, password=PASSWORD)
        st.refresh_from_db()
        ssvc.staff_set_schools(actor=actor, staff=st, schools=schools)
        return st

    w.district_admin_staff = staff(
        f"{code}-S1", "Dana", sch.StaffPosition.DISTRICT_ADMIN, [], f"{code}.district"
    )
    w.school_admin_staff = staff(
        f"{code}-S2", "Sam", sch.StaffPosition.PRINCIPAL, [w.school_a], f"{code}.school"
    )
    w.counselor_staff = staff(
        f"{code}-S3", "Cora", sch.StaffPosition.COUNSELOR, [w.school_b], f"{code}.counselor"
    )
    w.teacher_staff = staff(
        f"{code}-S4", "Theo", sch.StaffPosition.TEACHER, [w.school_a], f"{code}.teacher"
    )
    w.users = {
        "district_admin": w.district_admin_staff.user,
        "school_admin": w.school_admin_staff.user,
        "counselor": w.counselor_staff.user,
        "teacher": w.teacher_staff.user,
    }
    ssvc.caseload_add(actor=actor, counselor=w.counselor_staff.user, students=[w.a2])

    w.section_a = create(
        Section,
        school=w.school_a,
        session=w.term,
        course_code="ENG10",
        course_title="English 10",
        section_code=f"{code}-ENG10-1",
        period="1",
    )
    ssvc.section_set_teacher(actor=actor, section=w.section_a, teacher=w.teacher_staff)
    w.section_b = create(
        Section,
        school=w.school_b,
        session=w.term,
        course_code="MTH7",
        course_title="Math 7",
        section_code=f"{code}-MTH7-1",
        period="2",
    )
    w.section_enrollment = ssvc.section_enroll(
        actor=actor, section=w.section_a, student=w.a1, begin_date=date(2026, 8, 24)
    )
    ssvc.section_enroll(
        actor=actor, section=w.section_b, student=w.b1, begin_date=date(2026, 8, 24)
    )

    w.guardian = create(
        Guardian,
        first_name="Gail",
        last_name=f"{code.title()}one",
        email=f"gail@{code}.example.org",
    )
    create(
        StudentGuardian,
        student=w.a1,
        guardian=w.guardian,
        relationship=sch.GuardianRelationship.MOTHER,
        is_primary_contact=True,
    )
    for s in w.students:
        create(
            StudentDemographic,
            student=s,
            valid_from=date(2026, 8, 1),
            race_ethnicity=sch.RaceEthnicity.HI7,
            sex=sch.Sex.FEMALE,
        )
        create(
            DailyAttendance,
            student=s,
            school=s.enrollments.get().school,
            date=date(2026, 9, 1),
            status=sch.DailyAttendanceStatus.PRESENT,
        )
    create(
        PeriodAttendance,
        student=w.a1,
        section=w.section_a,
        date=date(2026, 9, 1),
        status=sch.DailyAttendanceStatus.TARDY,
    )
    create(
        Grade,
        student=w.a1,
        section=w.section_a,
        grading_period=w.quarter,
        letter_grade="B+",
        numeric_grade=Decimal("88.5"),
    )
    create(
        Grade,
        student=w.b1,
        section=w.section_b,
        grading_period=w.quarter,
        letter_grade="A",
        numeric_grade=Decimal("95"),
    )

    w.incidents = {}
    for s in w.students:
        school = s.enrollments.get().school
        w.incidents[s.pk] = bsvc.incident_create(
            actor=actor,
            student=s,
            school=school,
            reported_by=w.teacher_staff,
            occurred_on=date(2026, 9, 15),
            occurred_at=time(10, 30),
            level=bch.IncidentLevel.MAJOR,
            problem_behavior=descriptor(
                bch.DescriptorCategory.PROBLEM_BEHAVIOR_MAJOR, "fighting-physical-aggression"
            ),
            location=descriptor(bch.DescriptorCategory.LOCATION, "hallway"),
        )
        create(
            IncidentAction,
            incident=w.incidents[s.pk],
            action=descriptor(bch.DescriptorCategory.ACTION, "out-of-school-suspension"),
            duration_days=Decimal("1.5"),
            start_date=date(2026, 9, 16),
            end_date=date(2026, 9, 17),
        )
    create(
        IncidentParticipant,
        incident=w.incidents[w.a1.pk],
        student=w.a2,
        role=bch.ParticipantRole.VICTIM,
    )
    w.bsrs = {}
    for s in w.students:
        school = s.enrollments.get().school
        w.bsrs[s.pk] = bsvc.bsr_submit(
            actor=actor,
            student=s,
            school=school,
            requested_by=w.teacher_staff,
            concern="Frequent conflicts at lunch.",
        )
        create(
            Intervention,
            student=s,
            school=school,
            tier=bch.InterventionTier.TIER_2,
            intervention_type=descriptor(
                bch.DescriptorCategory.INTERVENTION_TYPE, "check-in-check-out"
            ),
            start_date=date(2026, 9, 20),
            planned_end_date=date(2026, 12, 18),
            confidential_notes="Family situation discussed with counselor.",
        )
    from bxos.api.models import FieldProfile
    from bxos.api.services import api_client_create

    w.field_profile = FieldProfile.objects.create(
        district=w.district, name="Roster only", fields={"students": ["firstName"]}
    )
    w.api_client, w.api_secret = api_client_create(
        actor=actor,
        district=w.district,
        name=f"{code.title()} Reading App",
        contact_name="Ron",
        contact_email="ron@reading.example",
        purpose="Reading groups",
        contract_end_date=date(2027, 6, 30),
        scopes=["roster.readonly"],
        status="production",
        field_profile=w.field_profile,
    )
    from bxos.api.models import ThrottleException, ThrottleRule

    w.throttle_rule = ThrottleRule.objects.create(
        district=w.district,
        name="Incidents at night",
        endpoint_group="incidents",
        rate_per_minute=100000,
        rate_per_hour=1000000,
    )
    w.throttle_exception = ThrottleException.objects.create(
        district=w.district,
        client=w.api_client,
        reason="Roster rebuild weekend",
        rate_per_minute=100000,
        rate_per_hour=1000000,
        starts_at=timezone.now() - timedelta(days=30),
        expires_at=timezone.now() - timedelta(days=29),
    )
    w.now = timezone.now()
    w.later = w.now + timedelta(days=1)
    return w
