"""change_version rises on every insert and update, bulk paths included; deletes leave
tombstones."""

from datetime import date

from bxos.common.db import current_change_version, keeping_change_versions
from bxos.common.models import Tombstone
from bxos.schools.models import Student


def _student(world, number):
    return Student(
        district=world.district,
        student_number=number,
        first_name="Ann",
        last_name="Lee",
        birth_date=date(2012, 1, 1),
        grade_level="08",
    )


def test_insert_stamps_and_returns_version(north):
    before = current_change_version()
    s = _student(north, "X1")
    s.save()
    assert s.change_version > before  # returned by INSERT ... RETURNING
    s.refresh_from_db()
    assert s.change_version == current_change_version()


def test_update_raises_version(north):
    s = north.a1
    s.refresh_from_db()
    old = s.change_version
    s.first_name = "Avery"
    s.save(update_fields=["first_name"])
    s.refresh_from_db()
    assert s.change_version > old


def test_queryset_update_stamps_each_row(north):
    ids = [s.pk for s in north.students]
    old = dict(Student.objects.filter(pk__in=ids).values_list("pk", "change_version"))
    Student.objects.filter(pk__in=ids).update(is_active=False)
    new = dict(Student.objects.filter(pk__in=ids).values_list("pk", "change_version"))
    assert all(new[pk] > old[pk] for pk in ids)
    assert len(set(new.values())) == len(ids)  # distinct versions: a feed can page through them


def test_bulk_create_and_bulk_update_stamp(north):
    before = current_change_version()
    rows = Student.objects.bulk_create([_student(north, f"B{i}") for i in range(50)])
    versions = [r.change_version for r in Student.objects.filter(student_number__startswith="B")]
    assert len(versions) == 50 and min(versions) > before
    for r in rows:
        r.grade_level = "09"
    mid = current_change_version()
    Student.objects.bulk_update(rows, ["grade_level"])
    assert (
        Student.objects.filter(student_number__startswith="B", change_version__lte=mid).count() == 0
    )


def test_delete_leaves_tombstone_set_wise(north):
    s1, s2 = _student(north, "D1"), _student(north, "D2")
    s1.source_system, s1.source_id = "sis", "sis-D1"
    s1.save()
    s2.save()
    before = current_change_version()
    Student.objects.filter(pk__in=[s1.pk, s2.pk]).delete()
    stones = Tombstone.objects.filter(table_name="schools_student", object_id__in=[s1.pk, s2.pk])
    assert stones.count() == 2
    stone = stones.get(object_id=s1.pk)
    assert stone.district_id == north.district.pk
    assert stone.source_id == "sis-D1"
    assert stone.change_version > before


def test_maintenance_updates_can_keep_versions(north):
    from django.db import transaction

    s = Student.objects.get(pk=north.a1.pk)
    with transaction.atomic(), keeping_change_versions():
        Student.objects.filter(pk=s.pk).update(preferred_name="A")
    assert Student.objects.get(pk=s.pk).change_version == s.change_version
    Student.objects.filter(pk=s.pk).update(preferred_name="B")  # outside: stamped again
    assert Student.objects.get(pk=s.pk).change_version > s.change_version
