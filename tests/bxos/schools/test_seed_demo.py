"""`manage.py seed_demo`: what it builds, who can sign in, and that it is repeatable.

Runs at a small size (150 students) for speed; the default size and 100,000 students are
measured by bench/seed_demo.py, not here. Not transactional: the shared test districts
(tests/conftest.py) and the shipped code lists survive, and the seed's per-district
transactions become savepoints of the test's transaction. Every query is scoped to the demo
districts because the shared ones live in the same database.
"""

from __future__ import annotations

import io
import itertools

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db.models import Count, F, Q

from bxos.behavior import choices as bchoices
from bxos.behavior.models import (
    BehaviorSupportRequest,
    BsrTransition,
    Incident,
    IncidentAction,
    IncidentParticipant,
    Intervention,
)
from bxos.common import roles
from bxos.common.audit import system_actor
from bxos.common.models import User
from bxos.common.permissions import restrict
from bxos.schools import demo
from bxos.schools.choices import SessionType, StaffPosition
from bxos.schools.models import (
    AcademicSession,
    DailyAttendance,
    District,
    Enrollment,
    Grade,
    Guardian,
    PeriodAttendance,
    School,
    Section,
    SectionEnrollment,
    Staff,
    Student,
    StudentDemographic,
    StudentGuardian,
)

pytestmark = pytest.mark.django_db

SMALL = "150"
DEMO = Q(district__code__in=demo.DEMO_DISTRICTS)
COUNTED = (
    Student,
    Guardian,
    StudentGuardian,
    StudentDemographic,
    Enrollment,
    Staff,
    Section,
    SectionEnrollment,
    DailyAttendance,
    PeriodAttendance,
    Grade,
    Incident,
    IncidentAction,
    IncidentParticipant,
    BehaviorSupportRequest,
    BsrTransition,
    Intervention,
)


def seed(*args: str, students: str = SMALL) -> str:
    out = io.StringIO()
    call_command("seed_demo", "--students", students, "--quiet", *args, stdout=out)
    return out.getvalue()


def counts(district: str | None = None) -> dict[str, int]:
    """Rows per table in one demo district, or in both."""
    where = Q(district__code=district) if district else DEMO
    return {model.__name__: model.objects.filter(where).count() for model in COUNTED}


def student_names() -> list[tuple]:
    return list(
        Student.objects.filter(DEMO)
        .order_by("district__code", "student_number")
        .values_list("first_name", "last_name", "grade_level", "birth_date")
    )


def referral_keys() -> list[tuple]:
    return list(
        Incident.objects.filter(DEMO)
        .order_by("student__student_number", "occurred_on", "occurred_at", "problem_behavior")
        .values_list("student__student_number", "occurred_on", "problem_behavior__code")
    )


