"""The webhook event catalogue: every type an endpoint can subscribe to, with its JSON Schema
and an example, derived from the domain event types and the API's resource declarations.

A record's payload is the record as ``/api/v1/`` returns it (same field names, same field
profile), so a vendor reads one vocabulary whether it pulls or is pushed to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from functools import cache

from django.contrib.postgres.fields import ArrayField
from django.db import models

from bxos.api.resources import RESOURCES, Resource
from bxos.common import events

API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class CatalogueEntry:
    type: str
    description: str
    resource: Resource | None = None
    # For types not backed by an API resource: the shape of ``data.object``.
    object_schema: dict = field(default_factory=dict)


# entity prefix of the domain events -> the API resource(s) its rows are sent as.
_RESOURCE_ENTITIES = {
    "student": ["students"],
    "guardian": ["guardians"],
    "student_guardian": ["studentGuardians"],
    "enrollment": ["enrollments"],
    "section_enrollment": ["sectionEnrollments"],
    "attendance": ["attendance", "periodAttendance"],
    "grade": ["grades"],
    "incident": ["incidents"],
    "bsr": ["behaviorSupportRequests"],
    "intervention": ["interventions"],
}
_RESOURCES_BY_NAME = {r.name: r for r in RESOURCES}

_RUN = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "connector": {"type": "string"},
        "status": {"type": "string"},
        "startedAt": {"type": "string", "format": "date-time"},
        "finishedAt": {"type": ["string", "null"], "format": "date-time"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "message": {"type": "string"},
    },
}
_IMPORT = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "fileName": {"type": "string"},
        "status": {"type": "string"},
        "rows": {"type": "integer"},
        "errors": {"type": "integer"},
        "message": {"type": "string"},
    },
}
_REPORT = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "period": {"type": "string", "examples": ["2026-10"]},
        "state": {"type": "string"},
        "downloadUrl": {"type": "string"},
    },
}
_ENDPOINT = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "url": {"type": "string"},
        "reason": {"type": "string"},
        "disabledAt": {"type": "string", "format": "date-time"},
    },
}
# Types that later parts of the product emit; declared here so endpoints can subscribe now.
OTHER_TYPES: dict[str, tuple[str, dict]] = {
    "sync_run.completed": ("A sync run with a student information system completed.", _RUN),
    "sync_run.failed": ("A sync run failed.", _RUN),
    "sync_run.held": ("A sync run was held for review (too many changes at once).", _RUN),
    "import.completed": ("A bulk import completed.", _IMPORT),
    "import.failed": ("A bulk import failed.", _IMPORT),
    "compliance_report.ready": ("A monthly state compliance report is ready.", _REPORT),
    "webhook_endpoint.disabled": ("A webhook endpoint was disabled.", _ENDPOINT),
}


def register_types() -> None:
    """Declare the domain event types this catalogue adds (the others come from their apps)."""
    for name, (description, _schema) in OTHER_TYPES.items():
        events.register_event_type(name, description)


@cache
def entries() -> dict[str, CatalogueEntry]:
    """Every subscribable type, by name."""
    known = {e.name: e.description for e in events.catalogue()}
    out: dict[str, CatalogueEntry] = {}
    for entity, resource_names in _RESOURCE_ENTITIES.items():
        verbs = ["created", "updated", "deleted"]
        if entity == "bsr":
            verbs.append("status_changed")
        for verb in verbs:
            name = f"{entity}.{verb}"
            if name in known:
                resource = _RESOURCES_BY_NAME[resource_names[0]]
                out[name] = CatalogueEntry(name, known[name], resource)
    for name, (description, schema) in OTHER_TYPES.items():
        out[name] = CatalogueEntry(name, description, object_schema=schema)
    return dict(sorted(out.items()))


def resource_for(model_label: str) -> Resource | None:
    """The API resource a row of this model is sent as."""
    for resource in RESOURCES:
        if resource.model._meta.label == model_label:
            return resource
    return None


# --- JSON Schema ------------------------------------------------------------------------


def _model_field(model: type[models.Model], path: str) -> tuple[models.Field, bool]:
    """The field an ORM path ends at, and whether the value can be null: any step of the path
    may be (a code read through a nullable foreign key is null when the key is)."""
    parts = path.split("__")
    nullable = False
    for part in parts[:-1]:
        relation = model._meta.get_field(part)
        nullable = nullable or relation.null
        model = relation.related_model
    found = model._meta.get_field(parts[-1])
    nullable = nullable or found.null
    if found.is_relation and found.many_to_one:
        return found.target_field, nullable
    return found, nullable


def _field_schema(f: models.Field, nullable: bool | None = None) -> dict:
    if isinstance(f, ArrayField):
        return {"type": "array", "items": _field_schema(f.base_field)}
    if isinstance(f, models.BooleanField):
        schema = {"type": "boolean"}
    elif isinstance(f, models.IntegerField | models.AutoField):
        schema = {"type": "integer"}
    elif isinstance(f, models.DecimalField):
        schema = {"type": "string", "format": "decimal"}
    elif isinstance(f, models.FloatField):
        schema = {"type": "number"}
    elif isinstance(f, models.DateTimeField):
        schema = {"type": "string", "format": "date-time"}
    elif isinstance(f, models.DateField):
        schema = {"type": "string", "format": "date"}
    elif isinstance(f, models.TimeField):
        schema = {"type": "string", "format": "time"}
    elif isinstance(f, models.JSONField):
        schema = {}
    else:
        schema = {"type": "string"}
        if f.choices:
            schema["enum"] = [value for value, _label in f.flatchoices]
    if (f.null if nullable is None else nullable) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    return schema


def resource_schema(resource: Resource) -> dict:
    return {
        "type": "object",
        "properties": {
            name: _field_schema(*_model_field(resource.model, path))
            for name, path in resource.fields.items()
        },
        "additionalProperties": False,
    }


def schema(entry: CatalogueEntry) -> dict:
    """The JSON Schema of a whole payload of this type (full style; thin drops ``object``)."""
    obj = resource_schema(entry.resource) if entry.resource else entry.object_schema
    data = {
        "type": "object",
        "required": ["eventId", "occurredAt"],
        "properties": {
            "eventId": {"type": "string", "pattern": "^evt_[0-9A-HJKMNP-TV-Z]{26}$"},
            "occurredAt": {"type": "string", "format": "date-time"},
            "resource": {"type": "string"},
            "id": {"type": ["integer", "null"]},
            "changeVersion": {"type": ["integer", "null"]},
            "url": {"type": "string", "description": "Thin payloads: where to fetch the record."},
            "object": obj,
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": entry.type,
        "description": entry.description,
        "type": "object",
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": {"const": entry.type},
            "timestamp": {"type": "string", "format": "date-time"},
            "data": data,
        },
    }


_SAMPLE = {
    "integer": 1234,
    "number": 1.5,
    "boolean": True,
    "date": date(2026, 10, 14).isoformat(),
    "date-time": datetime(2026, 10, 14, 9, 30).isoformat() + "Z",
    "time": time(9, 30).isoformat(),
    "decimal": str(Decimal("92.5")),
}


def _sample(name: str, schema_: dict):
    if "enum" in schema_:
        return next(v for v in schema_["enum"] if v is not None)
    kind = schema_.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    fmt = schema_.get("format")
    if fmt in _SAMPLE:
        return _SAMPLE[fmt]
    if kind == "array":
        return [_sample(name, schema_["items"])]
    if kind == "object":
        return {}
    if kind in _SAMPLE:
        return _SAMPLE[kind]
    return f"example {name}"


def example(entry: CatalogueEntry) -> dict:
    """A payload of this type, built from its schema."""
    obj_schema = schema(entry)["properties"]["data"]["properties"]["object"]
    obj = {k: _sample(k, v) for k, v in obj_schema.get("properties", {}).items()}
    resource = entry.resource.name if entry.resource else entry.type.split(".")[0]
    return {
        "type": entry.type,
        "timestamp": _SAMPLE["date-time"],
        "data": {
            "eventId": "evt_01JAB3C4D5E6F7G8H9J0K1M2N3",
            "occurredAt": _SAMPLE["date-time"],
            "resource": resource,
            "id": obj.get("id", 1234),
            "changeVersion": obj.get("changeVersion", 98765),
            "object": obj,
        },
    }
