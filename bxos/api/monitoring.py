"""API monitoring: each request of an API client adds to its minute's row (ApiRequestStat).

A middleware, so that every API response is counted, errors and 429s included, with the
time the whole stack took. One INSERT ... ON CONFLICT per request; percentiles come from the
latency histogram when read.
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, connection
from django.utils import timezone

from bxos.api.models import LATENCY_BUCKETS_MS, ApiClient, ApiRequestStat

logger = logging.getLogger(__name__)

_UPSERT = """
INSERT INTO api_apirequeststat
    (client_id, district_id, endpoint, minute, count, errors, server_errors, total_ms, buckets)
VALUES (%s, %s, %s, date_trunc('minute', now()), 1, %s, %s, %s, %s)
ON CONFLICT (client_id, endpoint, minute) DO UPDATE SET
    count = api_apirequeststat.count + 1,
    errors = api_apirequeststat.errors + EXCLUDED.errors,
    server_errors = api_apirequeststat.server_errors + EXCLUDED.server_errors,
    total_ms = api_apirequeststat.total_ms + EXCLUDED.total_ms,
    buckets[%s] = api_apirequeststat.buckets[%s] + 1
"""


def record_request(*, client: ApiClient, endpoint: str, status: int, elapsed_ms: float) -> None:
    bucket = bisect.bisect_left(LATENCY_BUCKETS_MS, elapsed_ms)  # 0-based
    initial = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    initial[bucket] = 1
    with connection.cursor() as cursor:
        cursor.execute(
            _UPSERT,
            [
                client.pk,
                client.district_id,
                endpoint[:100],
                int(status >= 400),
                int(status >= 500),
                elapsed_ms,
                initial,
                bucket + 1,
                bucket + 1,
            ],
        )


class ApiMonitoringMiddleware:
    """Counts the requests of authenticated API clients under /api/."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith(("/api/v", "/api/graphql/")):
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        client = getattr(request, "user", None)
        if isinstance(client, ApiClient):
            match = getattr(request, "resolver_match", None)
            endpoint = match.url_name if match and match.url_name else "other"
            try:
                record_request(
                    client=client,
                    endpoint=endpoint,
                    status=response.status_code,
                    elapsed_ms=(time.perf_counter() - started) * 1000,
                )
            except DatabaseError:  # monitoring must never fail a request
                logger.exception("could not record API request statistics")
        return response


@dataclass
class StatSummary:
    endpoint: str
    count: int
    errors: int
    p50_ms: float
    p95_ms: float
    mean_ms: float


def _percentile(buckets: list[int], fraction: float) -> float:
    total = sum(buckets)
    if not total:
        return 0.0
    rank, seen = fraction * total, 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return float(LATENCY_BUCKETS_MS[i]) if i < len(LATENCY_BUCKETS_MS) else float("inf")
    return float("inf")


def stats_summary(*, client: ApiClient, since=None) -> list[StatSummary]:
    """Per endpoint over the period (default: the last day). Percentiles are bucket bounds."""
    since = since or timezone.now() - timedelta(days=1)
    rows = ApiRequestStat.objects.filter(client=client, minute__gte=since)
    per_endpoint: dict[str, list] = {}
    for endpoint, count, errors, total_ms, buckets in rows.values_list(
        "endpoint", "count", "errors", "total_ms", "buckets"
    ):
        agg = per_endpoint.setdefault(endpoint, [0, 0, 0.0, [0] * len(buckets)])
        agg[0] += count
        agg[1] += errors
        agg[2] += total_ms
        agg[3] = [a + b for a, b in zip(agg[3], buckets, strict=True)]
    return [
        StatSummary(endpoint, c, e, _percentile(b, 0.5), _percentile(b, 0.95), t / c if c else 0)
        for endpoint, (c, e, t, b) in sorted(per_endpoint.items())
    ]
