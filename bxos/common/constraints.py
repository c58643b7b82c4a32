"""Builders for the database constraints every app repeats: valid codes and date order.

Each also tells model forms which field a violation belongs to (see ``field_errors``), so a bad
value shows as a field error rather than a form-wide one.
"""

from __future__ import annotations

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models
from django.db.models import F, Q


class FieldConstraintErrors:
    """Model mixin: a violated constraint built here is reported on its field.

    Django reports CHECK constraint violations as form-wide errors; a person fixing a form
    needs to see the message next to the value that is wrong.
    """

    def validate_constraints(self, exclude=None):
        from django.db import router

        using = router.db_for_write(self.__class__, instance=self)
        errors: dict[str, list[ValidationError]] = {}
        for model_class, constraints in self.get_constraints():
            for constraint in constraints:
                try:
                    constraint.validate(model_class, self, exclude=exclude, using=using)
                except ValidationError as exc:
                    field = _FIELD_OF.get(constraint.name)
                    key = field if field and field not in (exclude or ()) else NON_FIELD_ERRORS
                    errors.setdefault(key, []).append(exc)
        if errors:
            raise ValidationError(errors)


def _words(name: str) -> str:
    return name.replace("_", " ")


# constraint name -> field. Not an attribute: Django clones constraints through deconstruct().
_FIELD_OF: dict[str, str] = {}


def _on(field: str, constraint):
    _FIELD_OF[constraint.name] = field
    return constraint


def valid_code(field: str, choices: type[models.Choices], *, name: str, blank: bool = False):
    values = list(choices.values)
    condition = Q(**{f"{field}__in": values})
    if blank:
        condition |= Q(**{field: ""})
    return _on(
        field,
        models.CheckConstraint(
            condition=condition,
            name=name,
            violation_error_message=f"{field.replace('_', ' ').capitalize()} must be one of: "
            + ", ".join(values)
            + ".",
        ),
    )


def not_before(later: str, earlier: str, *, name: str, message: str | None = None):
    """``later`` is empty or on/after ``earlier``."""
    return _on(
        later,
        models.CheckConstraint(
            condition=Q(**{f"{later}__isnull": True}) | Q(**{f"{later}__gte": F(earlier)}),
            name=name,
            violation_error_message=message
            or f"{_words(later).capitalize()} cannot be before {_words(earlier)}.",
        ),
    )


def in_range(field: str, low, high, *, name: str, nullable: bool = True):
    condition = Q(**{f"{field}__gte": low, f"{field}__lte": high})
    if nullable:
        condition |= Q(**{f"{field}__isnull": True})
    return _on(
        field,
        models.CheckConstraint(
            condition=condition,
            name=name,
            violation_error_message=f"{field.replace('_', ' ').capitalize()} must be between "
            f"{low} and {high}.",
        ),
    )


def on_field(field: str, constraint):
    """Attach any other constraint's violation message to ``field``."""
    return _on(field, constraint)
