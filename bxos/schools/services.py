"""Writes of the school-data core. Every face (admin, API, tasks, commands) calls these.

Plain create/update/delete of a record goes through ``bxos.common.services`` (validated,
audited, evented); this module adds the writes with rules of their own: enrollment exits,
staff logins and roles, and the object permissions behind the gate (schools, sections,
caseloads).
"""

from __future__ import annotations

from datetime import date

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from guardian.shortcuts import assign_perm, remove_perm

from bxos.common import events, roles
from bxos.common.models import User
from bxos.common.services import model_create, model_save, write_as
from bxos.schools.choices import StaffPosition
from bxos.schools.models import Enrollment, School, Section, SectionEnrollment, Staff, Student

# Which role group a staff position signs in with.
POSITION_ROLE = {
    StaffPosition.DISTRICT_ADMIN: roles.DISTRICT_ADMIN,
    StaffPosition.PRINCIPAL: roles.SCHOOL_ADMIN,
    StaffPosition.ASSISTANT_PRINCIPAL: roles.SCHOOL_ADMIN,
    StaffPosition.COUNSELOR: roles.COUNSELOR,
    StaffPosition.TEACHER: roles.TEACHER,
}


def student_create(
    *,
    actor,
    district,
    student_number: str,
    first_name: str,
    last_name: str,
    birth_date: date,
    grade_level: str,
    **extra,
) -> Student:
    return model_create(
        model=Student,
        actor=actor,
        data={
            "district": district,
            "student_number": student_number,
            "first_name": first_name,
            "last_name": last_name,
            "birth_date": birth_date,
            "grade_level": grade_level,
            **extra,
        },
    )


def enrollment_create(
    *,
    actor,
    student: Student,
    school: School,
    school_year,
    grade_level: str,
    entry_date: date,
    is_primary: bool = True,
) -> Enrollment:
    return model_create(
        model=Enrollment,
        actor=actor,
        data={
            "district_id": student.district_id,
            "student": student,
            "school": school,
            "school_year": school_year,
            "grade_level": grade_level,
            "entry_date": entry_date,
            "is_primary": is_primary,
        },
    )


def enrollment_exit(
    *, actor, enrollment: Enrollment, exit_date: date, exit_reason: str
) -> Enrollment:
    """Close an open enrollment (transfer, graduation...)."""
    if enrollment.exit_date is not None:
        raise ValidationError(
            {"exit_date": f"This enrollment already ended on {enrollment.exit_date}."}
        )
    enrollment.exit_date = exit_date
    enrollment.exit_reason = exit_reason
    return model_save(instance=enrollment, actor=actor, fields=["exit_date", "exit_reason"])


def section_enroll(
    *, actor, section: Section, student: Student, begin_date: date
) -> SectionEnrollment:
    return model_create(
        model=SectionEnrollment,
        actor=actor,
        data={
            "district_id": section.district_id,
            "section": section,
            "student": student,
            "begin_date": begin_date,
        },
    )


# --- people, logins, roles and the object permissions behind the gate ------------------------


def staff_login_create(
    *, actor, staff: Staff, username: str, password: str | None, is_staff: bool = True
) -> User:
    """Give a staff member a login with the role group of their position.

    With ``password=None`` the login has no usable password (single sign-on, or set later).
    """
    with write_as(actor):
        if staff.user_id:
            raise ValidationError({"user": f"{staff} already has the login {staff.user}."})
        if User.objects.filter(username=username).exists():
            raise ValidationError({"username": f"The username {username!r} is taken."})
        user = User(
            username=username,
            first_name=staff.first_name,
            last_name=staff.last_name,
            email=staff.email,
            is_staff=is_staff,
        )
        if password is None:
            user.set_unusable_password()
        else:
            user.set_password(password)
        user.full_clean(exclude=["password"])
        user.save()
        role = POSITION_ROLE.get(staff.position)
        if role:
            user.groups.add(Group.objects.get(name=role))
        staff.user = user
        model_save(instance=staff, actor=actor, fields=["user"])
    return user


def staff_sync_login(*, actor, staff: Staff) -> None:
    """Keep a staff member's login in step with the record: role group from the position,
    active only while the staff member is; a changed position loses the old school access."""
    if not staff.user_id:
        return
    with write_as(actor):
        user = staff.user
        wanted = POSITION_ROLE.get(staff.position)
        role_groups = Group.objects.filter(name__in=roles.ALL_ROLES)
        user.groups.remove(*role_groups.exclude(name=wanted))
        if wanted:
            user.groups.add(Group.objects.get(name=wanted))
        if user.is_active != staff.is_active:
            user.is_active = staff.is_active
            user.save(update_fields=["is_active"])
        if wanted in (roles.SCHOOL_ADMIN, roles.COUNSELOR):
            access_set_schools(actor=actor, user=user, schools=list(staff.schools.all()))
        else:
            access_set_schools(actor=actor, user=user, schools=[])
    roles.forget(user)


def staff_set_schools(*, actor, staff: Staff, schools: list[School]) -> None:
    """Set where a staff member works; school admins and counselors get access to those schools."""
    with write_as(actor):
        for school in schools:
            if school.district_id != staff.district_id:
                raise ValidationError({"schools": f"{school} belongs to another district."})
        staff.schools.set(schools)
        staff_sync_login(actor=actor, staff=staff)
        events.emit("staff.updated", staff)


def access_set_schools(*, actor, user: User, schools: list[School]) -> None:
    perm = f"schools.{roles.ACCESS_SCHOOL}"
    with write_as(actor):
        current = set(roles.school_ids_of(user).values_list("content_object_id", flat=True))
        wanted = {s.pk for s in schools}
        for school in School.objects.filter(pk__in=current - wanted):
            remove_perm(perm, user, school)
        for school in schools:
            if school.pk not in current:
                assign_perm(perm, user, school)
    roles.forget(user)


def access_grant_section(*, actor, user: User, section: Section) -> None:
    """Let a teacher (or co-teacher) see a section and its students."""
    with write_as(actor):
        assign_perm(f"schools.{roles.ACCESS_SECTION}", user, section)
    roles.forget(user)


def access_revoke_section(*, actor, user: User, section: Section) -> None:
    with write_as(actor):
        remove_perm(f"schools.{roles.ACCESS_SECTION}", user, section)
    roles.forget(user)


def section_set_teacher(*, actor, section: Section, teacher: Staff | None) -> Section:
    """Assign the section's teacher; their login gets access to the section."""
    with write_as(actor):
        previous = section.teacher
        section.teacher = teacher
        model_save(instance=section, actor=actor, fields=["teacher"])
        if previous and previous.user_id and previous != teacher:
            access_revoke_section(actor=actor, user=previous.user, section=section)
        if teacher and teacher.user_id:
            access_grant_section(actor=actor, user=teacher.user, section=section)
    return section


def caseload_add(*, actor, counselor: User, students: list[Student]) -> None:
    """Put students on a counselor's caseload (django-guardian object permission)."""
    perm = f"schools.{roles.ACCESS_STUDENT}"
    with write_as(actor):
        for student in students:
            assign_perm(perm, counselor, student)
    roles.forget(counselor)


def caseload_remove(*, actor, counselor: User, students: list[Student]) -> None:
    perm = f"schools.{roles.ACCESS_STUDENT}"
    with write_as(actor):
        for student in students:
            remove_perm(perm, counselor, student)
    roles.forget(counselor)
