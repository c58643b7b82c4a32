"""API monitoring: each request of an API client adds to its minute's row (ApiRequestStat).

A middleware, so that every API response is counted, errors and 429s included, with the
time the whole stack took. Each process adds requests up in memory and writes them every
``API["MONITORING_FLUSH_SECONDS"]`` (2 s; 0 writes at once) with one INSERT ... ON CONFLICT
per client, endpoint and minute: a database round trip per request would cost the API a
fifth of its throughput (docs/benchmarks.md, B3). A crash loses at most those seconds of
counts, never a request. Percentiles come from the latency histogram when read.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from bxos.api.models import LATENCY_BUCKETS_MS, ApiClient, ApiRequestStat

logger = logging.getLogger(__name__)

_UPSERT = """
INSERT INTO api_apirequeststat
    (client_id, district_id, endpoint, minute, count, errors, server_errors, total_ms, buckets)
SELECT %(client)s, %(district)s, %(endpoint)s, %(minute)s, %(count)s, %(errors)s,
       %(server_errors)s, %(total_ms)s, %(buckets)s
WHERE EXISTS (SELECT 1 FROM api_apiclient WHERE id = %(client)s)  -- deleted since: dropped
ON CONFLICT (client_id, endpoint, minute) DO UPDATE SET
    count = api_apirequeststat.count + EXCLUDED.count,
    errors = api_apirequeststat.errors + EXCLUDED.errors,
    server_errors = api_apirequeststat.server_errors + EXCLUDED.server_errors,
    total_ms = api_apirequeststat.total_ms + EXCLUDED.total_ms,
    buckets = ARRAY(
        SELECT a + b FROM unnest(api_apirequeststat.buckets, EXCLUDED.buckets)
            WITH ORDINALITY AS u(a, b, i)
        ORDER BY i)
"""

# (client id, district id, endpoint, minute) -> [count, errors, server errors, total ms, buckets]
_pending: dict[tuple[int, int, str, datetime], list] = {}
_lock = threading.Lock()
_last_flush = time.monotonic()


def _flush_seconds() -> float:
    return float(settings.API.get("MONITORING_FLUSH_SECONDS", 2))


def record_request(*, client: ApiClient, endpoint: str, status: int, elapsed_ms: float) -> None:
    """Count one request; written with the others of this process every few seconds."""
    bucket = bisect.bisect_left(LATENCY_BUCKETS_MS, elapsed_ms)  # 0-based
    minute = timezone.now().replace(second=0, microsecond=0)
    key = (client.pk, client.district_id, endpoint[:100], minute)
    with _lock:
        row = _pending.get(key)
        if row is None:
            row = _pending[key] = [0, 0, 0, 0.0, [0] * (len(LATENCY_BUCKETS_MS) + 1)]
        row[0] += 1
        row[1] += int(status >= 400)
        row[2] += int(status >= 500)
        row[3] += elapsed_ms
        row[4][bucket] += 1
    if time.monotonic() - _last_flush >= _flush_seconds():
        flush()


def flush(*, quiet: bool = False) -> None:
    """Write the counts this process holds (one upsert per client, endpoint and minute)."""
    global _last_flush
    with _lock:
        rows = list(_pending.items())
        _pending.clear()
        _last_flush = time.monotonic()
    if not rows:
        return
    params = [
        {
            "client": client,
            "district": district,
            "endpoint": endpoint,
            "minute": minute,
            "count": count,
            "errors": errors,
            "server_errors": server_errors,
            "total_ms": total_ms,
            "buckets": buckets,
        }
        for (client, district, endpoint, minute), (
            count,
            errors,
            server_errors,
            total_ms,
            buckets,
        ) in rows
    ]
    try:
        # A savepoint when called inside a transaction: a failure here must not break it.
        with transaction.atomic(), connection.cursor() as cursor:
            for row in params:  # a handful of rows; no pipeline to abort at exit
                cursor.execute(_UPSERT, row)
    except Exception:  # monitoring must never fail a request (nor a process's exit)
        if not quiet:
            logger.exception("could not record API request statistics")


atexit.register(flush, quiet=True)


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
            record_request(
                client=client,
                endpoint=endpoint,
                status=response.status_code,
                elapsed_ms=(time.perf_counter() - started) * 1000,
            )
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
    flush()  # this process's latest counts too
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
