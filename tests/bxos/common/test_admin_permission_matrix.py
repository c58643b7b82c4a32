"""Every role x every admin model x list, detail, change, delete, across two districts.

The expected visibility is computed here from the product rules (who works where), not from the
gate's own declarations, so a wrong Gate on a model fails this test.
"""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils import timezone

from bxos.api.models import (
    ApiClient,
    DisclosureLogEntry,
    FieldProfile,
    ThrottleException,
    ThrottleRule,
)
from bxos.behavior import models as bm
from bxos.common.admin import GateMixin
from bxos.common.models import AccessLogEntry
from bxos.common.roles import ROLE_PERMISSIONS
from bxos.schools import models as sm
from integrations import models as im
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

ROLE_GROUP = {
    "district_admin": "District admin",
    "school_admin": "School admin",
    "counselor": "Counselor",
    "teacher": "Teacher",
}

DISTRICT_WIDE = "district-wide"


def facts(obj):
    """(schools, students, section) an object belongs to, or DISTRICT_WIDE."""
    m = type(obj)
    if m in (
        sm.District,
        sm.AcademicSession,
        bm.Descriptor,
        ApiClient,
        FieldProfile,
        ThrottleRule,
        ThrottleException,
        # Webhooks are the district's plumbing: district admins only (the role table).
        WebhookEndpoint,
        WebhookEvent,
        WebhookDelivery,
        WebhookAttempt,
        # The sync engine is district admins' too.
        im.Integration,
        im.Crosswalk,
        im.SyncDefinition,
        im.SyncRun,
        im.RecordError,
        im.IdentityReview,
        im.SyncConflict,
    ):
        return DISTRICT_WIDE
    if m is sm.School:
        return {obj.pk}, None, None
    if m is sm.Staff:
        return set(obj.schools.values_list("pk", flat=True)), None, None
    if m is sm.Student:
        return set(obj.enrollments.values_list("school_id", flat=True)), {obj.pk}, None
    if m is sm.Guardian:
        students = set(obj.students.values_list("pk", flat=True))
        schools = set(
            sm.Enrollment.objects.filter(student__in=students).values_list("school_id", flat=True)
        )
        return schools, students, None
    if m in (sm.StudentGuardian, sm.StudentDemographic):
        schools = set(obj.student.enrollments.values_list("school_id", flat=True))
        return schools, {obj.student_id}, None
    if m in (
        sm.Enrollment,
        sm.DailyAttendance,
        bm.Incident,
        bm.BehaviorSupportRequest,
        bm.Intervention,
    ):
        return {obj.school_id}, {obj.student_id}, None
    if m is sm.Section:
        return {obj.school_id}, None, obj.pk
    if m in (sm.SectionEnrollment, sm.PeriodAttendance, sm.Grade):
        return {obj.section.school_id}, {obj.student_id}, obj.section_id
    if m in (bm.IncidentAction, bm.IncidentParticipant):
        return {obj.incident.school_id}, {obj.incident.student_id}, None
    if m is bm.BsrTransition:
        return {obj.request.school_id}, {obj.request.student_id}, None
    if m is AccessLogEntry:
        return set(), {obj.student_id}, None
    if m is DisclosureLogEntry:
        return set(), set(obj.student_ids), None
    raise AssertionError(f"no facts for {m}")


def district_of(obj) -> int | None:
    if isinstance(obj, sm.District):
        return obj.pk
    if isinstance(obj, WebhookAttempt):
        return obj.delivery.district_id
    if isinstance(obj, im.SyncDefinition):
        return obj.integration.district_id
    return obj.district_id


def expected_visible(role: str, obj, world) -> bool:
    district_id = district_of(obj)
    if district_id != world.district.pk and not (
        isinstance(obj, bm.Descriptor) and obj.district_id is None
    ):
        return False
    if role == "district_admin":
        return True
    f = facts(obj)
    if f == DISTRICT_WIDE:
        return True
    schools, students, section = f
    if role == "school_admin":
        return bool(schools & {world.school_a.pk})
    if role == "counselor":
        return bool(schools & {world.school_b.pk}) or bool((students or set()) & {world.a2.pk})
    if role == "teacher":
        if section is not None or type(obj) in (sm.Section,):
            return section == world.section_a.pk
        if students is not None:
            return bool(students & {world.a1.pk})
        return bool(schools & {world.school_a.pk})
    raise AssertionError(role)


def shipped(obj) -> bool:
    """A shipped default code: readable by every district, writable by none."""
    return isinstance(obj, bm.Descriptor) and obj.district_id is None


def role_can(role: str, model, action: str) -> bool:
    letters = ROLE_PERMISSIONS[ROLE_GROUP[role]].get(model._meta.label, "")
    return action[0] in letters


