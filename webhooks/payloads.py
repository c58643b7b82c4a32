"""Payload bodies: the Standard Webhooks envelope, full or thin, as JSON, XML or form data."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

import orjson

from bxos.api.resources import Resource
from webhooks.catalogue import API_PREFIX
from webhooks.choices import BodyFormat, PayloadStyle

CONTENT_TYPES = {
    BodyFormat.JSON: "application/json",
    BodyFormat.XML: "application/xml",
    BodyFormat.FORM: "application/x-www-form-urlencoded",
}


def _default(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(value) -> bytes:
    return orjson.dumps(value, default=_default, option=orjson.OPT_UTC_Z)


def envelope(
    *,
    event_id: str,
    event_type: str,
    occurred_at: str,
    resource: str,
    object_id: int | None,
    change_version: int | None,
    obj: dict | None,
) -> dict:
    """The payload as Standard Webhooks suggests: ``type``, ``timestamp``, ``data``."""
    data = {
        "eventId": event_id,
        "occurredAt": occurred_at,
        "resource": resource,
        "id": object_id,
        "changeVersion": change_version,
    }
    if obj is not None:
        data["object"] = obj
    return {"type": event_type, "timestamp": occurred_at, "data": data}


def for_endpoint(
    full: dict, *, resource: Resource | None, style: str, allowed_fields: list[str] | None
) -> dict:
    """What one endpoint receives: the full payload cut by its field profile, or thin."""
    data = dict(full["data"])
    obj = data.get("object")
    if style == PayloadStyle.THIN:
        data.pop("object", None)
        if resource is not None and data.get("id") is not None:
            data["url"] = f"{API_PREFIX}/{resource.name}/{data['id']}"
    elif obj is not None and resource is not None and allowed_fields is not None:
        keep = resource.selected(allowed_fields)
        data["object"] = {k: v for k, v in obj.items() if k in keep}
    return {**full, "data": data}


def render(payload: dict, body_format: str) -> bytes:
    """The bytes sent (and signed) for this format."""
    if body_format == BodyFormat.XML:
        return _xml(payload)
    if body_format == BodyFormat.FORM:
        # Form receivers get the envelope's scalars as fields and the data as JSON.
        return urlencode(
            {
                "type": payload["type"],
                "timestamp": payload["timestamp"],
                "data": dumps(payload["data"]).decode(),
            }
        ).encode()
    return dumps(payload)


def _xml(payload: dict) -> bytes:
    root = ET.Element("event")
    _xml_into(root, orjson.loads(dumps(payload)))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _xml_into(parent: ET.Element, value) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _xml_into(ET.SubElement(parent, key), item)
    elif isinstance(value, list):
        for item in value:
            _xml_into(ET.SubElement(parent, "item"), item)
    elif value is None:
        parent.set("nil", "true")
    else:
        parent.text = str(value).lower() if isinstance(value, bool) else str(value)
