"""Schemathesis against the API: generated requests for every operation of the schema.

The generated run is bounded (a few derandomized examples per operation) so it runs in CI on
every push. It goes over a real socket (live_server), with a token holding every read scope
of the north district. The checks: no request gets a server error, and every response (status
code, content type, body) is one the schema describes. Retrieve operations also get one
request for a record that exists, since generated ids almost never do.

The error answers a full-scope token never gets (401, 403) and the known API bugs are checked
case by case through the WSGI application, inside an ordinary rolled-back test.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import checks
from schemathesis.core.failures import FailureGroup

from bxos.api import scopes
from bxos.api.resources import RESOURCES
from bxos.common.services import model_update
from tests.bxos.api.test_api_read import make_client, token_for

MAX_EXAMPLES = 10
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def _run(operation, headers: dict, max_examples: int = MAX_EXAMPLES, **fixed) -> None:
    @given(case=operation.as_strategy(**fixed))
    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()


def _check(case, headers: dict | None = None) -> None:
    """One explicit case; a schemathesis failure becomes an ordinary assertion error."""
    try:
        case.call_and_validate(headers=headers or {}, checks=CHECKS)
    except FailureGroup as exc:
        raise AssertionError(str(exc)) from exc


@pytest.fixture
def quiet_request_log():
    """4xx answers are what most generated requests get; keep 5xx (ERROR) in the log."""
    logger = logging.getLogger("django.request")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _public_resolver(host: str, port: int) -> list[str]:
    """hooks.example.com is a public address; any other name does not resolve (no DNS)."""
    if host == "hooks.example.com":
        return ["93.184.215.14"]
    raise OSError(f"{host}: not resolved in tests")


def _webhook_items(world, actor, client) -> dict[str, int]:
    """An endpoint of the client and one delivery to it (of an event the district keeps)."""
    from webhooks import services as webhook_services
    from webhooks.models import WebhookDelivery

    endpoint, _ = webhook_services.webhook_endpoint_create(
        actor=actor,
        district=world.district,
        client=client,
        name="Vendor hook",
        url="https://hooks.example.com/in",
        event_types=["student.updated"],
    )
    model_update(instance=world.b1, actor=actor, data={"preferred_name": "Generated"})
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    return {
        "/api/v1/webhooks/endpoints/{id}": endpoint.pk,
        "/api/v1/webhooks/endpoints/{id}/rotate-secret": endpoint.pk,
        "/api/v1/webhooks/deliveries/{id}": delivery.pk,
        "/api/v1/webhooks/deliveries/{id}/replay": delivery.pk,
    }


@pytest.mark.django_db(transaction=True)
def test_generated_requests_conform_to_the_schema(
    live_server, north, system, quiet_request_log, settings
):
    settings.OUTBOUND_HTTP = {**settings.OUTBOUND_HTTP, "RESOLVER": _public_resolver}
    settings.WEBHOOKS = {**settings.WEBHOOKS, "PULL_SETTLE_SECONDS": 0}
    client, _ = make_client(north, system)
    if hasattr(client, "rate_per_minute"):
        # Rate limits are not under test here: room for every generated request at once.
        type(client).objects.filter(pk=client.pk).update(
            rate_per_minute=1_000_000, rate_per_hour=100_000_000
        )
    headers = {"Authorization": f"Bearer {token_for(client).token}"}
    existing = {
        f"/api/v1/{r.name}/{{id}}": r.model.objects.filter(district=north.district)
        .order_by("id")
        .values_list("id", flat=True)
        .first()
        for r in RESOURCES
    }
    existing |= _webhook_items(north, system, client)
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # list, retrieve, deletes of each; changes/available; three writes; webhooks (13)
    assert len(operations) == 3 * len(RESOURCES) + 1 + 3 + 13

    failures = {}
    for operation in operations:
        try:
            _run(operation, headers)
            if operation.path in existing:
                assert existing[operation.path], operation.path
                _run(operation, headers, 1, path_parameters={"id": existing[operation.path]})
        except (Exception, FailureGroup) as exc:  # collected: one run reports every operation
            failures[operation.label] = exc
    assert not failures, "\n\n".join(f"{label}:\n{exc}" for label, exc in failures.items())


# --- Case by case, through the WSGI application ---------------------------------------------


@pytest.fixture
def wsgi_schema(quiet_request_log):
    """The schema, with requests sent to the WSGI application in this thread (and this test's
    transaction). As Django's test client does, the connection is not closed per request."""
    from bxos.wsgi import application

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def _bearer(client, scope_list=None) -> dict:
    return {"Authorization": f"Bearer {token_for(client, scope_list).token}"}


