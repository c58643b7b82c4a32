"""The OpenAPI 3 schema (/api/schema/) and its docs pages (/api/docs/, /api/redoc/)."""

from __future__ import annotations

import re

import pytest
import yaml
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command

from bxos.api import scopes
from bxos.api.resources import RESOURCES

PAGING = {"limit", "after", "minChangeVersion", "maxChangeVersion"}
PROBLEM_REF = "#/components/schemas/Problem"
# webhooks.api: path -> {method: (operation id, problem statuses)}
WEBHOOKS = {
    "/api/v1/webhooks/endpoints": {
        "get": ("webhooks_endpoints_list", {400, 401, 403, 429}),
        "post": ("webhooks_endpoints_create", {400, 401, 403, 409, 413, 415, 429}),
    },
    "/api/v1/webhooks/endpoints/{id}": {
        "get": ("webhooks_endpoints_retrieve", {400, 401, 403, 404, 429}),
        "patch": ("webhooks_endpoints_update", {400, 401, 403, 404, 413, 415, 429}),
        "delete": ("webhooks_endpoints_destroy", {400, 401, 403, 404, 429}),
    },
    "/api/v1/webhooks/endpoints/{id}/rotate-secret": {
        "post": ("webhooks_endpoints_rotate_secret", {400, 401, 403, 404, 413, 415, 429}),
    },
    "/api/v1/webhooks/deliveries": {
        "get": ("webhooks_deliveries_list", {400, 401, 403, 429}),
    },
    "/api/v1/webhooks/deliveries/{id}": {
        "get": ("webhooks_deliveries_retrieve", {400, 401, 403, 404, 429}),
    },
    "/api/v1/webhooks/deliveries/{id}/replay": {
        "post": ("webhooks_deliveries_replay", {400, 401, 403, 404, 409, 429}),
    },
    "/api/v1/webhooks/deliveries/replay": {
        "post": ("webhooks_deliveries_replay_selection", {400, 401, 403, 413, 415, 429}),
    },
    "/api/v1/webhooks/deliveries/recover": {
        "post": ("webhooks_deliveries_recover", {400, 401, 403, 413, 415, 429}),
    },
    "/api/v1/webhooks/event-types": {"get": ("webhooks_event_types", {401, 429})},
    "/api/v1/events": {"get": ("events_list", {400, 401, 403, 429})},
}


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict:
    """Generated as CI does: validated against the OpenAPI 3 spec, any warning fails."""
    path = tmp_path_factory.mktemp("openapi") / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(path))
    return yaml.safe_load(path.read_text())


def _params(operation: dict) -> dict[str, dict]:
    return {p["name"]: p for p in operation.get("parameters", [])}


def _problem_responses(operation: dict) -> set[int]:
    return {
        int(status)
        for status, response in operation["responses"].items()
        if response.get("content", {}).get("application/problem+json", {}).get("schema")
        == {"$ref": PROBLEM_REF}
    }


def test_schema_has_every_resource_with_list_retrieve_and_deletes(schema):
    paths = schema["paths"]
    expected = {"/api/v1/changes/available", "/api/v1/behaviorSupportRequests/{id}/transitions"}
    for resource in RESOURCES:
        base = f"/api/v1/{resource.name}"
        expected |= {base, f"{base}/{{id}}", f"{base}/deletes"}
        assert paths[base]["get"]["operationId"] == f"{resource.name}_list"
        assert paths[f"{base}/{{id}}"]["get"]["operationId"] == f"{resource.name}_retrieve"
        assert paths[f"{base}/deletes"]["get"]["operationId"] == f"{resource.name}_deletes"
    expected |= set(WEBHOOKS)
    assert set(paths) == expected  # nothing undocumented, nothing but the API
    writes = {(p, m) for p, ops in paths.items() for m in ops if m != "get"}
    assert writes == {
        ("/api/v1/incidents", "post"),
        ("/api/v1/behaviorSupportRequests", "post"),
        ("/api/v1/behaviorSupportRequests/{id}/transitions", "post"),
    } | {(p, m) for p, ops in WEBHOOKS.items() for m in ops if m != "get"}


