"""Rate limits of the vendor API: each client's own limits, district rules, temporary exceptions.

Which limits apply to a request (``effective_limits``)
------------------------------------------------------
- The client's own ``rate_per_minute`` / ``rate_per_hour``.
- Every active ``ThrottleRule`` of the client's district that matches the request: its client
  is empty or this client, its scope is empty or the scope the view requires, and its endpoint
  group is empty, the resource's name ("meta" for views that are not a resource), or "writes"
  for a method other than GET/HEAD/OPTIONS. A GraphQL request (always a read) matches as
  "meta" and as every resource its document names, with that resource's scope. A rule allows
  ``rate_per_minute + burst`` requests per minute and ``rate_per_hour`` per hour.
- A live ``ThrottleException`` of the client (``starts_at <= now < expires_at``) replaces all of
  the above, raising or lowering the limits; when several are live, the one that started last
  wins (the newest decision).

A request must be within every limit that applies, so the strictest one decides. Requests are
counted per *criteria*: the client's own limit and a rule with no scope or group share the
client's counter (so a new district-wide rule counts the requests already made this minute),
while a rule for "incidents" counts only the client's incidents requests (so it never refuses a
students request because of earlier students traffic). Rules with the same criteria share a
counter and the lowest quota applies.

The rules and exceptions of a client are cached in each process for
``API["THROTTLE_RULES_TTL_SECONDS"]`` (default 5): an admin's edit takes effect within seconds
without a query per request. The client's own limits are read with the client on every request
(authentication loads it), so they take effect at once.

Where requests are counted (``record_hits``)
--------------------------------------------
Fixed windows, the current minute and the current hour, counted in the UNLOGGED PostgreSQL table
``api_rate_counter`` (migration 0003). PostgreSQL, because it is the one store every web process
on every machine already shares, so limits hold across processes and hosts with no extra service
to run, and because ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` increments and reads every
counter of a request atomically in one round trip. Windows are cut on the database's clock, so
hosts with skewed clocks still agree. A Redis backend (INCR and EXPIRE in one pipeline) could
replace ``record_hits`` alone if the table ever became a bottleneck. A refused request still
counts; windows end at fixed times, so retrying early never extends the wait. Old windows are
deleted by the ``api.purge_rate_counters`` task (``purge_rate_counters``).

Headers (``RateLimitHeadersMixin``)
-----------------------------------
Every response to an authenticated client, errors and 429s included, carries the IETF draft's
``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` for the limit closest to
exhaustion, and ``RateLimit-Policy`` listing every limit that applied. A 429 is problem+json
(``urn:bxos:problem:rate-limited``) with ``Retry-After`` and a detail naming the limit. A 401
carries none: without a client there is no quota to report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.http import HttpResponseBase
from django.utils import timezone
from rest_framework.exceptions import Throttled
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from bxos.api.models import ApiClient, ThrottleException, ThrottleRule
from bxos.common.db import prepared_cursor

MINUTE = 60
HOUR = 3600
META_GROUP = "meta"
WRITES_GROUP = "writes"
DEFAULT_RULES_TTL_SECONDS = 5.0
# Hour windows end an hour after they start; the margin keeps the purge clear of live windows.
PURGE_AFTER_SECONDS = 2 * HOUR

_STATE_ATTR = "_bxos_rate_limit"
_CHECKED_ATTR = "_bxos_rate_checked"
# A bound, not a tuning knob: districts have tens of clients, but a process must not grow
# without limit if something ever cached by another key.
_CACHE_MAX_CLIENTS = 10_000


# --- which limits apply ------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """One quota: ``quota`` requests per ``window`` seconds, counted under ``subject``."""

    subject: str
    window: int
    quota: int
    source: str  # who set it, for the 429 detail ("this client's limit")

    @property
    def key(self) -> str:
        """The counter's key: the subject and the window length."""
        return f"{self.subject}/{self.window}"


@dataclass(frozen=True)
class _Rule:
    pk: int
    name: str
    client_specific: bool
    scope: str
    group: str
    per_minute: int
    per_hour: int
    burst: int


@dataclass(frozen=True)
class _Exception:
    pk: int
    starts_at: datetime
    expires_at: datetime
    per_minute: int
    per_hour: int


