"""Behavior domain: referrals (incidents) with the SWIS dictionary, BSRs and interventions."""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from bxos.behavior import choices
from bxos.common.constraints import (
    FieldConstraintErrors,
    in_range,
    not_before,
    on_field,
    valid_code,
)
from bxos.common.fields import EncryptedTextField
from bxos.common.models import TenantModel, User
from bxos.common.permissions import Gate
from bxos.schools.models import School, Staff, Student

Cat = choices.DescriptorCategory


class Descriptor(FieldConstraintErrors, models.Model):
    """An entry of a code list districts extend: behaviors, locations, actions, ...

    Rows with no district are the shipped defaults (DOMAIN.md) shared by every district; a
    district adds its own. Codes are stored on incidents through these rows.
    """

    district = models.ForeignKey(
        "schools.District",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Empty: a shipped default shared by every district.",
    )
    category = models.CharField(max_length=24, choices=Cat.choices)
    code = models.SlugField(max_length=64)
    label = models.CharField(max_length=120)
    sort_order = models.PositiveSmallIntegerField(default=100)
    is_active = models.BooleanField(default=True)

    gate = Gate(shared_when_district_null=True)

    class Meta:
        ordering = ["category", "sort_order", "label"]
        constraints = [
            models.UniqueConstraint(
                fields=["district", "category", "code"],
                nulls_distinct=False,
                name="descriptor_code_unique",
                violation_error_message="This code already exists in this list.",
            ),
            valid_code("category", Cat, name="descriptor_category_valid"),
        ]

    def __str__(self) -> str:
        return self.label


def _descriptor(category: str, **kwargs) -> models.ForeignKey:
    return models.ForeignKey(
        Descriptor,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={"category": category, "is_active": True},
        **kwargs,
    )


