from bxos.schools.models import Student


def test_two_worlds_build(north, south):
    assert Student.objects.filter(district=north.district).count() == 3
    assert Student.objects.filter(district=south.district).count() == 3
    assert north.users["teacher"].groups.filter(name="Teacher").exists()
