"""The audit log names the actor for admin edits, tasks and management commands."""

from datetime import timedelta

from auditlog.models import LogEntry
from django.core.management import call_command
from django.urls import reverse

from bxos.behavior.models import BehaviorSupportRequest
from bxos.behavior.services import bsr_transition
from bxos.behavior.tasks import escalate_overdue_bsrs
from bxos.schools.models import Student


def _entries(obj):
    return LogEntry.objects.get_for_object(obj).order_by("-timestamp")


def test_admin_edit_records_the_signed_in_user(north, client):
    user = north.users["district_admin"]
    client.force_login(user)
    student = north.a1
    url = reverse("admin:schools_student_change", args=[student.pk])
    page = client.get(url)
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k in form.fields}
    data.update({"first_name": "Avery", "birth_date": "2011-03-04"})
    for inline in page.context["inline_admin_formsets"]:
        mgmt = inline.formset.management_form
        prefix = inline.formset.prefix
        data[f"{prefix}-TOTAL_FORMS"] = mgmt.initial["TOTAL_FORMS"]
        data[f"{prefix}-INITIAL_FORMS"] = mgmt.initial["INITIAL_FORMS"]
        for i, f in enumerate(inline.formset.forms):
            data[f"{prefix}-{i}-id"] = f.instance.pk
            data[f"{prefix}-{i}-{inline.formset.fk.name}"] = student.pk
            for name, field in f.fields.items():
                value = f.initial.get(name)
                if value is not None:
                    data[f"{prefix}-{i}-{name}"] = getattr(value, "pk", value)
    response = client.post(url, data)
    if response.status_code != 302:
        errors = [fs.formset.errors for fs in response.context["inline_admin_formsets"]]
        raise AssertionError((response.context["adminform"].form.errors, errors))
    student.refresh_from_db()
    assert student.first_name == "Avery"
    entry = _entries(student).first()
    assert entry.actor == user
    assert entry.changes["first_name"] == ["Ava", "Avery"]


def test_task_records_the_system_actor(north, system):
    bsr = north.bsrs[north.a1.pk]
    bsr_transition(actor=system, bsr=bsr, to_state="triaged", priority=1)
    BehaviorSupportRequest.objects.filter(pk=bsr.pk).update(
        submitted_at=bsr.submitted_at - timedelta(days=2),
        due_at=bsr.submitted_at - timedelta(days=1),
    )
    assert escalate_overdue_bsrs.apply().get() == 1  # runs the task body, as a worker would
    bsr.refresh_from_db()
    assert bsr.state == "escalated"
    entry = _entries(bsr).first()
    assert entry.actor == system and system.is_system_actor
    assert bsr.transitions.order_by("-at").first().actor == system


def test_command_records_the_system_actor_or_the_named_user(north, system):
    bsr = north.bsrs[north.b1.pk]
    bsr_transition(actor=system, bsr=bsr, to_state="triaged", priority=2)
    BehaviorSupportRequest.objects.filter(pk=bsr.pk).update(
        submitted_at=bsr.submitted_at - timedelta(days=3),
        due_at=bsr.submitted_at - timedelta(days=2),
    )
    admin = north.users["district_admin"]
    call_command("escalate_overdue_bsrs", "--actor", admin.username)
    bsr.refresh_from_db()
    assert bsr.state == "escalated"
    assert _entries(bsr).first().actor == admin


def test_student_view_goes_to_the_access_log(north, client):
    from bxos.common.models import AccessLogEntry

    user = north.users["school_admin"]
    client.force_login(user)
    client.get(reverse("admin:schools_student_change", args=[north.a1.pk]))
    client.get(reverse("admin:behavior_incident_change", args=[north.incidents[north.a1.pk].pk]))
    rows = AccessLogEntry.objects.filter(actor=user).order_by("at")
    assert [(r.object_table, r.student_id) for r in rows] == [
        ("schools_student", north.a1.pk),
        ("behavior_incident", north.a1.pk),
    ]
    assert Student.objects.filter(pk=north.a1.pk).exists()


def test_nested_actors_restore_the_outer_one(north, system):
    """A block for another actor inside a block must not leave the outer entries actor-less."""
    from bxos.common.audit import acting_as
    from bxos.common.services import model_update

    admin = north.users["district_admin"]
    with acting_as(admin):
        model_update(instance=north.a1, actor=admin, data={"preferred_name": "A"})
        with acting_as(system):
            model_update(instance=north.a2, actor=system, data={"preferred_name": "B"})
        # A plain save in the outer block (bulk paths and commands do this) after the nested one.
        north.b1.preferred_name = "C"
        north.b1.save()
    assert _entries(north.a1).first().actor == admin
    assert _entries(north.a2).first().actor == system
    assert _entries(north.b1).first().actor == admin
