"""API JSON is rendered with orjson, the same bytes DRF's encoder would give."""

from datetime import UTC, date, datetime
from decimal import Decimal

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