def test_builds_both_districts_at_the_requested_size():
    seed()
    lincoln = District.objects.get(code="lincoln")
    riverside = District.objects.get(code="riverside")
    assert lincoln.state_code == "OR"
    types = School.objects.filter(district=lincoln).values_list("school_type", flat=True)
    assert sorted(types) == ["elementary", "high", "middle"]
    assert School.objects.filter(district=riverside).count() == 1
    assert Student.objects.filter(district=lincoln).count() == 150
    assert Student.objects.filter(district=riverside).count() == 60

    # The school year with two semesters and four quarters nested in them.
    year = AcademicSession.objects.get(district=lincoln, session_type=SessionType.SCHOOL_YEAR)
    assert (year.school_year, str(year.start_date), str(year.end_date)) == (
        2027,
        "2026-08-24",
        "2027-06-11",
    )
    semesters = AcademicSession.objects.filter(parent=year, session_type=SessionType.SEMESTER)
    assert semesters.count() == 2
    quarters = AcademicSession.objects.filter(
        parent__in=semesters, session_type=SessionType.GRADING_PERIOD
    )
    assert quarters.count() == 4

    # One open enrollment per student, at a school serving their grade, in the school year.
    enrollments = Enrollment.objects.filter(district=lincoln)
    assert enrollments.count() == 150
    assert enrollments.filter(exit_date__isnull=True, school_year=year).count() == 150
    assert not enrollments.exclude(grade_level=F("student__grade_level")).exists()
    for e in enrollments.select_related("school"):
        low, high = demo.GRADES.index(e.school.grade_low), demo.GRADES.index(e.school.grade_high)
        assert e.grade_level in demo.GRADES[low : high + 1]

    # Daily attendance for every school day from entry to 2026-11-20, no weekends or holidays.
    days = demo.school_days(demo.YEAR_START, demo.DATA_END)
    expected = sum(
        len([d for d in days if d >= e.entry_date]) for e in Enrollment.objects.filter(DEMO)
    )
    assert DailyAttendance.objects.filter(DEMO).count() == expected
    dates = set(DailyAttendance.objects.filter(DEMO).values_list("date", flat=True).distinct())
    assert dates == set(days)
    assert not any(d.weekday() >= 5 or d in demo.HOLIDAYS for d in dates)
    assert PeriodAttendance.objects.filter(DEMO).exists()

    # Every student has 1 or 2 guardians and one current demographic record.
    links = Student.objects.filter(DEMO).annotate(n=Count("guardian_links"))
    assert set(links.values_list("n", flat=True)) <= {1, 2}
    assert StudentDemographic.objects.filter(DEMO, valid_to__isnull=True).count() == 210

    # Staff in every position, each with a school.
    positions = set(Staff.objects.filter(district=lincoln).values_list("position", flat=True))
    assert positions == set(StaffPosition.values)
    assert not Staff.objects.filter(district=lincoln, schools__isnull=True).exists()

    # Referrals at about 6.7 per student (plus the few made through the services).
    assert 900 <= Incident.objects.filter(district=lincoln).count() <= 1100
    grades = Grade.objects.filter(DEMO)
    assert grades.filter(grading_period__name="Quarter 1").count() == grades.count() > 0
    assert not grades.filter(letter_grade="").exists()
    assert not grades.filter(numeric_grade__isnull=True).exists()


def test_sizes_scale_with_students():
    seed()
    small = counts("lincoln")
    seed("--reset", students="300")
    large = counts("lincoln")
    assert large["Student"] == 300
    for name in ("Enrollment", "SectionEnrollment", "DailyAttendance", "Grade", "Incident"):
        assert 1.7 <= large[name] / small[name] <= 2.3, name
    assert large["Section"] > small["Section"]
    assert large["Staff"] > small["Staff"]
    # Riverside does not follow --students.
    assert counts("riverside")["Student"] == 60


def test_demo_logins_have_their_roles_and_access():
    seed()
    expected_groups = {
        "district.admin": roles.DISTRICT_ADMIN,
        "school.admin": roles.SCHOOL_ADMIN,
        "counselor": roles.COUNSELOR,
        "teacher": roles.TEACHER,
        "riverside.admin": roles.DISTRICT_ADMIN,
    }
    for username, group in expected_groups.items():
        user = User.objects.get(username=username)
        assert list(user.groups.values_list("name", flat=True)) == [group]
        assert user.is_staff and user.is_active and not user.is_superuser
        assert user.check_password(demo.DEMO_PASSWORD)
        district = "riverside" if username.startswith("riverside") else "lincoln"
        assert user.staff.district.code == district
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(demo.DEMO_PASSWORD)

    lhs = School.objects.get(district__code="lincoln", code="LHS")
    lms = School.objects.get(district__code="lincoln", code="LMS")
    principal = User.objects.get(username="school.admin")
    assert principal.staff.position == StaffPosition.PRINCIPAL
    held = roles.school_ids_of(principal).values_list("content_object_id", flat=True)
    assert set(held) == {lhs.pk}

    counselor = User.objects.get(username="counselor")
    held = roles.school_ids_of(counselor).values_list("content_object_id", flat=True)
    assert set(held) == {lms.pk}
    caseload = Student.objects.filter(
        pk__in=roles.caseload_student_ids_of(counselor).values("content_object_id")
    )
    assert caseload.count() == 25
    assert all(counselor.has_perm("schools.access_student", s) for s in caseload)
    # The caseload reaches 9th graders at the high school, which the school grant does not.
    ninth = caseload.filter(grade_level="09")
    assert ninth.exists()
    visible = set(restrict(Student.objects.all(), counselor).values_list("pk", flat=True))
    assert set(ninth.values_list("pk", flat=True)) <= visible

    teacher = User.objects.get(username="teacher")
    taught = set(Section.objects.filter(teacher=teacher.staff).values_list("pk", flat=True))
    assert len(taught) >= 2
    held = roles.section_ids_of(teacher).values_list("content_object_id", flat=True)
    assert set(held) == taught
    assert not Section.objects.filter(pk__in=taught).exclude(school=lhs).exists()