def test_webhook_operations_are_documented(schema):
    paths = schema["paths"]
    for path, methods in WEBHOOKS.items():
        assert set(paths[path]) == set(methods), path
        for method, (operation_id, problems) in methods.items():
            operation = paths[path][method]
            assert operation["operationId"] == operation_id
            assert _problem_responses(operation) == problems, operation_id
            needs = [] if path.endswith(("/event-types", "/events")) else ["webhooks:manage"]
            assert operation["security"] == [{"oauth2": needs}], operation_id
            assert all("X-Request-ID" in r["headers"] for r in operation["responses"].values())
            if "{id}" in path:
                assert _params(operation)["id"]["schema"]["type"] == "integer"
    create = paths["/api/v1/webhooks/endpoints"]["post"]
    assert "Idempotency-Key" in _params(create)
    assert "201" in create["responses"] and "200" not in create["responses"]
    assert "204" in paths["/api/v1/webhooks/endpoints/{id}"]["delete"]["responses"]
    assert set(_params(paths["/api/v1/webhooks/deliveries"]["get"])) == {
        "limit",
        "after",
        "endpointId",
        "endpointDeleted",
        "eventType",
        "status",
        "since",
        "until",
    }
    assert set(_params(paths["/api/v1/events"]["get"])) == {"since", "limit", "eventType"}
    components = schema["components"]["schemas"]
    # Only the create and rotate answers have a secret; the endpoint itself never does.
    with_secret = {name for name, c in components.items() if "secret" in c.get("properties", {})}
    assert with_secret == {"EndpointSecret", "RotatedSecret"}
    assert components["EndpointInRequest"]["required"] == ["eventTypes", "name", "url"]
    assert "required" not in components["PatchedEndpointInRequest"]
    assert components["DeliveryStatusEnum"]["enum"] == [
        "pending",
        "leased",
        "succeeded",
        "failed",
        "held",
        "cancelled",
    ]


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.name)
def test_every_parameter_and_error_is_documented(schema, resource):
    base = f"/api/v1/{resource.name}"
    listing = schema["paths"][base]["get"]
    params = _params(listing)
    assert set(params) == PAGING | set(resource.filters)
    limit = params["limit"]["schema"]
    assert limit["type"] == "integer" and limit["maximum"] == settings.API["MAX_PAGE_SIZE"]
    assert limit["minimum"] == 1 and limit["default"] == settings.API["DEFAULT_PAGE_SIZE"]
    assert params["after"]["schema"]["type"] == "string"
    for name in resource.filters:
        if name.endswith("Id"):
            assert params[name]["schema"]["type"] == "integer", name
    assert _problem_responses(listing) == {400, 401, 403, 429}

    retrieve = schema["paths"][f"{base}/{{id}}"]["get"]
    assert _params(retrieve)["id"] == {**_params(retrieve)["id"], "in": "path", "required": True}
    assert _params(retrieve)["id"]["schema"]["type"] == "integer"
    assert _problem_responses(retrieve) == {400, 401, 403, 404, 429}

    deletes = schema["paths"][f"{base}/deletes"]["get"]
    assert set(_params(deletes)) == PAGING
    assert _problem_responses(deletes) == {400, 401, 403, 429}
    assert deletes["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeletedRecordList"
    }

    for operation in (listing, retrieve):
        assert "field profile" in operation["description"]
    for operation in (listing, retrieve, deletes):
        assert operation["security"] == [{"oauth2": [resource.scope]}]
        assert operation["responses"]["401"]["headers"]["WWW-Authenticate"]
        assert operation["responses"]["429"]["headers"]["Retry-After"]
        assert all("X-Request-ID" in r["headers"] for r in operation["responses"].values())
        assert operation["responses"]["200"]["content"].keys() == {"application/json"}