def admin_models():
    """Every admin that passes the gate (TenantAdmin and the read-only logs and outboxes)."""
    return [
        model
        for model, model_admin in admin.site._registry.items()
        if isinstance(model_admin, GateMixin)
    ]


def objects_of(model, worlds):
    ids = [w.district.pk for w in worlds]
    if model is sm.District:
        return list(model.objects.filter(pk__in=ids))
    if model is DisclosureLogEntry:
        return list(model.objects.filter(district_id__in=ids))
    if model is WebhookAttempt:
        return list(model.objects.filter(delivery__district_id__in=ids))
    if model is im.SyncDefinition:
        return list(model.objects.filter(integration__district_id__in=ids))
    if model is bm.Descriptor:
        # District rows, plus a sample of the shipped defaults every district shares.
        return list(model.objects.filter(district_id__in=ids)) + list(
            model.objects.filter(district__isnull=True)[:2]
        )
    return list(model._base_manager.filter(district_id__in=ids))


def url(model, name, *args):
    return reverse(
        f"admin:{model._meta.app_label}_{model._meta.model_name}_{name}",
        args=[quote(a) for a in args],
    )


@pytest.fixture
def worlds(north, south, client, system):
    # A district-specific descriptor in each district, access-log rows to see, and a webhook
    # endpoint with an event, a delivery and an attempt.
    from bxos.behavior.choices import DescriptorCategory
    from webhooks import services as webhook_services

    for w in (north, south):
        bm.Descriptor.objects.create(
            district=w.district,
            category=DescriptorCategory.LOCATION,
            code=f"{w.code}-portable",
            label=f"{w.code} portable room",
        )
        AccessLogEntry.objects.create(
            actor=system,
            actor_label="system",
            district_id=w.district.pk,
            student_id=w.a1.pk,
            object_table="schools_student",
            object_id=w.a1.pk,
        )
        DisclosureLogEntry.objects.create(
            client=w.api_client,
            district_id=w.district.pk,
            purpose="Reading groups",
            endpoint="/api/v1/students",
            student_ids=[w.a1.pk],
            count=1,
            request_id="r1",
        )
        endpoint, _ = webhook_services.webhook_endpoint_create(
            actor=system,
            district=w.district,
            name=f"{w.code} data lake",
            url="https://93.184.215.14/hook",  # a public address: no DNS lookup in the test
            event_types=["student.updated"],
        )
        event = WebhookEvent.objects.create(
            id=f"evt_01JAB3C4D5E6F7G8H9J0K1M{w.code[:3].upper()}",
            district=w.district,
            type="student.updated",
            occurred_at=timezone.now(),
            model="schools.Student",
            object_id=w.a1.pk,
            student_id=w.a1.pk,
            payload=b'{"type": "student.updated"}',
        )
        delivery = WebhookDelivery.objects.create(
            district=w.district,
            event=event,
            endpoint=endpoint,
            endpoint_name=endpoint.name,
            status="failed",
            attempts=1,
        )
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=1,
            started_at=timezone.now(),
            duration_ms=120,
            status_code=500,
            response_body=b"boom",
        )
        _integration_rows(w, system)
    return north, south


def _integration_rows(w, system) -> None:
    """An integration with a crosswalk, a definition, a run, a record error, a review and a
    sync conflict."""
    from bxos.common.services import model_create
    from integrations import services as sync

    integration = sync.integration_create(
        district=w.district,
        name=f"{w.code} SIS",
        connector_type="oneroster_csv",
        source_system=f"{w.code}-sis",
        params={"source": "upload"},
        actor=system,
    )
    model_create(
        model=im.Crosswalk,
        actor=system,
        data={"district": w.district, "name": "race", "values": {"1": "HI7"}},
        emit=False,
    )
    definition = sync.definition_save(
        definition=im.SyncDefinition(integration=integration, name="Nightly", entities=["student"]),
        actor=system,
    )
    run = im.SyncRun.objects.create(
        definition=definition, district=w.district, mode="full", status="partial"
    )
    im.RecordError.objects.create(
        run=run,
        definition=definition,
        district=w.district,
        entity="student",
        file="users.csv",
        line=3,
        field="grade_level",
        reason="'13' is not a valid grade_level",
        source_id="s3",
    )
    im.IdentityReview.objects.create(
        district=w.district,
        integration=integration,
        run=run,
        entity="student",
        source_id="s9",
        incoming={"first_name": w.a1.first_name},
        candidate_id=w.a1.pk,
        reason="same name and birth date",
    )
    im.SyncConflict.objects.create(
        district=w.district,
        definition=definition,
        run=run,
        entity="incident",
        object_id=w.incidents[w.a1.pk].pk,
        source_id=f"{w.code}|INC-1",
        hub={"occurred_on": "2026-10-02", "occurred_at": "13:00:00", "behavior_code": "defiance"},
        source={"incidentDate": "2026-10-02", "incidentTime": "11:15:00"},
    )


