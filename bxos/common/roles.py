"""Roles (Django groups), what each may do per model, and the actor facts the gate needs.

The groups and their model permissions are synchronised after every `migrate`
(:func:`sync_role_groups`), so the table below is the single source of truth. Which schools,
sections and caseload students a person holds are django-guardian object permissions, stored in
the direct foreign-key tables declared in ``bxos.schools.models``.
"""

from __future__ import annotations

from django.apps import apps
from django.db.models import QuerySet

DISTRICT_ADMIN = "District admin"
SCHOOL_ADMIN = "School admin"
COUNSELOR = "Counselor"
TEACHER = "Teacher"
ALL_ROLES = (DISTRICT_ADMIN, SCHOOL_ADMIN, COUNSELOR, TEACHER)

ACCESS_SCHOOL = "access_school"
ACCESS_SECTION = "access_section"
ACCESS_STUDENT = "access_student"

# role -> {model label: actions}, v=view a=add c=change d=delete.
_ALL = "vacd"
ROLE_PERMISSIONS: dict[str, dict[str, str]] = {
    DISTRICT_ADMIN: {
        "common.AccessLogEntry": "v",
        "api.ApiClient": "vacd",
        "api.FieldProfile": "vacd",
        "api.DisclosureLogEntry": "v",
        "api.ThrottleRule": "vacd",
        "api.ThrottleException": "vacd",
        "webhooks.WebhookEndpoint": "vacd",
        "webhooks.WebhookEvent": "v",
        "webhooks.WebhookDelivery": "vc",
        "webhooks.WebhookAttempt": "v",
        "integrations.Integration": "vacd",
        "integrations.Crosswalk": "vacd",
        "integrations.Mapping": "vac",
        "integrations.MappingVersion": "v",
        "integrations.SyncDefinition": "vacd",
        "integrations.SyncRun": "vac",
        "integrations.RecordError": "vc",
        "integrations.IdentityReview": "vc",
        "integrations.SyncConflict": "vc",
        "schools.District": "vc",
        "schools.School": _ALL,
        "schools.AcademicSession": _ALL,
        "schools.Student": _ALL,
        "schools.Guardian": _ALL,
        "schools.StudentGuardian": _ALL,
        "schools.StudentDemographic": _ALL,
        "schools.Staff": _ALL,
        "schools.Enrollment": _ALL,
        "schools.Section": _ALL,
        "schools.SectionEnrollment": _ALL,
        "schools.DailyAttendance": _ALL,
        "schools.PeriodAttendance": _ALL,
        "schools.Grade": _ALL,
        "behavior.Descriptor": _ALL,
        "behavior.Incident": _ALL,
        "behavior.IncidentAction": _ALL,
        "behavior.IncidentParticipant": _ALL,
        "behavior.BehaviorSupportRequest": _ALL,
        "behavior.BsrTransition": "v",
        "behavior.Intervention": _ALL,
    },
    SCHOOL_ADMIN: {
        "schools.District": "v",
        "schools.School": "vc",
        "schools.AcademicSession": "v",
        "schools.Student": _ALL,
        "schools.Guardian": _ALL,
        "schools.StudentGuardian": _ALL,
        "schools.StudentDemographic": _ALL,
        "schools.Staff": "vac",
        "schools.Enrollment": _ALL,
        "schools.Section": _ALL,
        "schools.SectionEnrollment": _ALL,
        "schools.DailyAttendance": _ALL,
        "schools.PeriodAttendance": _ALL,
        "schools.Grade": _ALL,
        "behavior.Descriptor": "v",
        "behavior.Incident": _ALL,
        "behavior.IncidentAction": _ALL,
        "behavior.IncidentParticipant": _ALL,
        "behavior.BehaviorSupportRequest": _ALL,
        "behavior.BsrTransition": "v",
        "behavior.Intervention": _ALL,
    },
    COUNSELOR: {
        "schools.District": "v",
        "schools.School": "v",
        "schools.AcademicSession": "v",
        "schools.Student": "v",
        "schools.Guardian": "v",
        "schools.StudentGuardian": "v",
        "schools.StudentDemographic": "v",
        "schools.Staff": "v",
        "schools.Enrollment": "v",
        "schools.Section": "v",
        "schools.SectionEnrollment": "v",
        "schools.DailyAttendance": "v",
        "schools.PeriodAttendance": "v",
        "schools.Grade": "v",
        "behavior.Descriptor": "v",
        "behavior.Incident": "vac",
        "behavior.IncidentAction": "vac",
        "behavior.IncidentParticipant": "vac",
        "behavior.BehaviorSupportRequest": "vac",
        "behavior.BsrTransition": "v",
        "behavior.Intervention": "vac",
    },
    TEACHER: {
        "schools.District": "v",
        "schools.School": "v",
        "schools.AcademicSession": "v",
        "schools.Student": "v",
        "schools.Guardian": "v",
        "schools.StudentGuardian": "v",
        "schools.Section": "v",
        "schools.SectionEnrollment": "v",
        "schools.DailyAttendance": "v",
        "schools.PeriodAttendance": "vac",
        "schools.Grade": "vac",
        "behavior.Descriptor": "v",
        "behavior.Incident": "va",
        "behavior.IncidentAction": "v",
        "behavior.IncidentParticipant": "va",
        "behavior.BehaviorSupportRequest": "va",
        "behavior.BsrTransition": "v",
        "behavior.Intervention": "v",
    },
}
_VERB = {"v": "view", "a": "add", "c": "change", "d": "delete"}


