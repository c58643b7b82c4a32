"""API JSON is rendered with orjson, the same bytes DRF's encoder would give."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from rest_framework.renderers import JSONRenderer

from bxos.api.renderers import OrjsonRenderer


def test_same_output_as_drf_for_api_values():
    data = {
        "at": datetime(2026, 11, 24, 7, 30, 5, 123456, tzinfo=UTC),
        "day": date(2026, 11, 24),
        "pct": Decimal("92.5"),
        "ids": (1, 2, 3),
        "name": "Zoë",
    }
    assert OrjsonRenderer().render(data) == JSONRenderer().render(data)


def test_what_orjson_refuses_is_still_rendered():
    # An integer beyond 64 bits, echoed back from a bad parameter, must not become a 500.
    assert OrjsonRenderer().render({"n": 2**70}) == b'{"n":1180591620717411303424}'


@pytest.mark.parametrize(
    "accept, status",
    [
        (None, 200),
        ("*/*", 200),
        ("application/json", 200),
        ("application/json; indent=2", 200),
        ("text/html, application/json;q=0.9", 200),
        ("application/xml", 406),
        ("text/csv", 406),
    ],
)
def test_accept_headers_get_json_or_a_406(accept, status, north, system):
    from tests.bxos.api.test_api_read import api, make_client, token_for

    http = api(token_for(make_client(north, system)[0]))
    extra = {"HTTP_ACCEPT": accept} if accept is not None else {}
    response = http.get("/api/v1/schools", **extra)
    assert response.status_code == status, response.content
    if status == 200:
        assert response["Content-Type"].startswith("application/json")
        assert response.json()["data"]
    else:
        assert response["Content-Type"] == "application/problem+json"
        assert response.json()["type"] == "urn:bxos:problem:not-acceptable"
