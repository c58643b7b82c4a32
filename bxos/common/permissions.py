"""The one permission gate: ``restrict(queryset, actor, action)``.

Every read of student data by a person, an API client or a job goes through it: admin
querysets (lists, detail, autocomplete, filter choices, form choices), pages, the API and
GraphQL. It filters rows; it never raises. Another district's row is therefore simply absent,
which faces turn into a 404.

How a row is matched. Each gated model declares a :class:`Gate`: how to reach its district,
school, student and section. Roles (Django groups, see ``bxos.common.roles``) grant:

- district admin: every row of their district;
- school admin: rows of the schools they hold ``schools.access_school`` on;
- counselor: rows of their schools, plus rows of students on their caseload
  (``schools.access_student``);
- teacher: rows of the sections they hold ``schools.access_section`` on; for models without a
  section, rows of the students enrolled in those sections; for models without a student, rows
  of those sections' schools.

Rows of a model with no school, student or section (academic sessions, descriptor catalogues)
are district-wide. Object permissions live in django-guardian's direct foreign-key tables, and
are used here as subqueries, so restricting costs no extra query.

Actors that are not users (API clients, added by the vendor API) implement
``restrict_queryset(queryset, action)`` and are dispatched to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from bxos.common import roles

VIEW, ADD, CHANGE, DELETE = "view", "add", "change", "delete"
ACTIONS = (VIEW, ADD, CHANGE, DELETE)

# A dimension is an ORM path to the id ("school", "section__school") or a callable that takes a
# subquery of ids and returns a Q (for multi-valued relations, to avoid duplicate rows).
Dimension = str | Callable[[QuerySet], Q] | None


@dataclass(frozen=True)
class Gate:
    """How the gate reaches a model's district, school, student and section."""

    district: str = "district"
    school: Dimension = None
    student: Dimension = None
    section: Dimension = None
    # Catalogue rows with no district (shipped defaults) are visible to every district.
    shared_when_district_null: bool = False


def _dimension_q(dimension: Dimension, ids: QuerySet) -> Q:
    if callable(dimension):
        return dimension(ids)
    return Q(**{f"{dimension}__in": ids})


def restrict(queryset: QuerySet, actor, action: str = VIEW) -> QuerySet:
    """The rows of ``queryset`` that ``actor`` may ``action`` (view, add, change, delete)."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
    model = queryset.model
    gate: Gate | None = getattr(model, "gate", None)
    if gate is None:
        raise TypeError(
            f"{model._meta.label} has no gate: declare `gate = Gate(...)` on the model "
            "(see docs/development/adding-a-model.md)"
        )
    if actor is None:
        return queryset.none()
    if hasattr(actor, "restrict_queryset"):
        return actor.restrict_queryset(queryset, action)
    return _restrict_for_user(queryset, actor, action, gate)


def can(actor, obj, action: str = VIEW) -> bool:
    """Whether ``actor`` may ``action`` this one object (a single EXISTS query)."""
    model = type(obj)
    return restrict(model._default_manager.filter(pk=obj.pk), actor, action).exists()


def _restrict_for_user(queryset: QuerySet, user, action: str, gate: Gate) -> QuerySet:
    if not getattr(user, "is_authenticated", False):
        return queryset.none()
    if user.is_superuser or getattr(user, "is_system_actor", False):
        return queryset
    if not user.is_active:
        return queryset.none()
    opts = queryset.model._meta
    if not user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}"):
        return queryset.none()
    district_id = roles.district_id_of(user)
    if district_id is None:
        return queryset.none()

    in_district = Q(**{gate.district: district_id})
    if gate.shared_when_district_null and action == VIEW:
        # Shipped defaults are read-only to districts; they add their own entries instead.
        in_district |= Q(**{f"{gate.district}__isnull": True})
    queryset = queryset.filter(in_district)

    user_roles = roles.roles_of(user)
    if roles.DISTRICT_ADMIN in user_roles:
        return queryset
    if gate.school is None and gate.student is None and gate.section is None:
        # District-wide reference data (sessions, catalogues): any role in the district.
        return queryset if user_roles else queryset.none()

    grant = Q(pk__in=[])  # matches nothing; each role widens it
    if user_roles & {roles.SCHOOL_ADMIN, roles.COUNSELOR} and gate.school is not None:
        grant |= _dimension_q(gate.school, roles.school_ids_of(user))
    if roles.COUNSELOR in user_roles and gate.student is not None:
        grant |= _dimension_q(gate.student, roles.caseload_student_ids_of(user))
    if roles.TEACHER in user_roles:
        if gate.section is not None:
            grant |= _dimension_q(gate.section, roles.section_ids_of(user))
        elif gate.student is not None:
            grant |= _dimension_q(gate.student, roles.section_student_ids_of(user))
        elif gate.school is not None:
            grant |= _dimension_q(gate.school, roles.section_school_ids_of(user))
    return queryset.filter(grant)


def restrict_for_client(
    queryset: QuerySet, *, district_id: int, school_ids: list[int], action: str, can_write: bool
) -> QuerySet:
    """The gate for an external client: its district, its allowed schools (all when the list
    is empty), and writes only with a write scope. Which resources a client may read at all is
    decided by its scopes, in the API's permission classes."""
    if action != VIEW and not can_write:
        return queryset.none()
    gate: Gate = queryset.model.gate
    in_district = Q(**{gate.district: district_id})
    if gate.shared_when_district_null and action == VIEW:
        in_district |= Q(**{f"{gate.district}__isnull": True})
    queryset = queryset.filter(in_district)
    if school_ids and gate.school is not None:
        queryset = queryset.filter(_dimension_q(gate.school, school_ids))
    return queryset