def test_record_components_follow_the_resource_fields(schema):
    components = schema["components"]["schemas"]
    for resource in RESOURCES:
        name = resource.model.__name__
        record = components[name]
        assert list(record["properties"]) == list(resource.fields)
        # A field profile can remove every field but these two.
        assert set(record["required"]) == {"id", "changeVersion"}
        envelope = components[f"{name}List"]
        assert envelope["properties"]["data"]["items"] == {"$ref": f"#/components/schemas/{name}"}
        assert set(envelope["required"]) == {"data", "meta", "links"}
        assert components[f"{name}Item"]["properties"]["data"] == {
            "$ref": f"#/components/schemas/{name}"
        }
    student = components["Student"]["properties"]
    assert student["id"]["type"] == student["changeVersion"]["type"] == "integer"
    assert student["birthDate"] == {**student["birthDate"], "type": "string", "format": "date"}
    assert student["isActive"]["type"] == "boolean"
    grade = components["Grade"]["properties"]["numericGrade"]
    assert grade["type"] == "number" and grade["nullable"] is True
    incident = components["Incident"]["properties"]
    assert incident["subtype"]["nullable"] is True  # through a nullable foreign key
    assert "nullable" not in incident["problemBehavior"]
    assert incident["time"]["format"] == "partial-time"  # no offset: not JSON Schema "time"
    bsr = components["BehaviorSupportRequest"]["properties"]
    assert bsr["submittedAt"]["format"] == "date-time" and "nullable" not in bsr["submittedAt"]
    assert bsr["closedAt"]["nullable"] is True
    enrollment = components["Enrollment"]["properties"]
    assert enrollment["exitDate"]["nullable"] is True
    assert set(components["DeletedRecord"]["properties"]) == {
        "id",
        "changeVersion",
        "sourceId",
        "deletedAt",
        "tombstoneId",
    }
    problem = components["Problem"]
    assert set(problem["properties"]) == {
        "type",
        "title",
        "status",
        "detail",
        "instance",
        "requestId",
        "errors",
    }
    assert components["ProblemFieldError"]["required"] == ["field", "message"]


def test_security_scheme_is_oauth2_client_credentials(schema):
    scheme = schema["components"]["securitySchemes"]["oauth2"]
    assert scheme["type"] == "oauth2"
    flow = scheme["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/o/token/"
    assert flow["scopes"] == scopes.SCOPES
    changes = schema["paths"]["/api/v1/changes/available"]["get"]
    assert changes["security"] == [{"oauth2": []}]  # any valid token
    assert _problem_responses(changes) == {401, 429}


def test_schema_is_served_without_a_token(client):
    # Even a bad token is not looked at: the schema holds no data.
    response = client.get("/api/schema/", HTTP_AUTHORIZATION="Bearer nonsense")
    assert response.status_code == 200
    assert yaml.safe_load(response.content)["info"]["title"] == "BX-OS Integration Hub API"
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200 and response.json()["openapi"].startswith("3.")


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_docs_pages_load_only_local_static_files(client, page):
    response = client.get(page, HTTP_AUTHORIZATION="Bearer nonsense")
    assert response.status_code == 200
    html = response.content.decode()
    assert "cdn" not in html.lower()
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    scripts = re.findall(r"""<script[^>]*\bsrc=["']([^"']+)["']""", html)
    assert scripts, html
    static_url = "/" + settings.STATIC_URL.lstrip("/")
    for url in urls:
        assert not re.match(r"^([a-z]+:)?//", url), url  # nothing from another host
        assert url.startswith(static_url), url
        # Served by the static files setup (collectstatic in production), not fetched here.
        assert finders.find(url.removeprefix(static_url)), url
    assert "/api/schema/" in html


def test_rate_limit_headers_are_documented(schema):
    responses = schema["paths"]["/api/v1/students"]["get"]["responses"]
    for status in ("200", "400", "403", "429"):
        assert {
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            "RateLimit-Policy",
        } <= set(responses[status]["headers"]), status
    assert "RateLimit-Limit" not in responses["401"]["headers"]  # no client, no quota
