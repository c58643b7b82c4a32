"""The nested relations of the GraphQL types: a student's incidents, an incident's student, ...

A relation is a chain of hops, each matching a field of the rows it comes from to a field of
the resource it reads, both named as the API names them. A hop to ``id`` gives at most one row
(incident -> student); any other hop gives a list (student -> incidents, read by ``studentId``).
Declared here, not guessed from the models: each relation shows data in a new shape, which is
a decision to make on purpose. A relation whose resources are not (or no longer) declared is
left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from bxos.api.resources import BY_NAME, Resource


@dataclass(frozen=True)
class Hop:
    from_field: str  # API field of the rows the hop starts from
    resource: str  # the resource the hop reads
    to_field: str  # API field of that resource that must equal from_field


@dataclass(frozen=True)
class Relation:
    parent: str  # resource whose type gets the field
    name: str  # the GraphQL field
    hops: tuple[Hop, ...]
    description: str

    @property
    def child(self) -> Resource:
        return BY_NAME[self.hops[-1].resource]

    @property
    def many(self) -> bool:
        return any(hop.to_field != "id" for hop in self.hops)

    @property
    def key(self) -> str:
        """The parent's field the relation starts from (read along with the parent rows)."""
        return self.hops[0].from_field


def _many(parent: str, name: str, child: str, key: str, description: str) -> Relation:
    return Relation(parent, name, (Hop("id", child, key),), description)


def _one(parent: str, name: str, key: str, child: str, description: str) -> Relation:
    return Relation(parent, name, (Hop(key, child, "id"),), description)


_DECLARED = [
    _many("students", "enrollments", "enrollments", "studentId", "The student's enrollments."),
    _many("students", "incidents", "incidents", "studentId", "Incidents about the student."),
    _many(
        "students",
        "behaviorSupportRequests",
        "behaviorSupportRequests",
        "studentId",
        "Behavior support requests about the student.",
    ),
    _many(
        "students", "interventions", "interventions", "studentId", "The student's interventions."
    ),
    _many(
        "students",
        "guardianLinks",
        "studentGuardians",
        "studentId",
        "The student's links to guardians (relationship, custody, contact).",
    ),
    Relation(
        "students",
        "guardians",
        (Hop("id", "studentGuardians", "studentId"), Hop("guardianId", "guardians", "id")),
        "The student's guardians (through studentGuardians; needs both scopes' fields).",
    ),
    _one("incidents", "student", "studentId", "students", "The student the incident is about."),
    _one("incidents", "school", "schoolId", "schools", "The school of the incident."),
    _one(
        "behaviorSupportRequests",
        "student",
        "studentId",
        "students",
        "The student the request is about.",
    ),
    _one("behaviorSupportRequests", "school", "schoolId", "schools", "The school asked."),
    _one("interventions", "student", "studentId", "students", "The student supported."),
    _one("enrollments", "student", "studentId", "students", "The student enrolled."),
    _one("enrollments", "school", "schoolId", "schools", "The school enrolled in."),
    _one("studentGuardians", "student", "studentId", "students", "The student of the link."),
    _one("studentGuardians", "guardian", "guardianId", "guardians", "The guardian of the link."),
]


def _declared(relation: Relation) -> bool:
    names = [relation.parent, *(hop.resource for hop in relation.hops)]
    if not all(name in BY_NAME for name in names):
        return False
    source = relation.parent
    for hop in relation.hops:
        for resource, field in ((source, hop.from_field), (hop.resource, hop.to_field)):
            assert field in BY_NAME[resource].fields, (
                f"relation {relation.parent}.{relation.name}: {resource} has no field {field}; "
                "update bxos/api/graphql/relations.py"
            )
        source = hop.resource
    return True


RELATIONS: list[Relation] = [relation for relation in _DECLARED if _declared(relation)]
