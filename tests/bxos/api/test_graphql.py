"""GraphQL (/api/graphql/): the same gate, scopes, field profiles, paging and disclosure log as
REST, limits on what one request may ask, and never a 500.

The matrix: every top-level field (a list and a single object per resource) for clients with
and without each scope, in the token or in the client, for ids of their own district and of
another, and (against REST, which must agree) for a client limited to some schools and for a
client acting for each staff role.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from oauth2_provider.models import AccessToken
from oauthlib.common import generate_token
from rest_framework.test import APIClient

from bxos.api.catalogue import sync_catalogue
from bxos.api.graphql.relations import RELATIONS
from bxos.api.graphql.schema import single_field_name
from bxos.api.models import ApiEndpoint, ApiRequestStat, DisclosureLogEntry, FieldProfile
from bxos.api.monitoring import flush
from bxos.api.resources import BY_NAME, RESOURCES
from bxos.api.services import api_client_revoke
from bxos.api.throttling import clear_rules_cache
from bxos.common.services import model_create, model_update
from bxos.schools.models import Student
from tests.bxos.api.test_api_read import ALL_READ, api, make_client, token_for
from tests.bxos.api.test_throttling import RATE_HEADERS, rule, vendor

URL = "/api/graphql/"
ROLES = ["district_admin", "school_admin", "counselor", "teacher"]


def post(http: APIClient, query: str, variables: dict | None = None, **extra):
    body = {"query": query, **extra}
    if variables is not None:
        body["variables"] = variables
    return http.post(URL, body, format="json")


def gql(http: APIClient, query: str, variables: dict | None = None, **extra) -> dict:
    """The GraphQL answer to ``query``: always a 200 with a JSON body."""
    response = post(http, query, variables, **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    return response.json()


def errors_by_code(body: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for error in body.get("errors", []):
        found.setdefault(error["extensions"]["code"], []).append(error)
    return found


def own_ids(resource, world) -> list[int]:
    return list(
        resource.model.objects.filter(district=world.district)
        .order_by("id")
        .values_list("id", flat=True)
    )


def listed(body: dict, field: str) -> set[int]:
    return {row["id"] for row in body["data"][field]["items"]}


def rest_ids(http: APIClient, resource) -> set[int]:
    response = http.get(f"/api/v1/{resource.name}", {"limit": 1000})
    assert response.status_code == 200, response.json()
    return {row["id"] for row in response.json()["data"]}


def other_scope_resource(resource):
    """A resource under another scope: the part of a query that must still resolve."""
    return next(r for r in RESOURCES if r.scope != resource.scope)


def acting_token(client, user):
    """A token as the authorization code grant issues it: for the client, carrying a person."""
    return AccessToken.objects.create(
        application=client.application,
        user=user,
        token=generate_token(),
        expires=timezone.now() + timedelta(hours=1),
        scope=" ".join(client.scopes),
    )


# --- authentication: the API's own, before GraphQL runs ---------------------------------------


@pytest.mark.parametrize("case", ["no token", "unknown token", "expired", "revoked client"])
def test_without_a_valid_token_it_is_a_401_problem(case, north, system):
    client, _ = make_client(north, system)
    http = APIClient()
    if case == "unknown token":
        http.credentials(HTTP_AUTHORIZATION="Bearer nonsense")
    elif case == "expired":
        token = token_for(client)
        token.expires = timezone.now() - timedelta(minutes=1)
        token.save()
        http = api(token)
    elif case == "revoked client":
        token = token_for(client)
        api_client_revoke(actor=system, client=client)
        http = api(token)
    for response in (
        post(http, "{ schools { items { id } } }"),
        http.get(URL, {"query": "{ schools { items { id } } }"}),
    ):
        assert response.status_code == 401
        assert response["Content-Type"] == "application/problem+json"
        assert response.json()["type"] == "urn:bxos:problem:unauthenticated"
        assert not any(name in response for name in RATE_HEADERS)
    assert not DisclosureLogEntry.objects.filter(client=client).exists()


# --- the matrix: every top-level field x scope x tenant ---------------------------------------


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.name)
def test_every_top_level_field_keeps_to_the_district(resource, north, south, system):
    http = api(token_for(make_client(north, system)[0]))
    single = single_field_name(resource)
    mine = own_ids(resource, north)
    theirs = own_ids(resource, south)[0]
    body = gql(
        http,
        f"""{{ all: {resource.name}(first: 1000) {{ items {{ id }} pageInfo {{ hasNextPage }} }}
              mine: {single}(id: {mine[0]}) {{ id changeVersion }}
              theirs: {single}(id: {theirs}) {{ id }}
              missing: {single}(id: "999999999") {{ id }} }}""",
    )
    assert listed(body, "all") == set(mine) and mine
    assert body["data"]["all"]["pageInfo"] == {"hasNextPage": False}
    assert body["data"]["mine"]["id"] == mine[0]
    # Another district's id is exactly as absent as an id that does not exist.
    assert body["data"]["theirs"] is None and body["data"]["missing"] is None
    not_found = errors_by_code(body)["NOT_FOUND"]
    assert [e["path"] for e in not_found] == [["theirs"], ["missing"]]
    assert not_found[0]["message"] == f"No {resource.name} record with id {theirs}."
    assert set(errors_by_code(body)) == {"NOT_FOUND"}


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.name)
@pytest.mark.parametrize("missing_from", ["client", "token"])
def test_every_top_level_field_needs_its_scope(resource, missing_from, north, system):
    others = [s for s in ALL_READ if s != resource.scope]
    if missing_from == "client":
        token = token_for(make_client(north, system, scope_list=others)[0])
    else:  # the client holds it; the token was issued without it
        token = token_for(make_client(north, system)[0], scope_list=others)
    other = other_scope_resource(resource)
    body = gql(
        api(token),
        f"""{{ all: {resource.name} {{ items {{ id }} }}
              one: {single_field_name(resource)}(id: {own_ids(resource, north)[0]}) {{ id }}
              other: {other.name} {{ items {{ id }} }} }}""",
    )
    assert body["data"]["all"] is None and body["data"]["one"] is None
    forbidden = errors_by_code(body)["FORBIDDEN"]
    assert [e["path"] for e in forbidden] == [["all"], ["one"]]
    for error in forbidden:
        assert error["message"] == f"The scope {resource.scope} is needed to read {resource.name}."
        assert error["extensions"]["scope"] == resource.scope
    # The rest of the query still resolves.
    assert listed(body, "other") == set(own_ids(other, north))


@pytest.mark.parametrize("role", [None, *ROLES])
@pytest.mark.parametrize("schools", ["all", "school B"])
def test_graphql_sees_what_rest_sees(role, schools, north, system):
    """For a client limited to some schools, and acting for each staff role: every list and
    every single object shows exactly the rows the REST API shows the same token."""
    client, _ = make_client(north, system, schools=[north.school_b] if schools != "all" else [])
    token = acting_token(client, north.users[role]) if role else token_for(client)
    http = api(token)
    expected = {resource.name: rest_ids(http, resource) for resource in RESOURCES}
    if schools != "all" and role is None:
        assert expected["students"] == {north.b1.pk}
    lists = " ".join(f"{r.name}(first: 1000) {{ items {{ id }} }}" for r in RESOURCES)
    body = gql(http, f"{{ {lists} }}")
    assert "errors" not in body, body["errors"]
    for resource in RESOURCES:
        assert listed(body, resource.name) == expected[resource.name], resource.name
    # A row of the district the token may not see is not found, like another district's.
    singles, hidden = [], {}
    for resource in RESOURCES:
        unseen = [pk for pk in own_ids(resource, north) if pk not in expected[resource.name]]
        if unseen:
            hidden[resource.name] = unseen[0]
            singles.append(
                f"{resource.name}: {single_field_name(resource)}(id: {unseen[0]}) {{ id }}"
            )
    if singles:
        body = gql(http, f"{{ {' '.join(singles)} }}")
        assert body["data"] == dict.fromkeys(hidden)
        assert {e["path"][0] for e in errors_by_code(body)["NOT_FOUND"]} == set(hidden)


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.name)
def test_records_have_the_fields_and_values_of_rest(resource, north, system):
    http = api(token_for(make_client(north, system)[0]))
    pk = own_ids(resource, north)[0]
    rest = http.get(f"/api/v1/{resource.name}/{pk}").json()["data"]
    single = single_field_name(resource)
    body = gql(http, f"{{ {single}(id: {pk}) {{ {' '.join(resource.fields)} }} }}")
    assert body["data"][single] == rest
    type_name = resource.model.__name__
    fields = gql(http, f'{{ __type(name: "{type_name}") {{ fields {{ name }} }} }}')
    names = {f["name"] for f in fields["data"]["__type"]["fields"]}
    relations = {r.name for r in RELATIONS if r.parent == resource.name}
    assert names == set(resource.fields) | relations


def test_fragments_aliases_and_introspection(north, system):
    """What is asked for through fragments and aliases is read; the full introspection query
    (as GraphQL tools send it) passes every limit."""
    from graphql import get_introspection_query

    http = api(token_for(make_client(north, system)[0]))
    body = gql(
        http,
        f"""query {{ students(first: 1) {{ ...Page }}
                     one: student(id: {north.b1.pk}) {{ ... on Student {{ name: firstName }} }} }}
            fragment Page on StudentPage {{ items {{ ...Names incidents {{ level }} }} }}
            fragment Names on Student {{ firstName family: lastName }}""",
    )
    assert "errors" not in body, body
    assert body["data"]["students"]["items"] == [
        {"firstName": "Ava", "family": north.a1.last_name, "incidents": [{"level": "major"}]}
    ]
    assert body["data"]["one"] == {"name": "Cal"}
    body = gql(http, get_introspection_query(descriptions=True))
    assert "errors" not in body
    types = {t["name"] for t in body["data"]["__schema"]["types"]}
    assert {r.model.__name__ for r in RESOURCES} <= types


# --- nested relations -------------------------------------------------------------------------


def test_nested_relations_read_what_the_gate_lets_through(north, system):
    client, _ = make_client(north, system, schools=[north.school_b])
    body = gql(
        api(token_for(client)),
        """{ students { items { id enrollments(first: 5) { schoolId school { id } }
                                incidents(first: 5) { id student { id } }
                                behaviorSupportRequests(first: 5) { id }
                                guardians(first: 5) { id }
                                guardianLinks(first: 5) { guardian { id } } } } }""",
    )
    assert "errors" not in body
    (b1,) = body["data"]["students"]["items"]
    assert b1["id"] == north.b1.pk
    assert b1["enrollments"] == [
        {"schoolId": north.school_b.pk, "school": {"id": north.school_b.pk}}
    ]
    assert b1["incidents"] == [
        {"id": north.incidents[north.b1.pk].pk, "student": {"id": north.b1.pk}}
    ]
    assert b1["behaviorSupportRequests"] == [{"id": north.bsrs[north.b1.pk].pk}]
    assert b1["guardians"] == [] and b1["guardianLinks"] == []
    # a1 has a guardian; a client of every school sees it through both relations.
    http = api(token_for(make_client(north, system)[0]))
    body = gql(
        http,
        f"{{ student(id: {north.a1.pk}) "
        "{ guardians { id } guardianLinks { guardian { id } } } }",
    )
    assert body["data"]["student"] == {
        "guardians": [{"id": north.guardian.pk}],
        "guardianLinks": [{"guardian": {"id": north.guardian.pk}}],
    }


def test_nested_lists_take_first_per_row(north, system):
    from bxos.schools.models import Guardian, StudentGuardian

    second = model_create(
        model=Guardian,
        actor=system,
        data={"district": north.district, "first_name": "Gus", "last_name": "Two"},
    )
    model_create(
        model=StudentGuardian,
        actor=system,
        data={
            "district": north.district,
            "student": north.a1,
            "guardian": second,
            "relationship": "father",
        },
    )
    http = api(token_for(make_client(north, system)[0]))
    query = """query($n: Int) { students { items { id
        guardianLinks(first: $n) { id } guardians(first: $n) { id } } } }"""

    def sizes(n: int) -> dict[int, tuple[int, int]]:
        items = gql(http, query, {"n": n})["data"]["students"]["items"]
        return {s["id"]: (len(s["guardianLinks"]), len(s["guardians"])) for s in items}

    assert sizes(5) == {north.a1.pk: (2, 2), north.a2.pk: (0, 0), north.b1.pk: (0, 0)}
    assert sizes(1) == {north.a1.pk: (1, 1), north.a2.pk: (0, 0), north.b1.pk: (0, 0)}
    body = gql(http, query, {"n": 0})
    assert errors_by_code(body)["BAD_USER_INPUT"][0]["extensions"]["argument"] == "first"


def test_a_nested_resource_needs_its_own_scope(north, system):
    client, _ = make_client(north, system, scope_list=["roster.readonly"])
    body = gql(
        api(token_for(client)),
        "{ students { items { id firstName incidents { id } enrollments { id } } } }",
    )
    items = body["data"]["students"]["items"]
    assert [s["id"] for s in items] == [s.pk for s in north.students]
    assert all(s["incidents"] is None and len(s["enrollments"]) == 1 for s in items)
    (forbidden,) = errors_by_code(body)["FORBIDDEN"]  # once for the list, not once per row
    assert forbidden["message"] == "The scope behavior.readonly is needed to read incidents."
    assert forbidden["path"] == ["students", "items", 0, "incidents"]


# --- field profiles ---------------------------------------------------------------------------


def test_field_profile_cuts_fields_names_them_and_never_reads_them(north, system):
    profile = FieldProfile.objects.create(
        district=north.district, name="minimal", fields={"students": ["firstName"]}
    )
    http = api(token_for(make_client(north, system, profile=profile)[0]))
    with CaptureQueriesContext(connection) as queries:
        body = gql(http, "{ students { items { id changeVersion firstName lastName birthDate } } }")
    items = body["data"]["students"]["items"]
    assert [s["firstName"] for s in items] == ["Ava", "Ben", "Cal"]
    assert all(
        s["lastName"] is None and s["birthDate"] is None and s["changeVersion"] for s in items
    )
    cut = errors_by_code(body)["FIELD_NOT_ALLOWED"]
    assert len(body["errors"]) == len(cut) == 2  # once per field, not once per row
    assert {(e["extensions"]["resource"], e["extensions"]["field"]) for e in cut} == {
        ("students", "lastName"),
        ("students", "birthDate"),
    }
    assert cut[0]["message"] == (
        "The field lastName of students is not in this client's field profile."
    )
    reads = [q["sql"] for q in queries.captured_queries if '"schools_student"' in q["sql"]]
    assert reads and not any('"last_name"' in sql or '"birth_date"' in sql for sql in reads)
    # Other resources are whole.
    body = gql(http, f"{{ school(id: {north.school_a.pk}) {{ name ncesId }} }}")
    assert "errors" not in body and body["data"]["school"]["name"]


def test_a_relation_needs_the_fields_that_link_it(north, system):
    """A relation shows which rows belong together: only when the profile shows it too."""
    profile = FieldProfile.objects.create(
        district=north.district, name="no links", fields={"incidents": ["date"]}
    )
    http = api(token_for(make_client(north, system, profile=profile)[0]))
    body = gql(
        http,
        """{ students { items { id incidents { id } } }
             incidents { items { date student { id } } } }""",
    )
    assert all(s["incidents"] is None for s in body["data"]["students"]["items"])
    assert all(i["student"] is None and i["date"] for i in body["data"]["incidents"]["items"])
    messages = {e["message"] for e in errors_by_code(body)["FIELD_NOT_ALLOWED"]}
    assert messages == {
        "The field studentId of incidents is not in this client's field profile "
        "(students.incidents needs it).",
        "The field studentId of incidents is not in this client's field profile "
        "(incidents.student needs it).",
    }


# --- the disclosure log -----------------------------------------------------------------------


def disclosures(client) -> list[DisclosureLogEntry]:
    return list(DisclosureLogEntry.objects.filter(client=client).order_by("at", "id"))


def test_disclosure_rows_for_a_list_a_single_object_and_nested_rows(north, system):
    client, _ = make_client(north, system)
    http = api(token_for(client))
    first_two = sorted(
        Student.objects.filter(district=north.district).order_by("id").values_list("id", flat=True)
    )[:2]
    gql(http, "{ students(first: 2) { items { id } } }")  # reads 3 rows, sends 2
    gql(http, f"{{ incident(id: {north.incidents[north.b1.pk].pk}) {{ id }} }}")
    gql(http, f"{{ school(id: {north.school_b.pk}) {{ name }} }}")  # no student data: no row
    gql(
        http,
        f"{{ enrollments(schoolId: {north.school_a.pk}) "
        "{ items { student { firstName } } } }",
    )
    rows = disclosures(client)
    assert [r.student_ids for r in rows] == [first_two, [north.b1.pk], [north.a1.pk, north.a2.pk]]
    assert all(r.endpoint == URL and r.method == "POST" and r.purpose for r in rows)
    assert rows[0].count == 2
    assert rows[0].query == "{ students(first: 2) { items { id } } }"


def test_one_disclosure_row_per_request_with_every_student_anywhere_in_it(north, system):
    client, _ = make_client(north, system)
    query = f"""
        query Everything {{
          students(first: 1) {{ items {{ id incidents {{ id }} }} }}
          b: incident(id: {north.incidents[north.b1.pk].pk}) {{ id student {{ id }} }}
          schools {{ items {{ id }} }}
        }}"""
    gql(api(token_for(client)), query)
    (row,) = disclosures(client)
    assert row.student_ids == sorted({north.a1.pk, north.b1.pk})
    assert row.query.startswith("query Everything { students(first: 1)")


def test_no_disclosure_when_no_student_data_was_sent(north, system):
    client, _ = make_client(north, system, scope_list=["guardians.readonly"])
    http = api(token_for(client))
    gql(http, "{ students { items { id } } guardians { items { id } } }")  # students refused
    gql(http, "{ students { items { id } ")  # does not parse
    assert disclosures(client) == []


# --- limits -----------------------------------------------------------------------------------


def test_depth_limit(north, system, settings):
    settings.API = {**settings.API, "GRAPHQL_MAX_DEPTH": 3}
    client, _ = make_client(north, system)
    http = api(token_for(client))
    assert "errors" not in gql(http, "{ students { items { incidents { id } } } }")
    body = gql(http, "{ students { items { incidents { student { id } } } } }")
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"] == {"code": "DEPTH_LIMIT_EXCEEDED", "limit": 3}
    assert "maximum operation depth of 3" in error["message"]


def test_cost_limit_counts_first_along_nested_lists(north, system, settings):
    settings.API = {**settings.API, "GRAPHQL_MAX_COST": 1_000}
    client, _ = make_client(north, system)
    http = api(token_for(client))
    query = """query($n: Int, $m: Int) {
        students(first: $n) { items { enrollments(first: $m) { school { id } } } }
        schools { items { id } } }"""
    # 30 students + 30 x 10 enrollments + 30 x 10 schools + 100 schools
    body = gql(http, query, {"n": 30, "m": 10})
    assert "errors" not in body
    body = gql(http, query, {"n": 30, "m": 20})  # 30 + 600 + 600 + 100
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"] == {"code": "COST_LIMIT_EXCEEDED", "cost": 1330, "limit": 1000}
    assert "up to 1330 rows" in error["message"] and "limit is 1000" in error["message"]
    # `first` is capped at the largest page, in the cost as in the resolvers.
    body = gql(http, "{ students(first: 100000) { items { id } } school(id: 1) { id } }")
    assert body["errors"][0]["extensions"]["cost"] == settings.API["MAX_PAGE_SIZE"] + 1


def test_alias_and_token_limits(north, system, settings):
    settings.API = {**settings.API, "GRAPHQL_MAX_ALIASES": 2, "GRAPHQL_MAX_TOKENS": 50}
    http = api(token_for(make_client(north, system)[0]))
    body = gql(
        http,
        "{ a: schools { items { id } } b: schools { items { id } } c: schools { items { id } } }",
    )
    (error,) = body["errors"]
    assert error["message"] == "3 aliases found. Allowed: 2"
    assert error["extensions"] == {"code": "ALIAS_LIMIT_EXCEEDED", "limit": 2}
    body = gql(http, "{ schools { items { " + "id " * 60 + "} } }")
    (error,) = body["errors"]
    assert "more than 50 tokens" in error["message"]
    assert error["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"


def test_a_huge_query_is_refused_cheaply(north, system, settings):
    http = api(token_for(make_client(north, system)[0]))
    body = gql(http, "{ schools { items { " + "id " * 15_000 + "} } }")  # 45 kB, in the body limit
    (error,) = body["errors"]
    assert f"more than {settings.API['GRAPHQL_MAX_TOKENS']} tokens" in error["message"]
    assert body["data"] is None


def test_a_body_over_the_limit_is_a_413_problem(north, system, settings):
    settings.API = {**settings.API, "MAX_BODY_BYTES": 1000}
    http = api(token_for(make_client(north, system)[0]))
    response = post(http, "{ schools { items { id } } }" + " " * 2000)
    assert response.status_code == 413
    assert response["Content-Type"] == "application/problem+json"
    assert "1000" in response.json()["detail"]


# --- N+1 free ---------------------------------------------------------------------------------


def test_query_count_does_not_grow_with_page_size_or_nested_rows(north, system, settings):
    settings.API = {**settings.API, "THROTTLE_RULES_TTL_SECONDS": 0}  # same work every request
    http = api(token_for(make_client(north, system)[0]))
    nested = """query($n: Int) { students(first: $n) { items { id
        enrollments { id school { id } } incidents { id student { id } } guardians { id } } } }"""
    flat = "query($n: Int) { students(first: $n) { items { id } } }"

    def count(query: str, n: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            body = gql(http, query, {"n": n})
        assert "errors" not in body and len(body["data"]["students"]["items"]) == n
        return len(queries.captured_queries)

    assert count(nested, 1) == count(nested, 3)
    assert count(flat, 1) == count(flat, 3)
    # One query per relation and level: enrollments, their schools, incidents, their
    # students, and guardians (through the links: two).
    assert count(nested, 3) - count(flat, 3) == 6


# --- throttling ---------------------------------------------------------------------------------


@pytest.fixture
def _rules_read_every_request(settings):
    settings.API = {**settings.API, "THROTTLE_RULES_TTL_SECONDS": 0}
    clear_rules_cache()
    yield
    clear_rules_cache()


@pytest.mark.usefixtures("_rules_read_every_request")
def test_rate_limit_headers_and_429(north, system):
    http = api(token_for(vendor(north, system, per_minute=2, scope_list=["roster.readonly"])))
    first = post(http, "{ schools { items { id } } }")
    assert first.status_code == 200 and first["RateLimit-Remaining"] == "1"
    refused = post(http, "{ incidents { items { id } } }")  # a GraphQL error: headers all the same
    assert refused.status_code == 200 and "FORBIDDEN" in errors_by_code(refused.json())
    assert refused["RateLimit-Remaining"] == "0"
    response = post(http, "{ schools { items { id } } }")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    assert "2 requests per minute" in response.json()["detail"]
    assert response["Retry-After"] and all(name in response for name in RATE_HEADERS)


@pytest.mark.usefixtures("_rules_read_every_request")
def test_district_rules_for_a_resource_count_graphql_reads_of_it(north, system):
    rule(north, system, name="Incidents", endpoint_group="incidents", rate_per_minute=1)
    rule(north, system, name="Writes", endpoint_group="writes", rate_per_minute=1)
    http = api(token_for(vendor(north, system)))
    assert post(http, "{ incidents { items { id } } }").status_code == 200
    # Nested or at the top, reading incidents counts against the incidents rule.
    response = post(http, "{ students { items { incidents { id } } } }")
    assert response.status_code == 429
    assert "the district's limit for incidents" in response.json()["detail"]
    # Other resources are not limited by it, and a query sent by POST is not a write.
    assert post(http, "{ schools { items { id } } }").status_code == 200
    assert post(http, "{ students { items { id } } }").status_code == 200


# --- bad input: named, and never a 500 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ("not json", 400, "JSON parse error"),
        ("[1, 2]", 400, "must be a JSON object"),
        ('"{ schools { items { id } } }"', 400, "must be a JSON object"),
        ("{}", 400, "query"),
        ('{"query": 5}', 400, "query"),
        ('{"query": "{ schools { items { id } } }", "variables": [1]}', 400, "variables"),
        ('{"query": "{ schools { items { id } } }", "operationName": 3}', 400, "operationName"),
        ('{"query": "{ schools { items { id } } }", "colour": "blue"}', 400, "colour"),
    ],
)
def test_a_malformed_request_is_a_400_problem_naming_what_is_wrong(
    body, status, named, north, system
):
    http = api(token_for(make_client(north, system)[0]))
    response = http.generic("POST", URL, body, content_type="application/json")
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert named in response.json()["detail"]
    if body != "not json":  # authentication already reads the body, and stops at bad JSON
        assert "RateLimit-Remaining" in response  # counted like any request of the client


def test_only_json_bodies_are_accepted(north, system):
    http = api(token_for(make_client(north, system)[0]))
    response = http.post(URL, {"query": "{ schools { items { id } } }"})  # multipart
    assert response.status_code == 415
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("query", "variables", "code", "named"),
    [
        ("{ students { items { id ", None, "GRAPHQL_PARSE_FAILED", "Syntax Error"),
        ("{ students { items { id colour } } }", None, "GRAPHQL_VALIDATION_FAILED", "'colour'"),
        ("{ students(colour: 1) { items { id } } }", None, "GRAPHQL_VALIDATION_FAILED", "'colour'"),
        ("{ students { ...Rows } }", None, "GRAPHQL_VALIDATION_FAILED", "'Rows'"),
        ("{ students { items { id } } }\n{ schools { items { id } } }", None, None, "operation"),
        ("query Q($n: Int) { students(first: $n) { items { id } } }", {"n": "x"}, None, "'$n'"),
        ("{ students(first: 0) { items { id } } }", None, "BAD_USER_INPUT", "first"),
        (
            "{ students(minChangeVersion: 9, maxChangeVersion: 3) { items { id } } }",
            None,
            "BAD_USER_INPUT",
            "minChangeVersion",
        ),
        (
            "{ students(minChangeVersion: -1) { items { id } } }",
            None,
            "BAD_USER_INPUT",
            "minChangeVersion",
        ),
        ('{ students(after: "garbage") { items { id } } }', None, "BAD_USER_INPUT", "after"),
        ('{ student(id: "abc") { id } }', None, "BAD_USER_INPUT", "id"),
        ('{ enrollments(schoolId: "x") { items { id } } }', None, "BAD_USER_INPUT", "schoolId"),
        ('{ attendance(date: "2026-13-45") { items { id } } }', None, "BAD_USER_INPUT", "date"),
        (
            '{ students(gradeLevel: "1\\u0000") { items { id } } }',
            None,
            "BAD_USER_INPUT",
            "gradeLevel",
        ),
        (
            "{ students(maxChangeVersion: 99999999999999999999) { items { id } } }",
            None,
            None,
            "BigInt",
        ),
        ("mutation { students { items { id } } }", None, None, "mutation"),
    ],
)
def test_bad_documents_and_arguments_are_graphql_errors_naming_them(
    query, variables, code, named, north, system
):
    http = api(token_for(make_client(north, system)[0]))
    body = gql(http, query, variables)
    assert body["errors"], body
    error = body["errors"][0]
    assert named in error["message"], error
    if code:
        assert error["extensions"]["code"] == code
    if code == "BAD_USER_INPUT":
        assert error["extensions"]["argument"] == named


def test_huge_or_foreign_ids_and_cursors_are_not_found_or_refused(north, south, system):
    from bxos.api.paging import Page, encode_cursor

    http = api(token_for(make_client(north, system)[0]))
    body = gql(http, '{ student(id: "99999999999999999999999") { id } }')
    assert errors_by_code(body)["NOT_FOUND"]
    cursor = encode_cursor(
        (10**30,), Page(limit=1, capped=False, min_cv=None, max_cv=None, after=None)
    )
    body = gql(http, f'{{ students(after: "{cursor}") {{ items {{ id }} }} }}')
    assert body["data"]["students"]["items"] == []
    for student in (south.a1.pk, "9" * 30):
        body = gql(http, f'{{ enrollments(studentId: "{student}") {{ items {{ id }} }} }}')
        assert body["data"]["enrollments"]["items"] == []


def test_get_runs_queries(north, system):
    http = api(token_for(make_client(north, system)[0]))
    response = http.get(
        URL,
        {
            "query": "query S($id: ID!) { school(id: $id) { name } }",
            "variables": json.dumps({"id": north.school_a.pk}),
            "operationName": "S",
        },
    )
    assert response.status_code == 200
    assert response.json() == {"data": {"school": {"name": north.school_a.name}}}
    response = http.get(URL, {"query": "{ schools { items { id } } }", "variables": "{nope"})
    assert response.status_code == 400 and "variables" in response.json()["detail"]
    response = http.get(URL, {"query": "{ schools { items { id } } }", "colour": "blue"})
    assert response.status_code == 400 and "colour" in response.json()["detail"]


def test_unknown_operation_and_introspection(north, system):
    http = api(token_for(make_client(north, system)[0]))
    body = gql(http, "query A { schools { items { id } } }", operationName="B")
    assert body["data"] is None
    assert body["errors"][0]["message"] == 'The document has no operation named "B".'
    body = gql(http, "{ __schema { queryType { name } } }")
    assert body == {"data": {"__schema": {"queryType": {"name": "Query"}}}}


# --- paging -----------------------------------------------------------------------------------


def test_keyset_pages_walk_every_row_once(north, system):
    http = api(token_for(make_client(north, system)[0]))
    query = """query($after: String) { attendance(first: 2, after: $after) {
        items { id } pageInfo { hasNextPage endCursor } } }"""
    seen, after, more = [], None, True
    while more:
        page = gql(http, query, {"after": after})["data"]["attendance"]
        seen += [row["id"] for row in page["items"]]
        more, after = page["pageInfo"]["hasNextPage"], page["pageInfo"]["endCursor"]
    assert seen == own_ids(BY_NAME["attendance"], north)


def test_change_window_and_page_size_cap(north, system, settings):
    from bxos.common.db import current_change_version

    http = api(token_for(make_client(north, system)[0]))
    start = current_change_version()
    model_update(instance=north.a2, actor=system, data={"preferred_name": "Benny"})
    page = gql(
        http,
        "query($min: BigInt) { students(minChangeVersion: $min) { items { id changeVersion } "
        "pageInfo { minChangeVersion maxChangeVersion } } }",
        {"min": start + 1},
    )["data"]["students"]
    assert [row["id"] for row in page["items"]] == [north.a2.pk]
    assert page["pageInfo"]["minChangeVersion"] == start + 1
    assert page["pageInfo"]["maxChangeVersion"] >= page["items"][0]["changeVersion"]
    settings.API = {**settings.API, "MAX_PAGE_SIZE": 2}
    page = gql(http, "{ students(first: 50) { items { id } pageInfo { hasNextPage } } }")
    assert len(page["data"]["students"]["items"]) == 2
    assert page["data"]["students"]["pageInfo"]["hasNextPage"] is True


# --- catalogue and monitoring -----------------------------------------------------------------


def test_catalogue_and_monitoring_know_graphql(north, system):
    sync_catalogue()
    row = ApiEndpoint.objects.get(path=URL)
    assert (row.version, row.methods, row.name, row.write_scope) == (
        "v1",
        ["GET", "POST"],
        "graphql",
        "",
    )
    client, _ = make_client(north, system)
    gql(api(token_for(client)), "{ schools { items { id } } }")
    flush()  # each process writes its counts every few seconds; now, for the test
    assert ApiRequestStat.objects.get(client=client, endpoint="graphql").count == 1