class Incident(TenantModel):
    """An office discipline referral (PBIS SWIS form plus federal reporting fields).

    One event is one incident however many students: others are IncidentParticipant rows.
    """

    student = models.ForeignKey(Student, on_delete=models.PROTECT, related_name="incidents")
    school = models.ForeignKey(School, on_delete=models.PROTECT, related_name="incidents")
    reported_by = models.ForeignKey(Staff, on_delete=models.PROTECT, related_name="referrals")
    occurred_on = models.DateField("date")
    occurred_at = models.TimeField("time of day")
    level = models.CharField(max_length=8, choices=choices.IncidentLevel.choices)
    problem_behavior = models.ForeignKey(
        Descriptor,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={"category__in": [Cat.PROBLEM_BEHAVIOR_MINOR, Cat.PROBLEM_BEHAVIOR_MAJOR]},
    )
    subtype = models.ForeignKey(
        Descriptor,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={"category__in": [Cat.HARASSMENT_TYPE, Cat.WEAPON_TYPE, Cat.FIREARM_TYPE]},
        help_text="Harassment type, weapon type (for Weapons) or firearm type.",
    )
    location = _descriptor(Cat.LOCATION)
    motivation = _descriptor(
        Cat.MOTIVATION, null=True, blank=True, verbose_name="perceived motivation"
    )
    others_involved = _descriptor(Cat.OTHERS_INVOLVED, null=True, blank=True)
    restraint_seclusion = models.CharField(
        "restraint / seclusion",
        max_length=12,
        choices=choices.RestraintSeclusion.choices,
        default=choices.RestraintSeclusion.NONE,
    )
    law_enforcement_referral = models.BooleanField("referral to law enforcement", default=False)
    school_related_arrest = models.BooleanField(default=False)
    zero_tolerance_expulsion = models.BooleanField(default=False)
    idea_removal = models.CharField(
        "IDEA removal",
        max_length=16,
        choices=choices.IdeaRemoval.choices,
        default=choices.IdeaRemoval.NONE,
    )
    services_after_removal = models.BooleanField(default=False)
    narrative = models.TextField(
        blank=True,
        help_text="What happened. Do not name other students. Never sent in notifications.",
    )

    gate = Gate(school="school", student="student")
    event_prefix = "incident"

    class Meta:
        ordering = ["-occurred_on", "-occurred_at", "-id"]
        indexes = [
            models.Index(fields=["school", "occurred_on"], name="incident_school_date"),
            models.Index(fields=["student", "occurred_on"], name="incident_student_date"),
        ]
        constraints = [
            valid_code("level", choices.IncidentLevel, name="incident_level_valid"),
            valid_code(
                "restraint_seclusion", choices.RestraintSeclusion, name="incident_restraint_valid"
            ),
            valid_code("idea_removal", choices.IdeaRemoval, name="incident_idea_removal_valid"),
            on_field(
                "law_enforcement_referral",
                models.CheckConstraint(
                    condition=Q(school_related_arrest=False) | Q(law_enforcement_referral=True),
                    name="incident_arrest_implies_referral",
                    violation_error_message="A school-related arrest is also a referral to law "
                    "enforcement.",
                ),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.occurred_on} {self.student}: {self.problem_behavior}"

    def clean(self) -> None:
        super().clean()
        errors = {}
        expected = {
            choices.IncidentLevel.MINOR: Cat.PROBLEM_BEHAVIOR_MINOR,
            choices.IncidentLevel.MAJOR: Cat.PROBLEM_BEHAVIOR_MAJOR,
        }.get(self.level)
        if self.problem_behavior_id and expected and self.problem_behavior.category != expected:
            errors["problem_behavior"] = (
                f"“{self.problem_behavior}” is not a {self.level} problem behavior; choose one "
                f"from the {self.level} list or change the level."
            )
        for name, category in (
            ("location", [Cat.LOCATION]),
            ("motivation", [Cat.MOTIVATION]),
            ("others_involved", [Cat.OTHERS_INVOLVED]),
            ("subtype", [Cat.HARASSMENT_TYPE, Cat.WEAPON_TYPE, Cat.FIREARM_TYPE]),
        ):
            value = getattr(self, name)
            if value is not None and value.category not in category:
                errors[name] = (
                    f"“{value}” is not a valid {self._meta.get_field(name).verbose_name}."
                )
        for name in ("problem_behavior", "location", "motivation", "others_involved", "subtype"):
            value = getattr(self, f"{name}_id") and getattr(self, name)
            if value and value.district_id not in (None, self.district_id):
                errors[name] = "This code belongs to another district."
        if self.school_related_arrest and not self.law_enforcement_referral:
            errors["law_enforcement_referral"] = (
                "A school-related arrest is also a referral to law enforcement."
            )
        if errors:
            raise ValidationError(errors)


class IncidentAction(TenantModel):
    """An action taken for an incident, with its duration in days (0.5 allowed)."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="actions")
    action = _descriptor(Cat.ACTION)
    duration_days = models.DecimalField(max_digits=5, decimal_places=1, default=0)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)

    gate = Gate(school="incident__school", student="incident__student")
    event_prefix = "incident_action"

    class Meta:
        ordering = ["incident", "start_date", "id"]
        constraints = [
            on_field(
                "duration_days",
                models.CheckConstraint(
                    condition=Q(duration_days__gte=0),
                    name="incident_action_duration_not_negative",
                    violation_error_message="Duration cannot be negative.",
                ),
            ),
            not_before("end_date", "start_date", name="incident_action_end_after_start"),
        ]

    def __str__(self) -> str:
        return f"{self.action} ({self.duration_days} days)"

    def clean(self) -> None:
        super().clean()
        if self.duration_days is not None and self.duration_days < 0:
            raise ValidationError({"duration_days": "Duration cannot be negative."})
        if self.duration_days is not None and (self.duration_days * 2) % 1:
            raise ValidationError({"duration_days": "Duration is counted in half days (0.5)."})
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValidationError({"end_date": "End date cannot be before the start date."})
        if self.action_id and self.action.category != Cat.ACTION:
            raise ValidationError({"action": f"“{self.action}” is not an action."})


class IncidentParticipant(TenantModel):
    """Another student involved in an incident, as victim, perpetrator or witness."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="participants")
    student = models.ForeignKey(Student, on_delete=models.PROTECT, related_name="+")
    role = models.CharField(max_length=12, choices=choices.ParticipantRole.choices)

    gate = Gate(school="incident__school", student="incident__student")
    event_prefix = "incident_participant"

    class Meta:
        ordering = ["incident", "role"]
        constraints = [
            models.UniqueConstraint(
                fields=["incident", "student"],
                name="incident_participant_unique",
                violation_error_message="This student is already a participant.",
            ),
            valid_code("role", choices.ParticipantRole, name="incident_participant_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.student} ({self.get_role_display()})"

    def clean(self) -> None:
        super().clean()
        if self.incident_id and self.student_id and self.incident.student_id == self.student_id:
            raise ValidationError(
                {"student": "The referred student is already on the incident; add others here."}
            )


class BehaviorSupportRequest(TenantModel):
    """A staff member's request for help with a student, worked from the school's queue."""

    student = models.ForeignKey(Student, on_delete=models.PROTECT, related_name="support_requests")
    school = models.ForeignKey(School, on_delete=models.PROTECT, related_name="support_requests")
    requested_by = models.ForeignKey(Staff, on_delete=models.PROTECT, related_name="+")
    concern = models.TextField(help_text="What the staff member sees and needs help with.")
    state = models.CharField(
        max_length=16, choices=choices.BsrState.choices, default=choices.BsrState.SUBMITTED
    )
    priority = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="1 (urgent) to 4 (routine); set at triage."
    )
    assignee = models.ForeignKey(
        Staff, null=True, blank=True, on_delete=models.SET_NULL, related_name="assigned_requests"
    )
    submitted_at = models.DateTimeField()
    due_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    resolution = models.TextField(blank=True)

    gate = Gate(school="school", student="student")
    event_prefix = "bsr"

    # Time to resolution by priority; overdue open requests escalate.
    DUE_AFTER = {
        1: timedelta(hours=4),
        2: timedelta(days=1),
        3: timedelta(days=3),
        4: timedelta(days=7),
    }

    class Meta:
        ordering = ["school", "priority", "submitted_at"]
        verbose_name = "behavior support request"
        indexes = [
            models.Index(fields=["school", "state", "priority", "submitted_at"], name="bsr_queue"),
        ]
        constraints = [
            valid_code("state", choices.BsrState, name="bsr_state_valid"),
            in_range("priority", 1, 4, name="bsr_priority_range"),
            on_field(
                "priority",
                models.CheckConstraint(
                    # Work on a request needs a priority; a submitted request may be closed
                    # (a duplicate) or escalated before anyone triages it.
                    condition=~Q(state__in=[choices.BsrState.TRIAGED, choices.BsrState.IN_PROGRESS])
                    | Q(priority__isnull=False),
                    name="bsr_triaged_has_priority",
                    violation_error_message="A triaged or in-progress request needs a priority.",
                ),
            ),
            not_before("closed_at", "submitted_at", name="bsr_closed_after_submitted"),
        ]

    def __str__(self) -> str:
        return f"BSR #{self.pk} {self.student} ({self.get_state_display()})"

    @property
    def is_open(self) -> bool:
        return self.state in choices.OPEN_BSR_STATES


class BsrTransition(TenantModel):
    """One move of a BSR through its workflow, with who made it and why."""

    request = models.ForeignKey(
        BehaviorSupportRequest, on_delete=models.CASCADE, related_name="transitions"
    )
    from_state = models.CharField(max_length=16, choices=choices.BsrState.choices, blank=True)
    to_state = models.CharField(max_length=16, choices=choices.BsrState.choices)
    actor = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    note = models.TextField(blank=True)
    at = models.DateTimeField()

    gate = Gate(school="request__school", student="request__student")
    event_prefix = "bsr_transition"

    class Meta:
        ordering = ["request", "at", "id"]
        constraints = [
            valid_code("to_state", choices.BsrState, name="bsr_transition_to_valid"),
            valid_code(
                "from_state", choices.BsrState, name="bsr_transition_from_valid", blank=True
            ),
        ]

    def __str__(self) -> str:
        return f"{self.from_state or 'new'} → {self.to_state}"


class Intervention(TenantModel):
    """A tiered support for a student, from the district's intervention catalogue."""

    student = models.ForeignKey(Student, on_delete=models.PROTECT, related_name="interventions")
    school = models.ForeignKey(School, on_delete=models.PROTECT, related_name="interventions")
    tier = models.PositiveSmallIntegerField(choices=choices.InterventionTier.choices)
    intervention_type = _descriptor(Cat.INTERVENTION_TYPE)
    staff = models.ForeignKey(
        Staff,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="interventions",
        help_text="Responsible staff member.",
    )
    start_date = models.DateField()
    planned_end_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    fidelity_pct = models.PositiveSmallIntegerField(
        "fidelity (%)", null=True, blank=True, help_text="Share of sessions delivered as planned."
    )
    outcome = models.CharField(
        max_length=16,
        choices=choices.InterventionOutcome.choices,
        default=choices.InterventionOutcome.ONGOING,
    )
    goal = models.TextField(blank=True)
    confidential_notes = EncryptedTextField(
        blank=True, help_text="Encrypted at rest; never shown in lists or sent to vendors."
    )

    gate = Gate(school="school", student="student")
    event_prefix = "intervention"

    class Meta:
        ordering = ["-start_date", "id"]
        constraints = [
            in_range("tier", 1, 3, name="intervention_tier_range", nullable=False),
            in_range("fidelity_pct", 0, 100, name="intervention_fidelity_range"),
            not_before(
                "planned_end_date", "start_date", name="intervention_planned_end_after_start"
            ),
            not_before("end_date", "start_date", name="intervention_end_after_start"),
            valid_code("outcome", choices.InterventionOutcome, name="intervention_outcome_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.intervention_type} for {self.student} (tier {self.tier})"

    def clean(self) -> None:
        super().clean()
        errors = {}
        for name in ("planned_end_date", "end_date"):
            value = getattr(self, name)
            if value and self.start_date and value < self.start_date:
                errors[name] = "Cannot be before the start date."
        if self.fidelity_pct is not None and self.fidelity_pct > 100:
            errors["fidelity_pct"] = "Fidelity is a percentage from 0 to 100."
        if errors:
            raise ValidationError(errors)