def test_referrals_are_consistent_with_the_code_lists_and_rules():
    seed()
    incidents = Incident.objects.filter(DEMO)
    assert incidents.exists()
    mismatched = incidents.exclude(
        Q(level=bchoices.IncidentLevel.MINOR, problem_behavior__category="behavior_minor")
        | Q(level=bchoices.IncidentLevel.MAJOR, problem_behavior__category="behavior_major")
    )
    assert not mismatched.exists()
    # The shipped code lists (district NULL), each field from its own list.
    assert not incidents.filter(problem_behavior__district__isnull=False).exists()
    assert not incidents.exclude(location__category="location").exists()
    assert not incidents.exclude(location__district__isnull=True).exists()
    assert not incidents.filter(school_related_arrest=True, law_enforcement_referral=False).exists()
    # Suspension lengths come in half days.
    actions = IncidentAction.objects.filter(DEMO)
    for days in actions.values_list("duration_days", flat=True):
        assert days >= 0 and (days * 2) % 1 == 0
    assert actions.filter(duration_days__gt=0).exists()
    # Participants are other students of the same school.
    participants = IncidentParticipant.objects.filter(DEMO)
    assert participants.exists()
    assert not participants.filter(student=F("incident__student")).exists()
    assert not participants.exclude(student__enrollments__school=F("incident__school")).exists()
    # Most students have no referral; a few have many.
    per_student = sorted(
        Student.objects.filter(district__code="lincoln")
        .annotate(n=Count("incidents"))
        .values_list("n", flat=True),
        reverse=True,
    )
    assert per_student.count(0) > len(per_student) / 2
    assert per_student[0] >= 10


def test_bsr_histories_are_paths_the_workflow_allows():
    for state, paths in demo.BSR_PATHS.items():
        for path in paths:
            assert (path[0], path[-1]) == (bchoices.BsrState.SUBMITTED, state)
            for before, after in itertools.pairwise(path):
                assert after in bchoices.BSR_TRANSITIONS[before], (before, after)


def test_support_requests_follow_the_workflow():
    seed()
    requests = BehaviorSupportRequest.objects.filter(DEMO)
    states = set(requests.filter(district__code="lincoln").values_list("state", flat=True))
    assert states == set(bchoices.BsrState.values)
    # Triage sets the priority: every request that was triaged has one.
    assert not requests.filter(priority__isnull=True, transitions__to_state="triaged").exists()
    assert not requests.filter(priority__isnull=True, state__in=["triaged", "in_progress"]).exists()
    for bsr in requests.prefetch_related("transitions"):
        steps = sorted(bsr.transitions.all(), key=lambda t: (t.at, t.pk))
        assert (steps[0].from_state, steps[0].to_state) == ("", "submitted")
        for before, after in itertools.pairwise(steps):
            assert after.from_state == before.to_state
            assert after.to_state in bchoices.BSR_TRANSITIONS[before.to_state]
            assert after.at >= before.at
        assert steps[-1].to_state == bsr.state
        assert (bsr.closed_at is not None) == (bsr.state not in bchoices.OPEN_BSR_STATES)
    interventions = Intervention.objects.filter(DEMO)
    assert set(interventions.values_list("tier", flat=True)) == {1, 2, 3}
    noted = interventions.exclude(confidential_notes="").first()
    assert noted is not None and noted.confidential_notes  # decrypts with the current keys