@dataclass(frozen=True)
class _ClientRules:
    rules: tuple[_Rule, ...]
    exceptions: tuple[_Exception, ...]


_cache: dict[int, tuple[float, _ClientRules]] = {}


def rules_ttl() -> float:
    """Seconds a process may use a client's rules and exceptions before reading them again."""
    api = getattr(settings, "API", {}) or {}
    return float(api.get("THROTTLE_RULES_TTL_SECONDS", DEFAULT_RULES_TTL_SECONDS))


def clear_rules_cache() -> None:
    """Forget every cached rule set in this process (the next request reads them again)."""
    _cache.clear()


def _load_rules(client: ApiClient) -> _ClientRules:
    rules = ThrottleRule.objects.filter(district_id=client.district_id, is_active=True).filter(
        Q(client__isnull=True) | Q(client_id=client.pk)
    )
    # Exceptions that start later are kept: within the cache's lifetime they may become live.
    exceptions = ThrottleException.objects.filter(
        district_id=client.district_id, client_id=client.pk, expires_at__gt=timezone.now()
    )
    return _ClientRules(
        rules=tuple(
            _Rule(pk, name, client_id is not None, scope, group, per_minute, per_hour, burst)
            for pk, name, client_id, scope, group, per_minute, per_hour, burst in (
                rules.values_list(
                    "pk",
                    "name",
                    "client_id",
                    "scope",
                    "endpoint_group",
                    "rate_per_minute",
                    "rate_per_hour",
                    "burst",
                )
            )
        ),
        exceptions=tuple(
            _Exception(*row)
            for row in exceptions.values_list(
                "pk", "starts_at", "expires_at", "rate_per_minute", "rate_per_hour"
            )
        ),
    )


def _client_rules(client: ApiClient) -> _ClientRules:
    ttl = rules_ttl()
    if ttl <= 0:
        return _load_rules(client)
    now = time.monotonic()
    cached = _cache.get(client.pk)
    if cached is not None and cached[0] > now:
        return cached[1]
    loaded = _load_rules(client)
    if len(_cache) >= _CACHE_MAX_CLIENTS:
        _cache.clear()
    _cache[client.pk] = (now + ttl, loaded)
    return loaded


def _live_exception(exceptions: Sequence[_Exception], now: datetime) -> _Exception | None:
    live = [e for e in exceptions if e.starts_at <= now < e.expires_at]
    return max(live, key=lambda e: (e.starts_at, e.pk), default=None)


_CLIENT = "client:"


def counter_subject(client_id: int, scope: str = "", group: str = "") -> str:
    """The counter a client's requests matching ``scope`` and ``group`` (empty: any) share."""
    parts = [f"{_CLIENT}{client_id}"]
    if scope:
        parts.append(f"scope:{scope}")
    if group:
        parts.append(f"group:{group}")
    return ":".join(parts)


def _rule_matches(rule: _Rule, *, scope: str | None, group: str, write: bool) -> bool:
    if rule.scope and rule.scope != scope:
        return False
    return not rule.group or rule.group == group or (rule.group == WRITES_GROUP and write)


def _rule_source(rule: _Rule) -> str:
    criteria = []
    if rule.group:
        criteria.append(rule.group)
    if rule.scope:
        criteria.append(f"scope {rule.scope}")
    # Rule names are the district's internal wording; a vendor is told what was limited.
    owner = "this client's" if rule.client_specific else "the district's"
    return f"{owner} limit" + (f" for {' in '.join(criteria)}" if criteria else "")


