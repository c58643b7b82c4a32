"""List pages compiled once per shape (bxos.api.pages): a constant number of queries per page,
the gate's inputs part of every shape, and the disclosure row written by the page's statement.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bxos.api import pages
from bxos.api.models import DisclosureLogEntry
from bxos.schools.models import Student
from tests.bxos.api.test_api_read import api, make_client, token_for


@pytest.fixture(autouse=True)
def no_shapes():
    pages.clear_statements()
    yield
    pages.clear_statements()


def _queries(http, path, params) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as queries:
        response = http.get(path, params)
    assert response.status_code == 200, response.json()
    return len(queries.captured_queries), response.json()


def test_every_page_costs_the_same_two_queries(north, system, settings):
    # With the rule cache warm and monitoring counts written in the background (every 2 s in
    # production), each page is the token (with its client, counting the request in the
    # client's rate counters) and the page with its disclosure row: two round trips, whatever
    # the page size, the depth, the window or whether the shape was seen before.
    settings.API = {
        **settings.API,
        "THROTTLE_RULES_TTL_SECONDS": 3600,
        "MONITORING_FLUSH_SECONDS": 3600,
    }
    http = api(token_for(make_client(north, system)[0]))
    http.get("/api/v1/students")
    first_pages = (
        {"limit": 1},
        {"limit": 1000},
        {"limit": 1},
        # A window's upper bound given: the page needs no safe-horizon read of its own.
        {"minChangeVersion": 0, "maxChangeVersion": 10**9, "limit": 1},
        {"minChangeVersion": 0, "maxChangeVersion": 10**9, "limit": 1},
    )
    counts = []
    for params in first_pages:
        count, body = _queries(http, "/api/v1/students", params)
        counts.append(count)
        cursor = body["meta"]["next"]
        while cursor:  # every later page of the walk, too
            count, body = _queries(http, "/api/v1/students", {"after": cursor, "limit": 1})
            counts.append(count)
            cursor = body["meta"]["next"]
    assert len(counts) == 3 + 1 + 3 + 3 + 3 and set(counts) == {2}, counts


def test_a_reused_shape_still_walks_every_row_once(north, system):
    http = api(token_for(make_client(north, system)[0]))
    expected = list(
        Student.objects.filter(district=north.district).order_by("id").values_list("id", flat=True)
    )
    for _ in range(2):  # the second walk runs on the shapes the first one compiled
        seen, params = [], {"limit": 1}
        while params:
            body = http.get("/api/v1/students", params).json()
            seen += [row["id"] for row in body["data"]]
            params = {"after": body["meta"]["next"]} if body["meta"]["next"] else None
        assert seen == expected
    # Two shapes served both walks: the first page, and a page after a cursor.
    assert len(pages._shapes) == 2


def test_two_clients_with_the_same_shape_never_share_their_gate(north, south, system):
    only_a, _ = make_client(north, system, schools=[north.school_a])
    only_b, _ = make_client(north, system, schools=[north.school_b])
    southern, _ = make_client(south, system)
    seen = {}
    for name, client in (("a", only_a), ("b", only_b), ("south", southern), ("a again", only_a)):
        body = api(token_for(client)).get("/api/v1/enrollments", {"limit": 1000}).json()
        seen[name] = {row["studentId"] for row in body["data"]}
    assert seen["a"] == {north.a1.pk, north.a2.pk} == seen["a again"]
    assert seen["b"] == {north.b1.pk}
    assert seen["south"] == {s.pk for s in south.students}


def test_a_change_of_allowed_schools_applies_to_the_next_page(north, system):
    client, _ = make_client(north, system, schools=[north.school_a])
    http = api(token_for(client))

    def students() -> set[int]:
        return {row["studentId"] for row in http.get("/api/v1/enrollments").json()["data"]}

    assert students() == {north.a1.pk, north.a2.pk}
    client.allowed_schools.set([north.school_b])
    assert students() == {north.b1.pk}


def test_the_disclosure_row_names_exactly_the_rows_sent(north, system):
    client, _ = make_client(north, system)
    http = api(token_for(client))
    ids = list(
        Student.objects.filter(district=north.district).order_by("id").values_list("id", flat=True)
    )
    first = http.get("/api/v1/students", {"limit": 2}).json()
    second = http.get("/api/v1/students", {"after": first["meta"]["next"]}).json()
    assert [row["id"] for row in first["data"] + second["data"]] == ids
    rows = list(DisclosureLogEntry.objects.filter(client=client).order_by("id"))
    # The page read one row more than it sent (to know there is a next page): not disclosed.
    assert [(r.student_ids, r.count) for r in rows] == [(ids[:2], 2), (ids[2:], len(ids) - 2)]
    assert rows[1].query == f"after={first['meta']['next']}"
    # A page with no rows sends nobody's data: no row.
    http.get("/api/v1/students", {"minChangeVersion": 10**12})
    assert DisclosureLogEntry.objects.filter(client=client).count() == 2