@pytest.mark.parametrize("role", list(ROLE_GROUP))
def test_admin_matrix(role, worlds, client):
    north, south = worlds
    user = north.users[role]
    client.force_login(user)
    foreign_markers = [
        south.school_a.name,
        south.school_b.name,
        south.a1.last_name,
        south.b1.last_name,
        south.teacher_staff.staff_number,
    ]
    checked = 0
    for model in admin_models():
        objs = objects_of(model, [north, south])
        assert objs, f"the fixture has no {model._meta.label} rows"
        can_view = role_can(role, model, "view")
        # --- list -------------------------------------------------------------------------
        response = client.get(url(model, "changelist"), {"all": ""})
        if not can_view:
            assert response.status_code == 403, (model, response.status_code)
        else:
            assert response.status_code == 200, (model, response.status_code)
            listed = {o.pk for o in response.context["cl"].result_list}
            expected = {o.pk for o in objs if expected_visible(role, o, north)}
            if model is bm.Descriptor:
                shared = set(
                    model.objects.filter(district__isnull=True).values_list("pk", flat=True)
                )
                expected |= shared
            assert listed == expected, (role, model._meta.label, listed, expected)
            assert response.context["cl"].result_count == len(expected)
            html = response.content.decode()
            for marker in foreign_markers:
                assert marker not in html, (role, model._meta.label, marker)
        # --- detail, change and delete, object by object ----------------------------------
        for obj in objs:
            visible = can_view and expected_visible(role, obj, north)
            response = client.get(url(model, "change", obj.pk))
            if not can_view and not role_can(role, model, "change"):
                assert response.status_code == 403
            elif not visible:
                assert response.status_code == 404, (role, model._meta.label, obj.pk)
            else:
                assert response.status_code == 200, (role, model._meta.label, obj.pk)
                editable = response.context["has_change_permission"]
                # Runs, record errors, reviews and conflicts change only through their buttons
                # (approve, roll back, dismiss, merge, keep a side), which the change
                # permission guards; the pages themselves are read-only.
                page_editable = model not in (
                    im.SyncRun,
                    im.RecordError,
                    im.IdentityReview,
                    im.SyncConflict,
                )
                assert editable == (
                    role_can(role, model, "change") and not shipped(obj) and page_editable
                ), (
                    role,
                    model._meta.label,
                )
            response = client.get(url(model, "delete", obj.pk))
            if not role_can(role, model, "delete") or (visible and shipped(obj)):
                assert response.status_code == 403, (role, model._meta.label)
            elif not visible:
                assert response.status_code == 404
            else:
                assert response.status_code == 200
            checked += 1
    assert checked >= 80  # every model contributes rows; guards against an empty fixture


@pytest.mark.parametrize("role", list(ROLE_GROUP))
def test_autocomplete_and_filter_choices_stay_in_the_district(role, worlds, client):
    north, south = worlds
    client.force_login(north.users[role])
    response = client.get(
        reverse("admin:autocomplete"),
        {"app_label": "behavior", "model_name": "incident", "field_name": "student", "term": ""},
    )
    if not role_can(role, bm.Incident, "view"):
        assert response.status_code == 403
        return
    assert response.status_code == 200
    ids = {int(r["id"]) for r in response.json()["results"]}
    expected = {s.pk for s in north.students if expected_visible(role, s, north)}
    assert ids == expected
    # Searching for the other district's student by name finds nothing.
    response = client.get(
        reverse("admin:autocomplete"),
        {
            "app_label": "behavior",
            "model_name": "incident",
            "field_name": "student",
            "term": south.a1.last_name,
        },
    )
    assert response.json()["results"] == []
    # The school filter of the incident list offers only visible schools.
    response = client.get(url(bm.Incident, "changelist"))
    html = response.content.decode()
    offered = set(re.findall(r"school__id__exact=(\d+)", html))
    visible_schools = {
        str(s.pk) for s in (north.school_a, north.school_b) if expected_visible(role, s, north)
    }
    assert offered <= visible_schools
    assert str(south.school_a.pk) not in offered


def test_superuser_sees_both_districts(worlds, client, django_user_model):
    root = django_user_model.objects.create_superuser("root", "root@example.org", "x")
    client.force_login(root)
    response = client.get(url(sm.Student, "changelist"))
    assert response.context["cl"].result_count == 6


def test_user_without_staff_record_sees_nothing(worlds, client, django_user_model):
    from django.contrib.auth.models import Group

    stray = django_user_model.objects.create_user("stray", password="x", is_staff=True)
    stray.groups.add(Group.objects.get(name="District admin"))
    client.force_login(stray)
    response = client.get(url(sm.Student, "changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count == 0
