"""Behavior support requests move through their workflow by the rules, with history."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from bxos.behavior import services
from bxos.behavior.models import BehaviorSupportRequest


def test_triage_sets_priority_due_time_and_assignee(north, system):
    bsr = north.bsrs[north.a1.pk]
    bsr = services.bsr_transition(
        actor=system,
        bsr=bsr,
        to_state="triaged",
        priority=1,
        assignee=north.counselor_staff,
        note="Urgent",
    )
    assert bsr.state == "triaged" and bsr.assignee == north.counselor_staff
    assert bsr.due_at == bsr.submitted_at + timedelta(hours=4)
    history = list(bsr.transitions.order_by("at").values_list("from_state", "to_state"))
    assert history == [("", "submitted"), ("submitted", "triaged")]


def test_triage_without_priority_is_refused(north, system):
    with pytest.raises(ValidationError, match="priority"):
        services.bsr_transition(actor=system, bsr=north.bsrs[north.a1.pk], to_state="triaged")
    assert BehaviorSupportRequest.objects.get(pk=north.bsrs[north.a1.pk].pk).state == "submitted"


@pytest.mark.parametrize(
    "path,bad",
    [
        (["triaged", "resolved"], "in_progress"),  # resolved is final
        ([], "in_progress"),  # must be triaged first
        (["closed_no_action"], "triaged"),  # closed is final
    ],
)
def test_illegal_moves_name_the_allowed_ones(north, system, path, bad):
    bsr = north.bsrs[north.a1.pk]
    for state in path:
        bsr = services.bsr_transition(actor=system, bsr=bsr, to_state=state, priority=2)
    with pytest.raises(ValidationError) as info:
        services.bsr_transition(actor=system, bsr=bsr, to_state=bad)
    assert "Allowed:" in str(info.value)


def test_any_open_state_can_escalate_and_come_back(north, system):
    bsr = north.bsrs[north.a1.pk]
    bsr = services.bsr_transition(actor=system, bsr=bsr, to_state="escalated", priority=1)
    bsr = services.bsr_transition(actor=system, bsr=bsr, to_state="in_progress")
    bsr = services.bsr_transition(
        actor=system, bsr=bsr, to_state="resolved", resolution="Plan in place"
    )
    assert bsr.closed_at is not None and bsr.resolution == "Plan in place"


def test_overdue_requests_escalate_once(north, system):
    a = services.bsr_transition(
        actor=system, bsr=north.bsrs[north.a1.pk], to_state="triaged", priority=4
    )
    b = services.bsr_transition(
        actor=system, bsr=north.bsrs[north.a2.pk], to_state="triaged", priority=4
    )
    BehaviorSupportRequest.objects.filter(pk=a.pk).update(
        due_at=timezone.now() - timedelta(minutes=1)
    )
    assert services.bsr_escalate_overdue(actor=system) == 1
    assert services.bsr_escalate_overdue(actor=system) == 0  # already escalated
    assert BehaviorSupportRequest.objects.get(pk=a.pk).state == "escalated"
    assert BehaviorSupportRequest.objects.get(pk=b.pk).state == "triaged"


def test_queue_orders_by_priority_then_age_and_hides_closed(north, system, client):
    a = services.bsr_transition(
        actor=system, bsr=north.bsrs[north.a1.pk], to_state="triaged", priority=3
    )
    b = services.bsr_transition(
        actor=system, bsr=north.bsrs[north.a2.pk], to_state="triaged", priority=1
    )
    services.bsr_transition(
        actor=system, bsr=north.bsrs[north.b1.pk], to_state="closed_no_action", note="Duplicate"
    )
    client.force_login(north.users["school_admin"])
    response = client.get(
        reverse("admin:behavior_behaviorsupportrequest_changelist"),
        {"school__id__exact": north.school_a.pk},
    )
    assert [r.pk for r in response.context["cl"].result_list] == [b.pk, a.pk]
    response = client.get(
        reverse("admin:behavior_behaviorsupportrequest_changelist"), {"queue": "closed"}
    )
    assert list(response.context["cl"].result_list) == []  # b1 is not in the school admin's school


def test_admin_moves_a_request_through_the_service(north, client):
    user = north.users["district_admin"]
    client.force_login(user)
    bsr = north.bsrs[north.a1.pk]
    url = reverse("admin:behavior_behaviorsupportrequest_change", args=[bsr.pk])
    data = {
        "student": north.a1.pk,
        "school": north.school_a.pk,
        "requested_by": north.teacher_staff.pk,
        "concern": bsr.concern,
        "priority": "2",
        "assignee": north.counselor_staff.pk,
        "move_to": "triaged",
        "move_note": "Seen at lunch",
        "transitions-TOTAL_FORMS": "1",
        "transitions-INITIAL_FORMS": "1",
        "transitions-0-id": bsr.transitions.get().pk,
        "transitions-0-request": bsr.pk,
    }
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    bsr.refresh_from_db()
    assert (bsr.state, bsr.priority, bsr.assignee_id) == ("triaged", 2, north.counselor_staff.pk)
    last = bsr.transitions.order_by("-at").first()
    assert (last.to_state, last.actor, last.note) == ("triaged", user, "Seen at lunch")
    # An illegal move is not offered, and a forged one is refused with a field error.
    data.update({"move_to": "submitted", "move_note": ""})
    response = client.post(url, data)
    assert response.status_code == 200
    assert "move_to" in response.context["adminform"].form.errors


def test_admin_add_submits_and_can_triage_at_once(north, client):
    user = north.users["counselor"]
    client.force_login(user)
    response = client.post(
        reverse("admin:behavior_behaviorsupportrequest_add"),
        {
            "student": north.b1.pk,
            "school": north.school_b.pk,
            "requested_by": north.counselor_staff.pk,
            "concern": "Withdrawn in class",
            "priority": "3",
            "move_to": "",
            "transitions-TOTAL_FORMS": "0",
            "transitions-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    bsr = BehaviorSupportRequest.objects.filter(student=north.b1).latest("id")
    assert bsr.state == "submitted"
    assert list(bsr.transitions.values_list("to_state", "actor")) == [("submitted", user.pk)]