def effective_limits(
    client: ApiClient,
    *,
    scope: str | None,
    group: str,
    write: bool,
    now: datetime | None = None,
    also: Sequence[tuple[str | None, str]] = (),
) -> list[Limit]:
    """Every quota a request of ``client`` is counted against (see the module docstring).

    ``scope`` is the scope the view requires (None: none), ``group`` the resource name or
    "meta", ``write`` whether the method changes data. ``also``: more (scope, group) pairs the
    request counts as; a GraphQL query reading several resources is counted once against the
    limits of each, so a district's rule for a resource or a scope holds whichever way the
    data is asked for.
    """
    now = now or timezone.now()
    data = _client_rules(client)
    base = counter_subject(client.pk)
    exception = _live_exception(data.exceptions, now)
    if exception is not None:
        source = "this client's temporary limit"
        return [
            Limit(base, MINUTE, exception.per_minute, source),
            Limit(base, HOUR, exception.per_hour, source),
        ]
    own = "this client's limit"
    limits = {
        (base, MINUTE): Limit(base, MINUTE, client.rate_per_minute, own),
        (base, HOUR): Limit(base, HOUR, client.rate_per_hour, own),
    }
    targets = ((scope, group), *also)
    for rule in data.rules:
        if not any(_rule_matches(rule, scope=s, group=g, write=write) for s, g in targets):
            continue
        subject = counter_subject(client.pk, rule.scope, rule.group)
        source = _rule_source(rule)
        for window, quota in ((MINUTE, rule.per_minute + rule.burst), (HOUR, rule.per_hour)):
            current = limits.get((subject, window))
            if current is None or quota < current.quota:
                limits[(subject, window)] = Limit(subject, window, quota, source)
    return sorted(limits.values(), key=lambda limit: (limit.window, limit.subject))


def describe_limits(client: ApiClient) -> list[str]:
    """The limits of ``client`` as an admin should read them now, one line each."""
    data = _load_rules(client)  # not the cache: the admin page shows what is saved
    now = timezone.now()
    lines = []
    exception = _live_exception(data.exceptions, now)
    own = f"{client.rate_per_minute}/min, {client.rate_per_hour}/h: the client's own limits"
    if exception is not None:
        until = timezone.localtime(exception.expires_at)
        lines.append(
            f"{exception.per_minute}/min, {exception.per_hour}/h until {until:%Y-%m-%d %H:%M}: "
            "a temporary exception, which replaces every limit below"
        )
    lines.append(own)
    for rule in data.rules:
        where = []
        if rule.group:
            where.append(f"endpoint group {rule.group}")
        if rule.scope:
            where.append(f"scope {rule.scope}")
        burst = f" + {rule.burst} burst" if rule.burst else ""
        lines.append(
            f"{rule.per_minute}/min{burst}, {rule.per_hour}/h: rule “{rule.name}”"
            + (f" ({', '.join(where)})" if where else " (every endpoint)")
        )
    for upcoming in data.exceptions:
        if upcoming.starts_at > now:
            start = timezone.localtime(upcoming.starts_at)
            lines.append(
                f"{upcoming.per_minute}/min, {upcoming.per_hour}/h from {start:%Y-%m-%d %H:%M}: "
                "an upcoming temporary exception"
            )
    return lines


# --- counting ----------------------------------------------------------------------------------

# now() is the transaction's start: in autocommit (every API request) that is this statement,
# and inside a transaction every counter of it falls in the same windows.
_HIT_SQL = """
INSERT INTO api_rate_counter AS c (key, window_start, count)
SELECT v.key::text,
       to_timestamp((floor(extract(epoch FROM now()) / v.seconds) * v.seconds)::float8),
       1
FROM (VALUES {values}) AS v(key, seconds)
ON CONFLICT (key, window_start) DO UPDATE SET count = c.count + 1
RETURNING c.key, c.count,
          extract(epoch FROM c.window_start)::float8,
          extract(epoch FROM now())::float8
"""


def record_hits(counters: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, float]]:
    """Count one request against each ``(subject, window seconds)`` counter, atomically.

    Returns, per counter, the count in the current window (this request included) and the
    seconds until that window ends. One statement, one round trip, safe under concurrency.
    """
    # Sorted so that concurrent requests lock counter rows in one order (no deadlocks), and
    # deduplicated because ON CONFLICT may not update a row twice in one statement.
    ordered = sorted({(f"{subject}/{window}", int(window)) for subject, window in counters})
    if not ordered:
        return {}
    sql = _HIT_SQL.format(values=", ".join(["(%s::text, %s::integer)"] * len(ordered)))
    params: list[Any] = [item for pair in ordered for item in pair]
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return hits_from_rows(rows)


