"""Code lists of the behavior domain (see shared/design/DOMAIN.md)."""

from django.db import models


class IncidentLevel(models.TextChoices):
    MINOR = "minor", "Minor (classroom-managed)"
    MAJOR = "major", "Major (office-managed)"


class DescriptorCategory(models.TextChoices):
    PROBLEM_BEHAVIOR_MINOR = "behavior_minor", "Problem behavior (minor)"
    PROBLEM_BEHAVIOR_MAJOR = "behavior_major", "Problem behavior (major)"
    HARASSMENT_TYPE = "harassment_type", "Harassment type"
    WEAPON_TYPE = "weapon_type", "Weapon type"
    FIREARM_TYPE = "firearm_type", "Firearm type"
    LOCATION = "location", "Location"
    MOTIVATION = "motivation", "Perceived motivation"
    OTHERS_INVOLVED = "others_involved", "Others involved"
    ACTION = "action", "Action taken"
    INTERVENTION_TYPE = "intervention_type", "Intervention type"


class RestraintSeclusion(models.TextChoices):
    NONE = "none", "None"
    MECHANICAL = "mechanical", "Mechanical restraint"
    PHYSICAL = "physical", "Physical restraint"
    SECLUSION = "seclusion", "Seclusion"


class IdeaRemoval(models.TextChoices):
    NONE = "none", "None"
    SCHOOL_PERSONNEL = (
        "school_personnel",
        "By school personnel (drugs, weapons, serious bodily injury)",
    )
    HEARING_OFFICER = "hearing_officer", "By hearing officer"


class ParticipantRole(models.TextChoices):
    VICTIM = "victim", "Victim"
    PERPETRATOR = "perpetrator", "Perpetrator"
    WITNESS = "witness", "Witness"


class BsrState(models.TextChoices):
    SUBMITTED = "submitted", "Submitted"
    TRIAGED = "triaged", "Triaged"
    IN_PROGRESS = "in_progress", "In progress"
    ESCALATED = "escalated", "Escalated"
    RESOLVED = "resolved", "Resolved"
    CLOSED_NO_ACTION = "closed_no_action", "Closed, no action"


OPEN_BSR_STATES = (BsrState.SUBMITTED, BsrState.TRIAGED, BsrState.IN_PROGRESS, BsrState.ESCALATED)

# Allowed workflow moves. Any open state can be escalated; resolved and closed are final.
BSR_TRANSITIONS: dict[str, tuple[str, ...]] = {
    BsrState.SUBMITTED: (BsrState.TRIAGED, BsrState.ESCALATED, BsrState.CLOSED_NO_ACTION),
    BsrState.TRIAGED: (
        BsrState.IN_PROGRESS,
        BsrState.ESCALATED,
        BsrState.RESOLVED,
        BsrState.CLOSED_NO_ACTION,
    ),
    BsrState.IN_PROGRESS: (BsrState.RESOLVED, BsrState.ESCALATED, BsrState.CLOSED_NO_ACTION),
    BsrState.ESCALATED: (
        BsrState.TRIAGED,
        BsrState.IN_PROGRESS,
        BsrState.RESOLVED,
        BsrState.CLOSED_NO_ACTION,
    ),
    BsrState.RESOLVED: (),
    BsrState.CLOSED_NO_ACTION: (),
}


class InterventionTier(models.IntegerChoices):
    TIER_1 = 1, "Tier 1 (universal)"
    TIER_2 = 2, "Tier 2 (targeted)"
    TIER_3 = 3, "Tier 3 (intensive)"


class InterventionOutcome(models.TextChoices):
    ONGOING = "ongoing", "Ongoing"
    MET = "met", "Goals met"
    PARTIALLY_MET = "partially_met", "Goals partially met"
    NOT_MET = "not_met", "Goals not met"
    DISCONTINUED = "discontinued", "Discontinued"