def sync_role_groups() -> None:
    """Create the role groups and set exactly the model permissions in ROLE_PERMISSIONS."""
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    for role, table in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        wanted = []
        for label, letters in table.items():
            model = apps.get_model(label)
            ct = ContentType.objects.get_for_model(model)
            codenames = [f"{_VERB[ch]}_{model._meta.model_name}" for ch in letters]
            wanted.extend(Permission.objects.filter(content_type=ct, codename__in=codenames))
        group.permissions.set(wanted)


# --- facts about a user, for the gate ----------------------------------------------------------


def roles_of(user) -> set[str]:
    # Cached on the user object for the life of the request, as Django caches permissions.
    if not hasattr(user, "_bxos_roles"):
        user._bxos_roles = set(
            user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True)
        )
    return user._bxos_roles


def district_id_of(user) -> int | None:
    if not hasattr(user, "_bxos_district_id"):
        Staff = apps.get_model("schools", "Staff")
        user._bxos_district_id = (
            Staff.objects.filter(user_id=user.pk).values_list("district_id", flat=True).first()
        )
    return user._bxos_district_id


def forget(user) -> None:
    """Drop the cached roles and district (after changing them on the same user object)."""
    for attr in (
        "_bxos_roles",
        "_bxos_district_id",
        "_perm_cache",
        "_user_perm_cache",
        "_group_perm_cache",
    ):
        if hasattr(user, attr):
            delattr(user, attr)


def _object_ids(model_name: str, user, codename: str) -> QuerySet:
    model = apps.get_model("schools", model_name)
    return model.objects.filter(user_id=user.pk, permission__codename=codename).values(
        "content_object_id"
    )


def school_ids_of(user) -> QuerySet:
    return _object_ids("SchoolUserObjectPermission", user, ACCESS_SCHOOL)


def section_ids_of(user) -> QuerySet:
    return _object_ids("SectionUserObjectPermission", user, ACCESS_SECTION)


def caseload_student_ids_of(user) -> QuerySet:
    return _object_ids("StudentUserObjectPermission", user, ACCESS_STUDENT)


def section_student_ids_of(user) -> QuerySet:
    SectionEnrollment = apps.get_model("schools", "SectionEnrollment")
    return SectionEnrollment.objects.filter(section_id__in=section_ids_of(user)).values(
        "student_id"
    )


def section_school_ids_of(user) -> QuerySet:
    Section = apps.get_model("schools", "Section")
    return Section.objects.filter(pk__in=section_ids_of(user)).values("school_id")
