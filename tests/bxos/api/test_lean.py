"""The lean list path (bxos.api.lean): the same answer as the DRF viewset, byte for byte, and
every other case handed to DRF without counting a request twice or disclosing anything."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test import RequestFactory
from django.urls import resolve

from bxos.api import lean, pages, scopes, throttling
from bxos.api.models import DisclosureLogEntry
from bxos.api.resources import RESOURCES
from bxos.common.services import model_update
from tests.bxos.api.test_api_read import ALL_READ, api, make_client, token_for

# Headers whose values differ from one request to the next whichever path answers.
_VARYING = {"RateLimit-Remaining", "RateLimit-Reset", "X-Request-ID"}


@pytest.fixture(autouse=True)
def fresh_caches(settings):
    settings.API = {**settings.API, "LEAN_LISTS": True}
    pages.clear_statements()
    throttling.clear_rules_cache()
    yield
    pages.clear_statements()
    throttling.clear_rules_cache()


def _hits(client) -> int:
    """Requests counted against the client's own per-minute counter, over all windows."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(count), 0) FROM api_rate_counter WHERE key = %s",
            [f"{throttling.counter_subject(client.pk)}/60"],
        )
        return cursor.fetchone()[0]


def _answer(settings, http, path, params, *, lean_on: bool):
    settings.API = {**settings.API, "LEAN_LISTS": lean_on}
    last = DisclosureLogEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0
    response = http.get(path, params)
    rows = list(
        DisclosureLogEntry.objects.filter(id__gt=last)
        .order_by("id")
        .values_list("endpoint", "method", "query", "student_ids", "count")
    )
    headers = {k: v for k, v in response.headers.items() if k not in _VARYING}
    return response.status_code, response.content, headers, rows


@pytest.mark.parametrize("resource", [r.name for r in RESOURCES])
def test_every_list_gives_the_drf_answer_byte_for_byte(resource, north, system, settings):
    client, _ = make_client(north, system)
    http = api(token_for(client))
    path = f"/api/v1/{resource}"
    walks = [{"limit": 1}, {"limit": 2, "minChangeVersion": 0}]
    for params in walks:
        while params is not None:
            drf = _answer(settings, http, path, params, lean_on=False)
            fast = _answer(settings, http, path, params, lean_on=True)
            assert drf[0] == 200, drf[1]
            assert fast == drf
            nxt = json.loads(fast[1])["meta"]["next"]
            params = {"after": nxt, "limit": params["limit"]} if nxt else None


def test_filters_and_writable_lists_too(north, system, settings):
    client, _ = make_client(north, system, scope_list=[*ALL_READ, scopes.BEHAVIOR_WRITE])
    http = api(token_for(client))
    for path, params in (
        ("/api/v1/enrollments", {"schoolId": north.school_a.pk, "limit": 5}),
        ("/api/v1/incidents", {"limit": 5}),  # Allow: GET, POST, HEAD, OPTIONS
        ("/api/v1/behaviorSupportRequests", {"limit": 5}),
    ):
        drf = _answer(settings, http, path, params, lean_on=False)
        assert drf[0] == 200, drf[1]
        assert _answer(settings, http, path, params, lean_on=True) == drf


def _request(token=None, *, query="", **extra):
    factory = RequestFactory()
    if token is not None:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {token.token}"
    request = factory.generic(extra.pop("method", "GET"), f"/api/v1/students?{query}", **extra)
    request.request_id = "test"
    return request


def _lean_answer(request):
    view = resolve("/api/v1/students").func
    students = next(r for r in RESOURCES if r.name == "students")
    return lean._answer(request, students, lean._allow(view), "format")


def test_a_plain_page_is_answered_by_the_lean_path(north, system):
    client, _ = make_client(north, system)
    token = token_for(client)
    response = _lean_answer(_request(token, query="limit=2"))
    assert response is not None and response.status_code == 200
    assert response["Allow"] == "GET, HEAD, OPTIONS"
    assert response["RateLimit-Limit"]
    assert _hits(client) == 1
    assert DisclosureLogEntry.objects.filter(client=client).count() == 1


