"""OAuth2 scopes of the vendor API. Demographics are separate from the roster, as in OneRoster."""

from __future__ import annotations

ROSTER = "roster.readonly"
DEMOGRAPHICS = "demographics.readonly"
GUARDIANS = "guardians.readonly"
ATTENDANCE = "attendance.readonly"
GRADES = "grades.readonly"
BEHAVIOR = "behavior.readonly"
BEHAVIOR_WRITE = "behavior.write"
INTROSPECTION = "introspection"
WEBHOOKS_MANAGE = "webhooks:manage"

SCOPES: dict[str, str] = {
    ROSTER: "Schools, sessions, students, staff, enrollments, sections and section enrollments",
    DEMOGRAPHICS: "Students' demographics (race/ethnicity, sex, IDEA, 504, English learner)",
    GUARDIANS: "Guardians and their links to students",
    ATTENDANCE: "Daily and period attendance",
    GRADES: "Grades per grading period",
    BEHAVIOR: "Incidents, behavior support requests and interventions",
    BEHAVIOR_WRITE: "Create incidents and behavior support requests; move requests' status",
    WEBHOOKS_MANAGE: "Manage the client's own webhook endpoints, see and replay their deliveries",
    INTROSPECTION: "Ask whether an access token is active (for the district's resource servers)",
}
WRITE_SCOPES = {BEHAVIOR_WRITE}


def scope_choices() -> list[tuple[str, str]]:
    return [(name, f"{name}: {text}") for name, text in SCOPES.items()]
