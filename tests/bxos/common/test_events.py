"""Domain events reach after-commit subscribers only when the write commits."""

from datetime import date

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from bxos.common import events
from bxos.schools import services
from bxos.schools.models import Student


@pytest.fixture
def received(north):
    seen, in_tx = [], []
    events.subscribe("student.created", seen.append)
    events.subscribe("student.created", in_tx.append, in_transaction=True)
    yield seen, in_tx
    events.unsubscribe("student.created", seen.append)
    events.unsubscribe("student.created", in_tx.append)


def _create(world, actor, number):
    return services.student_create(
        actor=actor,
        district=world.district,
        student_number=number,
        first_name="Eve",
        last_name="Ng",
        birth_date=date(2012, 5, 5),
        grade_level="07",
    )


@pytest.mark.django_db(transaction=True)
def test_delivered_after_commit_with_facts(received, north, system):
    seen, in_tx = received
    with transaction.atomic():
        student = _create(north, system, "E1")
        assert in_tx and in_tx[-1].object_id == student.pk  # in-transaction handler: at once
        assert not seen  # after-commit handler: not yet
    assert len(seen) == 1
    event = seen[0]
    assert event.type == "student.created"
    assert event.model == "schools.Student"
    assert event.district_id == north.district.pk
    assert event.change_version == Student.objects.get(pk=student.pk).change_version
    assert event.actor_id == system.pk


@pytest.mark.django_db(transaction=True)
def test_rolled_back_write_emits_nothing(received, north, system):
    seen, _ = received
    with pytest.raises(RuntimeError), transaction.atomic():
        _create(north, system, "E2")
        raise RuntimeError("boom")
    assert seen == []
    assert not Student.objects.filter(student_number="E2").exists()


@pytest.mark.django_db(transaction=True)
def test_failed_validation_emits_nothing(received, north, system):
    seen, in_tx = received
    with pytest.raises(ValidationError):
        _create(north, system, north.a1.student_number)  # duplicate number
    assert seen == [] and in_tx == []


def test_unknown_event_type_is_refused(north):
    with pytest.raises(ValueError, match="Unknown event type"):
        events.emit("student.teleported", north.a1)


def test_catalogue_lists_domain_events():
    names = {e.name for e in events.catalogue()}
    for required in (
        "student.created",
        "enrollment.deleted",
        "incident.updated",
        "bsr.status_changed",
        "intervention.created",
        "grade.created",
        "attendance.created",
        "section_enrollment.created",
        "guardian.updated",
    ):
        assert required in names
