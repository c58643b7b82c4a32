"""API requests are aggregated per minute per client and endpoint, and shown to admins."""

import pytest
from django.urls import reverse

from bxos.api.models import ApiRequestStat
from bxos.api.monitoring import _percentile, stats_summary
from tests.bxos.api.test_api_read import api, make_client, token_for


@pytest.fixture(autouse=True)
def _write_at_once(settings):
    # Production adds requests up for a couple of seconds; these tests read the table at once.
    settings.API = {**settings.API, "MONITORING_FLUSH_SECONDS": 0}


def test_requests_are_counted_per_endpoint_with_errors(north, system):
    client, _ = make_client(north, system)
    http = api(token_for(client))
    for _ in range(3):
        assert http.get("/api/v1/students").status_code == 200
    assert http.get("/api/v1/students", {"limit": "x"}).status_code == 400
    assert http.get(f"/api/v1/students/{north.a1.pk}").status_code == 200
    rows = {r.endpoint: r for r in ApiRequestStat.objects.filter(client=client)}
    assert set(rows) == {"students-list", "students-detail"}
    assert (rows["students-list"].count, rows["students-list"].errors) == (4, 1)
    assert sum(rows["students-list"].buckets) == 4
    summary = {s.endpoint: s for s in stats_summary(client=client)}
    assert summary["students-list"].count == 4 and summary["students-list"].p95_ms > 0


def test_unauthenticated_requests_are_not_attributed(north, system):
    from rest_framework.test import APIClient

    APIClient().get("/api/v1/students")
    assert not ApiRequestStat.objects.exists()


def test_percentiles_from_the_histogram():
    buckets = [0] * 16
    buckets[0], buckets[5] = 90, 10  # 90 requests under 5 ms, 10 under 75 ms
    assert _percentile(buckets, 0.5) == 5
    assert _percentile(buckets, 0.95) == 75


def test_client_page_shows_the_last_day(north, system, client):
    api_client, _ = make_client(north, system)
    api(token_for(api_client)).get("/api/v1/schools")
    client.force_login(north.users["district_admin"])
    page = client.get(reverse("admin:api_apiclient_change", args=[api_client.pk]))
    html = page.content.decode()
    assert "schools-list" in html and "requests, last 24 hours" in html.lower()


def test_counts_held_in_memory_are_added_to_the_same_row(north, system, settings):
    from bxos.api.monitoring import flush

    settings.API = {**settings.API, "MONITORING_FLUSH_SECONDS": 3600}
    client, _ = make_client(north, system)
    http = api(token_for(client))
    for _ in range(3):
        http.get("/api/v1/schools")
    assert not ApiRequestStat.objects.filter(client=client).exists()  # not yet written
    flush()
    for _ in range(2):
        http.get("/api/v1/schools")
    flush()
    row = ApiRequestStat.objects.get(client=client, endpoint="schools-list")
    assert row.count == 5 and sum(row.buckets) == 5
