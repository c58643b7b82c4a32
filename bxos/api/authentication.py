"""Bearer tokens of API clients: valid token, live client, contract not ended."""

from __future__ import annotations

import hashlib

from django.db import connection
from oauth2_provider.models import AccessToken
from oauth2_provider.oauth2_backends import get_oauthlib_core
from oauthlib.common import Request as OauthlibRequest
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from bxos.api.choices import ACTIVE_STATUSES
from bxos.api.models import ApiClient, FieldProfile
from bxos.api.throttling import base_hits_cte, hits_from_rows
from bxos.common import roles
from bxos.common.db import prepared_cursor


def staff_access_problem(client: ApiClient, user) -> str | None:
    """Why ``client`` may not act for ``user`` now, or None when it may: the person must be
    an active staff login of the client's district, holding a role there."""
    if not user.is_active:
        return "the staff member's login is disabled"
    if getattr(user, "is_system_actor", False) or user.is_superuser:
        return "apps act only for staff members of the district"
    if roles.district_id_of(user) != client.district_id or not roles.roles_of(user):
        return "the staff member has no role in the client's district"
    return None


def _columns(model) -> list:
    return list(model._meta.concrete_fields)


def _sql() -> str:
    def cols(model, alias):
        return ", ".join(f'{alias}."{f.column}"' for f in _columns(model))

    return (
        f"SELECT {cols(AccessToken, 't')}, {cols(ApiClient, 'c')}, {cols(FieldProfile, 'p')}, "
        "ARRAY(SELECT s.school_id FROM api_apiclient_allowed_schools s "
        "      WHERE s.apiclient_id = c.id ORDER BY s.school_id) "
        "FROM oauth2_provider_accesstoken t "
        "LEFT JOIN api_apiclient c ON c.application_id = t.application_id "
        "LEFT JOIN api_fieldprofile p ON p.id = c.field_profile_id "
        "WHERE t.token_checksum = %s"
    )


_TOKEN_SQL = None
_COUNTING_SQL = None


def _counting_sql() -> str:
    """The token's lookup, counting the request in its client's own rate counters in the same
    statement (one round trip fewer on every list page, bxos.api.lean). Counted only for a
    live token of a client that is neither revoked nor inactive: the same tests as
    ``authenticate`` but for the contract end date, the token's resource server and a staff
    member's role, which are checked after (a request refused for those is counted)."""
    active = ", ".join(f"'{status}'" for status in ACTIVE_STATUSES)
    live = f"ht.expires > now() AND hc.revoked_at IS NULL AND hc.status IN ({active})"
    hits = base_hits_cte(token_checksum="%s", client_filter=live)
    # The counts ride on the token's row: keys, counts and window starts as arrays.
    extra = (
        ", ARRAY(SELECT h.key FROM hits h ORDER BY h.key)"
        ", ARRAY(SELECT h.count FROM hits h ORDER BY h.key)"
        ", ARRAY(SELECT h.start FROM hits h ORDER BY h.key)"
        ", extract(epoch FROM now())::float8"
    )
    select = _sql()
    head, _, tail = select.partition(" FROM oauth2_provider_accesstoken t ")
    return f"WITH {hits} {head}{extra} FROM oauth2_provider_accesstoken t {tail}"


def _instance(model, values):
    """A model instance from raw column values, through each field's database converter (as
    the ORM's compiler does: JSON text to objects)."""
    fields = _columns(model)
    converted = [
        f.from_db_value(v, None, connection) if v is not None and hasattr(f, "from_db_value") else v
        for f, v in zip(fields, values, strict=True)
    ]
    return model.from_db(connection.alias, [f.attname for f in fields], converted)


def _load_token(checksum: str):
    """The token and its client (with field profile and allowed schools) in one query."""
    global _TOKEN_SQL
    if _TOKEN_SQL is None:
        _TOKEN_SQL = _sql()
    with prepared_cursor() as cursor:
        cursor.execute(_TOKEN_SQL, [checksum])
        row = cursor.fetchone()
    return _token_and_client(row)


def load_token_counting(checksum: str):
    """``_load_token``, and the request counted in the client's own rate counters by the same
    statement: (token, client, hits), hits as ``throttling.record_hits`` gives them (empty when
    the token is not live, see ``_counting_sql``)."""
    global _COUNTING_SQL
    if _COUNTING_SQL is None:
        _COUNTING_SQL = _counting_sql()
    with prepared_cursor() as cursor:
        cursor.execute(_COUNTING_SQL, [checksum, checksum])
        row = cursor.fetchone()
    if row is None:
        return None, None, {}
    *row, keys, counts, starts, now = row
    token, client = _reused_token_and_client(row)
    return (
        token,
        client,
        hits_from_rows((k, c, s, now) for k, c, s in zip(keys, counts, starts, strict=True)),
    )


