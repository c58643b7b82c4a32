"""Builders for the database constraints every app repeats: valid codes and date order.

Each also tells model forms which field a violation belongs to (see ``field_errors``), so a bad
value shows as a field error rather than a form-wide one.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q


def valid_code(field: str, choices: type[models.Choices], *, name: str, blank: bool = False):
    values = list(choices.values)
    condition = Q(**{f"{field}__in": values})
    if blank:
        condition |= Q(**{field: ""})
    return models.CheckConstraint(
        condition=condition,
        name=name,
        violation_error_message=f"{field.replace('_', ' ').capitalize()} must be one of: "
        + ", ".join(values)
        + ".",
    )


def not_before(later: str, earlier: str, *, name: str, message: str | None = None):
    """``later`` is empty or on/after ``earlier``."""
    return models.CheckConstraint(
        condition=Q(**{f"{later}__isnull": True}) | Q(**{f"{later}__gte": F(earlier)}),
        name=name,
        violation_error_message=message
        or f"{later.replace('_', ' ').capitalize()} cannot be before {earlier.replace('_', ' ')}.",
    )


def in_range(field: str, low, high, *, name: str, nullable: bool = True):
    condition = Q(**{f"{field}__gte": low, f"{field}__lte": high})
    if nullable:
        condition |= Q(**{f"{field}__isnull": True})
    return models.CheckConstraint(
        condition=condition,
        name=name,
        violation_error_message=f"{field.replace('_', ' ').capitalize()} must be between "
        f"{low} and {high}.",
    )
