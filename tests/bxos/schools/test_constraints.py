"""Each data rule rejects its bad value with a clear message, at every level.

- service: a ValidationError naming the field, nothing written;
- admin form: the page comes back (200) with the error on the field, never a 500;
- database: the constraint itself refuses the value when validation is bypassed.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse

from bxos.behavior.models import BehaviorSupportRequest, Incident, IncidentAction, Intervention
from bxos.common.services import model_create, model_update
from bxos.schools.models import (
    AcademicSession,
    DailyAttendance,
    District,
    Enrollment,
    Grade,
    SectionEnrollment,
    Student,
    StudentDemographic,
)
from tests.factories import descriptor

# (label, object getter, field, bad value, message fragment, database constraint or None)
CASES = [
    (
        "exit before entry",
        lambda w: Enrollment.objects.filter(student=w.a1).get(),
        "exit_date",
        date(2026, 8, 1),
        "Exit date cannot be before the entry date",
        "enrollment_exit_after_entry",
    ),
    (
        "negative duration",
        lambda w: IncidentAction.objects.filter(district=w.district).first(),
        "duration_days",
        Decimal("-1"),
        "Duration cannot be negative",
        "incident_action_duration_not_negative",
    ),
    (
        "half-day steps",
        lambda w: IncidentAction.objects.filter(district=w.district).first(),
        "duration_days",
        Decimal("1.3"),
        "half days",
        None,
    ),
    (
        "grade level code",
        lambda w: w.a1,
        "grade_level",
        "13",
        "is not a valid choice",
        "student_grade_level_valid",
    ),
    (
        "birth date in future",
        lambda w: w.a1,
        "birth_date",
        date.today() + timedelta(days=3),
        "cannot be in the future",
        None,
    ),
    (
        "numeric grade range",
        lambda w: Grade.objects.filter(student=w.a1).get(),
        "numeric_grade",
        Decimal("120"),
        "between 0 and 100",
        "grade_numeric_range",
    ),
    (
        "bsr priority range",
        lambda w: w.bsrs[w.a1.pk],
        "priority",
        7,
        "between 1 and 4",
        "bsr_priority_range",
    ),
    (
        "intervention tier",
        lambda w: Intervention.objects.filter(student=w.a1).get(),
        "tier",
        4,
        "is not a valid choice",
        "intervention_tier_range",
    ),
    (
        "fidelity range",
        lambda w: Intervention.objects.filter(student=w.a1).get(),
        "fidelity_pct",
        140,
        "0 to 100",
        "intervention_fidelity_range",
    ),
    (
        "planned end before start",
        lambda w: Intervention.objects.filter(student=w.a1).get(),
        "planned_end_date",
        date(2026, 9, 1),
        "before the start date",
        "intervention_planned_end_after_start",
    ),
    (
        "session end before start",
        lambda w: w.quarter,
        "end_date",
        date(2026, 8, 1),
        "cannot be before",
        "session_end_after_start",
    ),
    (
        "section enrollment end",
        lambda w: w.section_enrollment,
        "end_date",
        date(2026, 8, 1),
        "before the begin date",
        "section_enrollment_end_after_begin",
    ),
    (
        "attendance status",
        lambda w: DailyAttendance.objects.filter(student=w.a1).get(),
        "status",
        "asleep",
        "is not a valid choice",
        "daily_attendance_status_valid",
    ),
    (
        "arrest needs referral",
        lambda w: w.incidents[w.a1.pk],
        "school_related_arrest",
        True,
        "also a referral to law enforcement",
        "incident_arrest_implies_referral",
    ),
    (
        "district state code",
        lambda w: w.district,
        "state_code",
        "or",
        "two capital letters",
        "district_state_code_format",
    ),
    (
        "demographic range",
        lambda w: StudentDemographic.objects.filter(student=w.a1).get(),
        "valid_to",
        date(2026, 7, 1),
        "after valid from",
        "demographic_valid_to_after_from",
    ),
]


def _messages(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return " ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
    return " ".join(exc.messages)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_service_rejects_with_field_message(case, north, system):
    _, get, field, bad, fragment, _ = case
    obj = get(north)
    model = type(obj)
    before = model.objects.filter(pk=obj.pk).values(field).get()[field]
    with pytest.raises(ValidationError) as info:
        model_update(instance=obj, actor=system, data={field: bad})
    assert fragment in _messages(info.value), _messages(info.value)
    assert model.objects.filter(pk=obj.pk).values(field).get()[field] == before  # nothing written


@pytest.mark.parametrize("case", [c for c in CASES if c[5]], ids=[c[0] for c in CASES if c[5]])
def test_database_refuses_when_validation_is_bypassed(case, north):
    _, get, field, bad, _, constraint = case
    obj = get(north)
    with pytest.raises(IntegrityError) as info, transaction.atomic():
        type(obj).objects.filter(pk=obj.pk).update(**{field: bad})
    assert constraint in str(info.value)


def test_one_open_enrollment_per_student_per_school(north, system):
    existing = Enrollment.objects.get(student=north.a1)
    with pytest.raises(ValidationError, match="already has an open enrollment"):
        model_create(
            model=Enrollment,
            actor=system,
            data={
                "district": north.district,
                "student": north.a1,
                "school": north.school_a,
                "school_year": north.year,
                "grade_level": "10",
                "entry_date": date(2026, 9, 1),
            },
        )
    # Once the first is closed, a new one may open.
    model_update(
        instance=existing,
        actor=system,
        data={"exit_date": date(2026, 8, 31), "exit_reason": "transfer"},
    )
    model_create(
        model=Enrollment,
        actor=system,
        data={
            "district": north.district,
            "student": north.a1,
            "school": north.school_a,
            "school_year": north.year,
            "grade_level": "10",
            "entry_date": date(2026, 9, 1),
        },
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Enrollment.objects.filter(pk=existing.pk).update(exit_date=None)


def test_demographic_ranges_may_not_overlap(north, system):
    with pytest.raises(ValidationError, match="overlap"):
        model_create(
            model=StudentDemographic,
            actor=system,
            data={
                "district": north.district,
                "student": north.a1,
                "valid_from": date(2026, 10, 1),
                "race_ethnicity": "WH7",
                "sex": "F",
            },
        )
    # An effective-dated change: close the current range, open the next.
    current = StudentDemographic.objects.get(student=north.a1)
    model_update(instance=current, actor=system, data={"valid_to": date(2026, 10, 1)})
    model_create(
        model=StudentDemographic,
        actor=system,
        data={
            "district": north.district,
            "student": north.a1,
            "valid_from": date(2026, 10, 1),
            "race_ethnicity": "HI7",
            "sex": "F",
            "english_learner": True,
        },
    )
    assert StudentDemographic.objects.filter(student=north.a1).count() == 2


def test_problem_behavior_must_match_level(north, system):
    incident = north.incidents[north.a1.pk]
    minor = descriptor("behavior_minor", "defiance")
    with pytest.raises(ValidationError) as info:
        model_update(instance=incident, actor=system, data={"problem_behavior": minor})
    assert "not a major problem behavior" in info.value.message_dict["problem_behavior"][0]


def test_no_link_across_districts(north, south, system):
    with pytest.raises(ValidationError) as info:
        model_create(
            model=Incident,
            actor=system,
            data={
                "district": north.district,
                "student": south.a1,
                "school": north.school_a,
                "reported_by": north.teacher_staff,
                "occurred_on": date(2026, 9, 1),
                "occurred_at": "09:00",
                "level": "major",
                "problem_behavior": descriptor("behavior_major", "defiance"),
                "location": descriptor("location", "classroom"),
            },
        )
    assert "another district" in info.value.message_dict["student"][0]


def test_duplicate_student_number_names_the_rule(north, system):
    with pytest.raises(ValidationError, match="has this student number"):
        model_create(
            model=Student,
            actor=system,
            data={
                "district": north.district,
                "student_number": north.a1.student_number,
                "first_name": "X",
                "last_name": "Y",
                "birth_date": date(2012, 1, 1),
                "grade_level": "07",
            },
        )
    # The same number in another district is fine: numbers are per district.
    other = District.objects.create(name="Other", code="other", state_code="WA")
    model_create(
        model=Student,
        actor=system,
        data={
            "district": other,
            "student_number": north.a1.student_number,
            "first_name": "X",
            "last_name": "Y",
            "birth_date": date(2012, 1, 1),
            "grade_level": "07",
        },
    )


# --- the admin shows field errors and never a 500 ------------------------------------------


def _post_add(client, model, data):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")
    return client.post(url, data)


def test_admin_add_enrollment_with_bad_dates_shows_field_error(north, client):
    client.force_login(north.users["district_admin"])
    response = _post_add(
        client,
        Enrollment,
        {
            "student": north.b1.pk,
            "school": north.school_a.pk,
            "school_year": north.year.pk,
            "grade_level": "07",
            "entry_date": "2026-09-10",
            "exit_date": "2026-09-01",
            "exit_reason": "transfer",
            "is_primary": "on",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "Exit date cannot be before the entry date" in errors["exit_date"][0]
    assert Enrollment.objects.filter(student=north.b1).count() == 1


def test_admin_add_enrollment_duplicate_open_shows_error(north, client):
    client.force_login(north.users["district_admin"])
    response = _post_add(
        client,
        Enrollment,
        {
            "student": north.a1.pk,
            "school": north.school_a.pk,
            "school_year": north.year.pk,
            "grade_level": "10",
            "entry_date": "2026-09-10",
            "is_primary": "on",
        },
    )
    assert response.status_code == 200
    assert "already has an open enrollment" in str(response.context["adminform"].form.errors)


def test_admin_add_grade_out_of_range_and_unparseable(north, client):
    client.force_login(north.users["district_admin"])
    base = {
        "student": north.a2.pk,
        "section": north.section_a.pk,
        "grading_period": north.quarter.pk,
        "letter_grade": "A",
    }
    response = _post_add(client, Grade, {**base, "numeric_grade": "150"})
    assert response.status_code == 200
    assert "between 0 and 100" in str(response.context["adminform"].form.errors["numeric_grade"])
    response = _post_add(client, Grade, {**base, "numeric_grade": "ninety"})
    assert response.status_code == 200
    assert "numeric_grade" in response.context["adminform"].form.errors


def test_admin_cannot_link_another_districts_student(north, south, client):
    client.force_login(north.users["district_admin"])
    response = _post_add(
        client,
        BehaviorSupportRequest,
        {
            "student": south.a1.pk,
            "school": north.school_a.pk,
            "requested_by": north.teacher_staff.pk,
            "concern": "x",
        },
    )
    assert response.status_code == 200
    assert "student" in response.context["adminform"].form.errors
    assert not BehaviorSupportRequest.objects.filter(student=south.a1, school=north.school_a)


def test_admin_session_with_inverted_dates(north, client):
    client.force_login(north.users["district_admin"])
    response = _post_add(
        client,
        AcademicSession,
        {
            "name": "Spring",
            "session_type": "semester",
            "school_year": "2027",
            "start_date": "2027-06-01",
            "end_date": "2027-01-01",
        },
    )
    assert response.status_code == 200
    # On the field to fix, not only at the top of the form.
    assert "cannot be before" in response.context["adminform"].form.errors["end_date"][0]


def test_section_enrollment_constraint_in_admin_inline(north, client):
    client.force_login(north.users["district_admin"])
    response = _post_add(
        client,
        SectionEnrollment,
        {
            "student": north.a2.pk,
            "section": north.section_a.pk,
            "begin_date": "2026-09-10",
            "end_date": "2026-09-01",
        },
    )
    assert response.status_code == 200
    assert "before the begin date" in str(response.context["adminform"].form.errors["end_date"])