# The instances built from a token's row, by the row's values. A vendor walking a list reads
# the same row page after page, and building the three model instances cost half as much as
# the query (docs/benchmarks.md, B3). The row is still read on every request; any change to
# the token, its client, field profile or allowed schools changes the row, so an instance is
# never reused across a change, and expiry and the client's state are checked per request as
# before. Only lean list pages reuse them (they never change an instance), and never for a
# token acting for a person (its client instance carries that person for the request).
_reused: dict[tuple, tuple] = {}
_REUSED_MAX = 1024


def _reused_token_and_client(row):
    try:
        key = tuple(tuple(v) if isinstance(v, list) else v for v in row)
        found = _reused.get(key)
    except TypeError:  # a value that cannot be a key: build, do not keep
        return _token_and_client(row)
    if found is None:
        found = _token_and_client(row)
        token, client = found
        if client is not None and token.user_id is None:
            if len(_reused) >= _REUSED_MAX:
                _reused.clear()
            _reused[key] = found
    return found


def _token_and_client(row):
    if row is None:
        return None, None
    n_token, n_client, n_profile = (
        len(_columns(m)) for m in (AccessToken, ApiClient, FieldProfile)
    )
    token = _instance(AccessToken, row[:n_token])
    client_values = row[n_token : n_token + n_client]
    if client_values[0] is None:
        return token, None
    client = _instance(ApiClient, client_values)
    profile_values = row[n_token + n_client : n_token + n_client + n_profile]
    client.field_profile = (
        _instance(FieldProfile, profile_values) if profile_values[0] is not None else None
    )
    client._allowed_school_ids = list(row[-1])
    return token, client


class ClientTokenAuthentication(BaseAuthentication):
    """OAuth2 bearer token -> the ApiClient it was issued to (the request's actor).

    Checked on every request, not at token issue: revoking a client, suspending it or
    reaching its contract end date stops every token it holds at once. A token issued through
    the authorization code grant also carries the staff member who signed in; the client then
    acts for that person (``acting_for``), who must still hold a role in the district.

    One query reads the token, its client, the client's field profile and allowed schools
    (django-oauth-toolkit's resource-server path would take three and oauthlib's request
    validation on top: the hottest path of the API, see docs/benchmarks.md, B3). The token is
    found by its SHA-256 checksum, as the toolkit stores it; only the Authorization header is
    read (RFC 9700: never a token in the query string).
    """

    keyword = "Bearer"

    def authenticate(self, request):
        found = self.authenticate_counting(request, count=False)
        return found[:2] if found is not None else None

    def authenticate_counting(self, request, *, count: bool):
        """``authenticate``, and with ``count`` the request counted in the client's own rate
        counters by the token's own statement: (client, token, hits), see
        ``load_token_counting`` (a token refused here may have been counted)."""
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        value = value.strip()
        if not value or " " in value:
            raise AuthenticationFailed("The Authorization header must be 'Bearer <token>'.")
        checksum = hashlib.sha256(value.encode()).hexdigest()
        if count:
            token, client, hits = load_token_counting(checksum)
        else:
            (token, client), hits = _load_token(checksum), {}
        if token is None or token.is_expired():
            raise AuthenticationFailed("The token is invalid or has expired.")
        if token.resource and not any(
            request.build_absolute_uri("/").startswith(r) for r in token.resource
        ):
            raise AuthenticationFailed("The token was issued for another resource server.")
        if client is None:
            raise AuthenticationFailed("This token does not belong to an API client.")
        problem = client.access_problem()
        if problem:
            raise AuthenticationFailed(f"Access has stopped: {problem}.")
        if token.user_id is not None:
            problem = staff_access_problem(client, token.user)
            if problem:
                raise AuthenticationFailed(f"Access has stopped: {problem}.")
            client.acting_for = token.user
        return client, token, hits

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class ClientSecretAuthentication(BaseAuthentication):
    """HTTP Basic (or form) client id and secret -> the ApiClient: how a resource server
    authenticates to the introspection endpoint (RFC 7662 section 2.1)."""

    def authenticate(self, request):
        core = get_oauthlib_core()
        uri, method, body, headers = core._extract_params(request._request)
        oauth_request = OauthlibRequest(uri, method, body, headers)
        if not (headers.get("HTTP_AUTHORIZATION", "").startswith("Basic ") or "client_id" in body):
            return None
        if not core.server.request_validator.authenticate_client(oauth_request):
            raise AuthenticationFailed("The client id or secret is wrong.")
        client = ApiClient.objects.filter(application=oauth_request.client).first()
        if client is None:
            raise AuthenticationFailed("These credentials do not belong to an API client.")
        problem = client.access_problem()
        if problem:
            raise AuthenticationFailed(f"Access has stopped: {problem}.")
        return client, None

    def authenticate_header(self, request):
        return 'Basic realm="api"'