def test_everything_else_is_handed_over_without_disclosing(north, system):
    client, _ = make_client(north, system)
    token = token_for(client)
    # Before the token is read: not counted here (the DRF view counts what it authenticates).
    not_read = {
        "no token": _request(),
        "the format parameter": _request(token, query="format=json"),
        "another media type": _request(token, HTTP_ACCEPT="text/html"),
        "an empty Accept header": _request(token, HTTP_ACCEPT=""),
        "HEAD": _request(token, method="HEAD"),
        "a malformed Authorization header": _request(HTTP_AUTHORIZATION="Bearer a b"),
    }
    for case, request in not_read.items():
        assert _lean_answer(request) is None, case
    assert _hits(client) == 0
    # After the token's statement counted the request: the count travels on the request.
    acting = token_for(client)
    acting.user = north.users["teacher"]  # a token acting for a person (authorization code)
    acting.save(update_fields=["user"])
    counted = {
        "a token acting for a person": _request(acting),
        "a token without the scope": _request(token_for(client, scope_list=[scopes.BEHAVIOR])),
        "a bad parameter": _request(token, query="limit=x"),
        "an unknown parameter": _request(token, query="colour=blue"),
        "a bad filter value": _request(token, query="schoolId=x"),
    }
    for n, (case, request) in enumerate(counted.items(), start=1):
        assert _lean_answer(request) is None, case
        assert throttling.rate_limit_state(request) is not None, case
        assert _hits(client) == n, case
    assert not DisclosureLogEntry.objects.filter(client=client).exists()


def test_an_expired_token_is_not_counted(north, system):
    from datetime import timedelta

    from django.utils import timezone

    client, _ = make_client(north, system)
    token = token_for(client)
    token.expires = timezone.now() - timedelta(seconds=1)
    token.save(update_fields=["expires"])
    response = api(token).get("/api/v1/students")
    assert response.status_code == 401 and "RateLimit-Limit" not in response
    assert _hits(client) == 0


def test_a_refused_or_bad_request_is_counted_once(north, system):
    client, _ = make_client(north, system)
    model_update(instance=client, actor=system, data={"rate_per_minute": 3})
    http = api(token_for(client))
    # Found after counting, answered by the DRF view with the lean path's count.
    response = http.get("/api/v1/enrollments", {"schoolId": "x"})
    assert response.status_code == 400 and response["RateLimit-Remaining"] == "2"
    assert _hits(client) == 1
    roster_less = api(token_for(client, scope_list=[scopes.BEHAVIOR]))
    response = roster_less.get("/api/v1/students")
    assert response.status_code == 403 and response["RateLimit-Remaining"] == "1"
    assert _hits(client) == 2
    assert http.get("/api/v1/students").status_code == 200
    assert _hits(client) == 3
    refused = http.get("/api/v1/students")
    assert refused.status_code == 429, refused.content
    assert refused["Retry-After"] and refused["RateLimit-Remaining"] == "0"
    assert refused["Content-Type"] == "application/problem+json"
    assert _hits(client) == 4
    assert DisclosureLogEntry.objects.filter(client=client).count() == 1


def test_a_district_rule_for_a_resource_counts_in_its_own_counter(north, system):
    from bxos.api.models import ThrottleRule

    client, _ = make_client(north, system)
    ThrottleRule.objects.create(
        district=north.district,
        name="Students slowly",
        client=client,
        endpoint_group="students",
        rate_per_minute=1,
        rate_per_hour=100,
    )
    http = api(token_for(client))
    assert http.get("/api/v1/students").status_code == 200
    refused = http.get("/api/v1/students")
    assert refused.status_code == 429 and "students" in refused.json()["detail"]
    assert http.get("/api/v1/schools").status_code == 200  # another group: its own counter
    assert _hits(client) == 3


def test_the_route_keeps_the_drf_view_for_schema_and_catalogue():
    match = resolve("/api/v1/students")
    assert match.func.cls.resource.name == "students"
    assert match.func.actions["get"] == "list"
    assert match.func.__wrapped__.cls is match.func.cls


def test_a_change_to_the_client_takes_effect_on_the_next_page(north, system):
    # The lean path reuses the instances built from a token's row while the row is the same
    # (bxos.api.authentication._reused): every change below must still show at once.
    from bxos.api.models import FieldProfile

    profile = FieldProfile.objects.create(
        district=north.district, name="names", fields={"students": ["firstName"]}
    )
    client, _ = make_client(north, system, profile=profile)
    http = api(token_for(client))

    def students():
        response = http.get("/api/v1/students", {"limit": 1000})
        assert response.status_code == 200, response.content
        return response.json()["data"]

    assert set(students()[0]) == {"id", "changeVersion", "firstName"}
    assert set(students()[0]) == {"id", "changeVersion", "firstName"}  # reused
    model_update(
        instance=profile, actor=system, data={"fields": {"students": ["lastName", "gradeLevel"]}}
    )
    assert set(students()[0]) == {"id", "changeVersion", "lastName", "gradeLevel"}
    everyone = {row["id"] for row in students()}
    client.allowed_schools.set([north.school_a])
    only_a = {row["id"] for row in students()}
    assert only_a and only_a < everyone
    model_update(instance=client, actor=system, data={"scopes": [scopes.BEHAVIOR]})
    assert http.get("/api/v1/students").status_code == 403