def test_error_answers_conform_to_the_schema(wsgi_schema, north, south, system, settings):
    settings.OUTBOUND_HTTP = {**settings.OUTBOUND_HTTP, "RESOLVER": _public_resolver}
    client, _ = make_client(north, system)
    students = wsgi_schema["/api/v1/students"]["GET"]
    student = wsgi_schema["/api/v1/students/{id}"]["GET"]
    cases = [
        (students.Case(), {}, 401),
        (students.Case(), {"Authorization": "Bearer nonsense"}, 401),
        (wsgi_schema["/api/v1/changes/available"]["GET"].Case(), {}, 401),
        (students.Case(), _bearer(client, [scopes.GRADES]), 403),
        (students.Case(query={"limit": 0}), _bearer(client), 400),
        (students.Case(query={"minChangeVersion": 9, "maxChangeVersion": 3}), _bearer(client), 400),
        (student.Case(path_parameters={"id": south.a1.pk}), _bearer(client), 404),
        (wsgi_schema["/api/v1/students/deletes"]["GET"].Case(), _bearer(client), 200),
    ]
    cases += _webhook_error_cases(wsgi_schema, north, south, system, client)
    for case, headers, status in cases:
        response = case.call(headers=headers)
        assert response.status_code == status, (case.path, headers, response.text)
        _check(case, headers)
    if hasattr(client, "rate_per_minute"):  # rate limits (bxos.api.throttling)
        type(client).objects.filter(pk=client.pk).update(rate_per_minute=1)
        case, headers = students.Case(), _bearer(client)
        statuses = [case.call(headers=headers).status_code for _ in range(2)]
        assert statuses[-1] == 429, statuses
        _check(case, headers)


def _webhook_error_cases(wsgi_schema, north, south, system, client) -> list:
    from tests.bxos.api.test_oauth_delegated import delegated_token, make_app

    endpoints = wsgi_schema["/api/v1/webhooks/endpoints"]
    endpoint = wsgi_schema["/api/v1/webhooks/endpoints/{id}"]
    foreign, _ = make_client(south, system)
    items = _webhook_items(south, system, foreign)
    app, _ = make_app(north, system, scope_list=[scopes.ROSTER, scopes.WEBHOOKS_MANAGE])
    delegated = {"Authorization": f"Bearer {delegated_token(app, north.users['teacher']).token}"}
    refused = {"name": "x", "url": "http://10.0.0.5/", "eventTypes": ["student.updated"]}
    return [
        (endpoints["GET"].Case(), _bearer(client, [scopes.ROSTER]), 403),
        (endpoints["GET"].Case(), delegated, 403),
        (wsgi_schema["/api/v1/events"]["GET"].Case(), delegated, 403),
        (endpoints["POST"].Case(body=refused), _bearer(client), 400),
        (endpoints["POST"].Case(body={**refused, "eventTypes": ["x"]}), _bearer(client), 400),
        (endpoints["GET"].Case(), _bearer(client), 200),
        (
            endpoint["GET"].Case(path_parameters={"id": items["/api/v1/webhooks/endpoints/{id}"]}),
            _bearer(client),
            404,
        ),
        (
            wsgi_schema["/api/v1/webhooks/deliveries/{id}/replay"]["POST"].Case(
                path_parameters={"id": items["/api/v1/webhooks/deliveries/{id}"]}
            ),
            _bearer(client),
            404,
        ),
        (wsgi_schema["/api/v1/events"]["GET"].Case(query={"since": "x"}), _bearer(client), 400),
        (wsgi_schema["/api/v1/webhooks/event-types"]["GET"].Case(), delegated, 200),
    ]


def _cursor(payload) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


# Bugs schemathesis found in the API code (fixed); kept as regression cases.
FOUND_BUGS = [
    pytest.param(
        "/api/v1/students",
        {"query": {"gradeLevel": "\x00"}},
        id="nul-in-string-filter",
    ),
    pytest.param(
        "/api/v1/students",
        {"query": {"after": _cursor({"k": [1, 2], "min": "abc", "max": 5})}},
        id="cursor-window-not-integers",
    ),
    pytest.param(
        "/api/v1/students/deletes",
        {"query": {"after": _cursor({"k": [1], "min": None, "max": None})}},
        id="list-cursor-on-deletes",
    ),
    pytest.param(
        "/api/v1/students/{id}",
        {"path_parameters": {"id": "1.5"}},
        id="id-with-a-dot",
    ),
]


@pytest.mark.parametrize(("path", "data"), FOUND_BUGS)
def test_found_bugs_stay_fixed(path, data, wsgi_schema, north, system):
    headers = _bearer(make_client(north, system)[0])
    _check(wsgi_schema[path]["GET"].Case(**data), headers)
