"""Writes of the behavior domain: referrals, the BSR workflow, interventions."""

from __future__ import annotations

from datetime import date, time

from django.core.exceptions import ValidationError
from django.db.models import Q
from django.utils import timezone

from bxos.behavior import choices
from bxos.behavior.models import BehaviorSupportRequest, BsrTransition, Descriptor, Incident
from bxos.common import events
from bxos.common.services import model_create, model_save, write_as
from bxos.schools.models import School, Staff, Student


def incident_create(
    *,
    actor,
    student: Student,
    school: School,
    reported_by: Staff,
    occurred_on: date,
    occurred_at: time,
    level: str,
    problem_behavior: Descriptor,
    location: Descriptor,
    **extra,
) -> Incident:
    """Record a referral. Actions and participants are added with their own services."""
    return model_create(
        model=Incident,
        actor=actor,
        data={
            "district_id": student.district_id,
            "student": student,
            "school": school,
            "reported_by": reported_by,
            "occurred_on": occurred_on,
            "occurred_at": occurred_at,
            "level": level,
            "problem_behavior": problem_behavior,
            "location": location,
            **extra,
        },
    )


def bsr_submit(
    *, actor, student: Student, school: School, requested_by: Staff, concern: str
) -> BehaviorSupportRequest:
    with write_as(actor):
        bsr = model_create(
            model=BehaviorSupportRequest,
            actor=actor,
            data={
                "district_id": student.district_id,
                "student": student,
                "school": school,
                "requested_by": requested_by,
                "concern": concern,
                "state": choices.BsrState.SUBMITTED,
                "submitted_at": timezone.now(),
            },
        )
        _record_transition(bsr=bsr, actor=actor, from_state="", note="Submitted")
    return bsr


def bsr_transition(
    *,
    actor,
    bsr: BehaviorSupportRequest,
    to_state: str,
    note: str = "",
    priority: int | None = None,
    assignee: Staff | None = None,
    resolution: str = "",
) -> BehaviorSupportRequest:
    """Move a BSR through its workflow (see choices.BSR_TRANSITIONS).

    Triage sets the priority (and so the due time) and usually an assignee; resolving or
    closing records when and why.
    """
    with write_as(actor):
        # Lock the row: two people triaging at once must not both succeed from the same state.
        bsr = BehaviorSupportRequest.objects.select_for_update().get(pk=bsr.pk)
        allowed = choices.BSR_TRANSITIONS.get(bsr.state, ())
        if to_state not in allowed:
            names = ", ".join(choices.BsrState(s).label for s in allowed) or "none (it is closed)"
            target = dict(choices.BsrState.choices).get(to_state, to_state)
            raise ValidationError(
                {
                    "state": f"A {bsr.get_state_display().lower()} request cannot move to "
                    f"“{target}”. Allowed: {names}."
                }
            )
        from_state = bsr.state
        fields = ["state"]
        bsr.state = to_state
        if priority is not None:
            bsr.priority = priority
            fields.append("priority")
        if to_state == choices.BsrState.TRIAGED and bsr.priority is None:
            raise ValidationError({"priority": "Triage needs a priority from 1 to 4."})
        if "priority" in fields or (to_state == choices.BsrState.TRIAGED and bsr.due_at is None):
            bsr.due_at = bsr.submitted_at + BehaviorSupportRequest.DUE_AFTER[bsr.priority]
            fields.append("due_at")
        if assignee is not None:
            bsr.assignee = assignee
            fields.append("assignee")
        if to_state in (choices.BsrState.RESOLVED, choices.BsrState.CLOSED_NO_ACTION):
            bsr.closed_at = timezone.now()
            bsr.resolution = resolution or note
            fields += ["closed_at", "resolution"]
        model_save(instance=bsr, actor=actor, fields=fields)
        _record_transition(bsr=bsr, actor=actor, from_state=from_state, note=note)
        events.emit("bsr.status_changed", bsr, data={"from": from_state, "to": to_state})
    return bsr


def bsr_escalate_overdue(*, actor, now=None) -> int:
    """Escalate every open, overdue request that is not escalated yet. Returns how many."""
    now = now or timezone.now()
    overdue = BehaviorSupportRequest.objects.filter(
        Q(state__in=[choices.BsrState.TRIAGED, choices.BsrState.IN_PROGRESS]),
        due_at__lt=now,
    ).values_list("pk", flat=True)
    count = 0
    for pk in overdue.iterator():
        bsr = BehaviorSupportRequest.objects.get(pk=pk)
        bsr_transition(
            actor=actor,
            bsr=bsr,
            to_state=choices.BsrState.ESCALATED,
            note=f"Overdue since {bsr.due_at:%Y-%m-%d %H:%M %Z}",
        )
        count += 1
    return count


def _record_transition(*, bsr: BehaviorSupportRequest, actor, from_state: str, note: str) -> None:
    model_create(
        model=BsrTransition,
        actor=actor,
        data={
            "district_id": bsr.district_id,
            "request": bsr,
            "from_state": from_state,
            "to_state": bsr.state,
            "actor": actor if getattr(actor, "pk", None) else None,
            "note": note,
            "at": timezone.now(),
        },
    )