def hits_from_rows(rows) -> dict[tuple[str, int], tuple[int, float]]:
    """``(key, count, window start, now)`` rows (epoch seconds) as ``record_hits`` returns
    them: per ``(subject, window)``, the count and the seconds until the window ends."""
    result = {}
    for key, count, window_start, now in rows:
        subject, _, window = key.rpartition("/")
        result[(subject, int(window))] = (int(count), window_start + int(window) - now)
    return result


# Every request of a client counts in its own counter: its own limits, a live exception and a
# district rule with neither scope nor endpoint group all count there (effective_limits).
BASE_WINDOWS = (MINUTE, HOUR)


def base_hits_cte(*, token_checksum: str, client_filter: str) -> str:
    """A data-modifying CTE ``hits (key, count, start)`` counting one request in the own
    counters (``BASE_WINDOWS``) of the client holding the token whose checksum is the SQL
    expression ``token_checksum``, when ``client_filter`` (SQL over ``ht``, the token, and
    ``hc``, the client) holds. Lets the token's lookup count the request in the same round
    trip (bxos.api.lean); the keys and lock order are ``record_hits``'s."""
    windows = ", ".join(f"({window})" for window in BASE_WINDOWS)
    key = f"'{_CLIENT}' || hc.id || '/' || v.seconds"  # counter_subject(id) + "/" + window
    return (
        "hits AS (INSERT INTO api_rate_counter AS rc (key, window_start, count) "
        f"SELECT {key}, "
        "to_timestamp((floor(extract(epoch FROM now()) / v.seconds) * v.seconds)::float8), 1 "
        "FROM oauth2_provider_accesstoken ht "
        "JOIN api_apiclient hc ON hc.application_id = ht.application_id "
        f"CROSS JOIN (VALUES {windows}) AS v(seconds) "
        f"WHERE ht.token_checksum = {token_checksum} AND ({client_filter}) "
        "ORDER BY 1 "
        "ON CONFLICT (key, window_start) DO UPDATE SET count = rc.count + 1 "
        "RETURNING rc.key, rc.count, extract(epoch FROM rc.window_start)::float8 AS start)"
    )


