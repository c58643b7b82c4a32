"""A staff member's login follows the record: role from the position, access from schools."""

from bxos.common import roles
from bxos.common.permissions import restrict
from bxos.common.services import model_update
from bxos.schools import services
from bxos.schools.models import Student


def _visible_students(user):
    roles.forget(user)
    return set(restrict(Student.objects.all(), user, "view").values_list("pk", flat=True))


def test_position_change_moves_the_login_to_the_new_role(north, system):
    staff = north.school_admin_staff
    user = staff.user
    assert _visible_students(user) == {north.a1.pk, north.a2.pk}
    model_update(instance=staff, actor=system, data={"position": "teacher"})
    services.staff_sync_login(actor=system, staff=staff)
    user.refresh_from_db()
    assert set(user.groups.values_list("name", flat=True)) == {roles.TEACHER}
    assert _visible_students(user) == set()  # a teacher with no sections sees no students


def test_deactivated_staff_cannot_sign_in(north, system, client):
    staff = north.teacher_staff
    model_update(instance=staff, actor=system, data={"is_active": False})
    services.staff_sync_login(actor=system, staff=staff)
    staff.user.refresh_from_db()
    assert not staff.user.is_active
    assert not client.login(username=staff.user.username, password="test-pass-123")


def test_moving_a_counselor_to_another_school_moves_their_access(north, system):
    staff = north.counselor_staff
    assert _visible_students(staff.user) == {north.b1.pk, north.a2.pk}  # school B + caseload
    services.staff_set_schools(actor=system, staff=staff, schools=[north.school_a])
    assert _visible_students(staff.user) == {north.a1.pk, north.a2.pk}