def test_demographic_changes_are_two_adjacent_ranges():
    seed()
    changed = (
        StudentDemographic.objects.filter(DEMO)
        .values("student")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("student", flat=True)
    )
    assert changed
    for student_id in changed:
        first, second = StudentDemographic.objects.filter(student_id=student_id).order_by(
            "valid_from"
        )
        assert first.valid_to == second.valid_from and second.valid_to is None
        assert (first.race_ethnicity, first.sex) == (second.race_ethnicity, second.sex)


def test_tenancy_riverside_sees_only_riverside():
    seed()
    riverside = District.objects.get(code="riverside")
    assert not (
        Enrollment.objects.filter(student__district=riverside)
        .exclude(school__district=riverside)
        .exists()
    )
    for model in (Incident, BehaviorSupportRequest, Intervention):
        assert (
            not model.objects.filter(district=riverside)
            .exclude(student__district=riverside)
            .exists()
        )
    admin = User.objects.get(username="riverside.admin")
    visible = restrict(Student.objects.all(), admin)
    assert visible.count() == 60
    assert set(visible.values_list("district_id", flat=True)) == {riverside.pk}
    assert not restrict(Incident.objects.filter(district__code="lincoln"), admin).exists()


def test_same_seed_gives_the_same_data():
    seed()
    names, before, referrals = student_names(), counts(), referral_keys()
    out = seed("--reset")
    assert "Seeded lincoln, riverside" in out
    assert student_names() == names
    assert counts() == before
    assert referral_keys() == referrals
    # Another seed gives other people.
    seed("--reset", "--seed", "7")
    assert student_names() != names


def test_second_run_changes_nothing():
    seed()
    before = counts()
    entries = LogEntry.objects.count()
    out = seed()
    assert "already present" in out
    assert counts() == before
    assert LogEntry.objects.count() == entries
    for username, _ in demo.DEMO_LOGINS:
        assert username in out


def test_bulk_writes_are_audited_per_batch_as_the_system_actor():
    seed()
    actor = system_actor()
    for model in (
        Student,
        Guardian,
        StudentGuardian,
        StudentDemographic,
        Enrollment,
        SectionEnrollment,
        DailyAttendance,
        Grade,
        Incident,
        IncidentAction,
        IncidentParticipant,
    ):
        batches = LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(model),
            action=LogEntry.Action.CREATE,
            changes__batch__note="seed_demo",
        )
        assert batches.exists(), model
        assert set(batches.values_list("actor", flat=True)) == {actor.pk}, model
        # One entry per batch, not per row; with the few rows made through the services (one
        # entry each), every row is accounted for.
        rows = model.objects.filter(DEMO)
        written = sum(b.changes["batch"]["count"] for b in batches)
        one_by_one = LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(model),
            action=LogEntry.Action.CREATE,
            object_id__in=rows.values("pk"),
        ).count()
        assert written + one_by_one == rows.count(), model
        assert batches.count() <= 2  # one batch per district at this size
    # The few writes made through the services have their own per-object entries.
    schools = School.objects.filter(DEMO)
    school_entries = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(School),
        action=LogEntry.Action.CREATE,
        object_id__in=schools.values("pk"),
    )
    assert school_entries.count() == schools.count() == 4
    assert set(school_entries.values_list("actor", flat=True)) == {actor.pk}