def purge_rate_counters(older_than_seconds: int = PURGE_AFTER_SECONDS) -> int:
    """Delete counter windows that started more than ``older_than_seconds`` ago; how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM api_rate_counter WHERE window_start < now() - make_interval(secs => %s)",
            [older_than_seconds],
        )
        return cursor.rowcount


# --- the outcome of one request --------------------------------------------------------------


@dataclass(frozen=True)
class WindowState:
    """One limit after this request was counted against it."""

    limit: Limit
    count: int
    reset: float  # seconds until the window ends

    @property
    def remaining(self) -> int:
        return max(0, self.limit.quota - self.count)

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit.quota


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _window_name(window: int) -> str:
    return {MINUTE: "minute", HOUR: "hour"}.get(window, f"{window} seconds")


@dataclass(frozen=True)
class RateLimitState:
    """Every limit a request was counted against: the decision, headers and 429 detail."""

    windows: tuple[WindowState, ...]

    @property
    def allowed(self) -> bool:
        return not any(w.exceeded for w in self.windows)

    @property
    def tightest(self) -> WindowState:
        """The limit closest to exhaustion; of several used up, the one that ends last (the
        next request is refused until every used-up window has ended)."""
        return min(self.windows, key=lambda w: (w.remaining, -w.reset))

    @property
    def retry_after(self) -> int:
        return _whole_seconds(self.tightest.reset)

    def headers(self) -> dict[str, str]:
        """The RateLimit-* headers (IETF httpapi-ratelimit-headers, numeric form)."""
        tightest = self.tightest
        policies = sorted({(w.limit.window, w.limit.quota) for w in self.windows})
        return {
            "RateLimit-Limit": str(tightest.limit.quota),
            "RateLimit-Remaining": str(tightest.remaining),
            "RateLimit-Reset": str(_whole_seconds(tightest.reset)),
            "RateLimit-Policy": ", ".join(f"{quota};w={window}" for window, quota in policies),
        }

    def detail(self) -> str:
        """Which limits are used up, in words a vendor can act on."""
        hit = [
            f"{w.limit.quota} request{'' if w.limit.quota == 1 else 's'} per "
            f"{_window_name(w.limit.window)} ({w.limit.source})"
            for w in self.windows
            if w.remaining == 0
        ]
        return "Rate limit reached: " + " and ".join(hit) + "."


def check_rate(
    client: ApiClient,
    *,
    scope: str | None,
    group: str,
    write: bool,
    also: Sequence[tuple[str | None, str]] = (),
    counted: dict[tuple[str, int], tuple[int, float]] | None = None,
) -> RateLimitState:
    """Count one request of ``client`` against every limit that applies to it (``also``:
    see ``effective_limits``). ``counted``: counters this request was already counted in
    (``record_hits``'s result for them), which are not counted again."""
    limits = effective_limits(client, scope=scope, group=group, write=write, also=also)
    hits = dict(counted or {})
    missing = [
        (limit.subject, limit.window)
        for limit in limits
        if (limit.subject, limit.window) not in hits
    ]
    if missing:
        hits.update(record_hits(missing))
    return RateLimitState(
        tuple(WindowState(limit, *hits[(limit.subject, limit.window)]) for limit in limits)
    )


def counted(request, state: RateLimitState) -> None:
    """Remember on ``request`` (a plain Django one) that it was counted with this outcome, for
    the DRF view it may be handed to (``RateLimitHeadersMixin``)."""
    setattr(request, _STATE_ATTR, state)
    setattr(request, _CHECKED_ATTR, True)


def rate_limit_state(request: Request) -> RateLimitState | None:
    """The outcome of the rate check of ``request``; None when it was not checked."""
    return getattr(request, _STATE_ATTR, None)


# --- DRF hooks ---------------------------------------------------------------------------------


class RateLimited(Throttled):
    """429 whose detail names the limit; ``Retry-After`` comes from ``wait``."""

    default_code = "rate_limited"
    extra_detail_singular = "Retry in {wait} second."
    extra_detail_plural = "Retry in {wait} seconds."


class ClientRateThrottle(BaseThrottle):
    """Counts every request of an authenticated ApiClient and refuses those over a limit.

    Requests without a client are let through: they are answered 401 by the permission check.
    """

    def __init__(self) -> None:
        self._state: RateLimitState | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        client = request.user
        if not isinstance(client, ApiClient):
            return True
        required_scope = getattr(view, "required_scope", None)
        resource = getattr(view, "resource", None)
        # A view reading several resources per request (GraphQL) names them all.
        rate_groups = getattr(view, "rate_groups", None)
        state = check_rate(
            client,
            scope=required_scope(request) if callable(required_scope) else None,
            group=resource.name if resource is not None else META_GROUP,
            # GraphQL sends its queries by POST: a read-only view is never a write.
            write=request.method not in SAFE_METHODS and not getattr(view, "read_only", False),
            also=rate_groups(request) if callable(rate_groups) else (),
        )
        setattr(request, _STATE_ATTR, state)
        self._state = state
        return state.allowed

    def wait(self) -> float | None:
        return self._state.retry_after if self._state is not None else None


class RateLimitHeadersMixin:
    """For API views: RateLimit-* headers on every response to a client, and a 429 naming the
    limit. Put it before the DRF base class."""

    def check_permissions(self, request: Request) -> None:
        # Throttled before the scope check, so that a client asking again and again for what
        # its scopes do not cover still spends its allowance and its 403s carry the headers.
        self.check_throttles(request)
        super().check_permissions(request)  # type: ignore[misc]

    def check_throttles(self, request: Request) -> None:
        if getattr(request, _CHECKED_ATTR, False):
            # Counted already: by this view a moment ago, or by bxos.api.lean before it handed
            # the request over. A refusal is answered here; nothing is counted twice.
            state = rate_limit_state(request)
            if state is not None and not state.allowed:
                self.throttled(request, state.retry_after)
            return
        setattr(request, _CHECKED_ATTR, True)
        super().check_throttles(request)  # type: ignore[misc]

    def throttled(self, request: Request, wait: float | None) -> None:
        state = rate_limit_state(request)
        if state is None or state.allowed:
            super().throttled(request, wait)  # type: ignore[misc]  # another throttle refused
        else:
            raise RateLimited(wait, detail=state.detail())

    def finalize_response(
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        state = rate_limit_state(request)
        if state is not None:
            for name, value in state.headers().items():
                response[name] = value
        return response
