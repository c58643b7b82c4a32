"""A OneRoster 1.2 rostering REST server on 127.0.0.1 for tests, serving a fixtures.Roster.

It speaks the binding as published (the 1EdTech OpenAPI definition of the rostering service):

- ``POST /token``: OAuth2 client credentials, client authenticated by HTTP Basic; bearer tokens
  with ``expires_in``; RFC 6749 errors (``invalid_client`` 401, ``unsupported_grant_type`` and
  ``invalid_scope`` 400).
- ``GET /ims/oneroster/rostering/v1p2/{collection}`` and ``/{collection}/{sourcedId}`` for orgs,
  schools, academicSessions, terms, users, students, teachers, courses, classes, enrollments,
  demographics; envelopes ``{"users": [...]}`` and ``{"user": {...}}``.
- ``limit`` (default 100), ``offset``, ``X-Total-Count``, a ``Link`` header (next, prev, first,
  last), ``sort`` + ``orderBy``, ``fields``, and ``filter`` in the binding's grammar:
  ``field op 'value'`` with op one of ``= != > >= < <= ~``, predicates joined by `` AND `` or
  `` OR `` (not both). ``role`` on users matches any of the user's roles.
- Errors as ``imsx_StatusInfoDType``: 400 for a bad parameter or filter, 401 without a valid
  token, 403 without the scope (demographics need ``roster-demographics.readonly``), 404 for an
  unknown record.
- The ``Date`` header comes from the roster's clock, so "the source's now" is the test's.

Knobs: ``force(...)`` queues canned answers (429 with Retry-After, 503 ...), ``page_size_cap``,
``expire_tokens()``, ``hooks`` called after each data response is computed (to change the roster
while a client pages), and ``requests``, the log of what came in.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.integrations.peers.fixtures import (
    AcademicSession,
    Course,
    Demographics,
    Enrollment,
    Org,
    Record,
    Roster,
    RosterClass,
    User,
    build_roster,
    iso_datetime,
)

API_ROOT = "/ims/oneroster/rostering/v1p2"
SCOPE_CORE = "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-core.readonly"
SCOPE_ROSTER = "https://purl.imsglobal.org/spec/or/v1p2/scope/roster.readonly"
SCOPE_DEMOGRAPHICS = "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-demographics.readonly"
ALL_SCOPES = (SCOPE_CORE, SCOPE_ROSTER, SCOPE_DEMOGRAPHICS)


@dataclass
class Logged:
    """One request as it came in, and the status it got."""

    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    status: int = 0
    count: int | None = None  # records in the page, for collection reads


@dataclass
class Forced:
    """A canned answer for the next matching request (``on``: "data", "token" or "any")."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    on: str = "data"


@dataclass(frozen=True)
class _Endpoint:
    collection: str  # the roster collection
    plural: str  # the envelope key of a collection read
    singular: str  # the envelope key of a single read
    keep: Callable[[Record], bool] | None = None
    scope: str = "core"


ENDPOINTS: dict[str, _Endpoint] = {
    "orgs": _Endpoint("orgs", "orgs", "org"),
    "schools": _Endpoint("orgs", "orgs", "org", lambda r: getattr(r, "type", "") == "school"),
    "academicSessions": _Endpoint("academicSessions", "academicSessions", "academicSession"),
    "terms": _Endpoint(
        "academicSessions", "academicSessions", "academicSession",
        lambda r: getattr(r, "type", "") == "term",
    ),
    "users": _Endpoint("users", "users", "user"),
    "students": _Endpoint(
        "users", "users", "user", lambda r: isinstance(r, User) and r.has_role("student")
    ),
    "teachers": _Endpoint(
        "users", "users", "user", lambda r: isinstance(r, User) and r.has_role("teacher")
    ),
    "courses": _Endpoint("courses", "courses", "course"),
    "classes": _Endpoint("classes", "classes", "class"),
    "enrollments": _Endpoint("enrollments", "enrollments", "enrollment"),
    "demographics": _Endpoint("demographics", "demographics", "demographics", scope="demo"),
}  # fmt: skip

_REF_TYPES = {
    "orgs": "org",
    "academicSessions": "academicSession",
    "users": "user",
    "courses": "course",
    "classes": "class",
}


class BadRequest(Exception):
    def __init__(self, message: str, code_minor: str = "invalid_selection_field") -> None:
        super().__init__(message)
        self.code_minor = code_minor


class OneRosterPeer:
    """Context manager: ``with OneRosterPeer() as peer:`` serves ``peer.roster``."""

    def __init__(
        self,
        roster: Roster | None = None,
        *,
        client_id: str = "riverside-hub",
        client_secret: str = "s3cret-oneroster-key",
        token_lifetime: int = 3600,
        page_size_cap: int | None = None,
        max_limit: int = 1000,
        scopes: tuple[str, ...] = ALL_SCOPES,
    ) -> None:
        self.roster = roster or build_roster()
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.page_size_cap = page_size_cap
        self.max_limit = max_limit
        self.scopes = scopes
        self.forced: deque[Forced] = deque()
        self.requests: list[Logged] = []
        self.hooks: list[Callable[[Logged], None]] = []
        self.tokens_issued = 0
        self._tokens: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.base_url = self.origin + API_ROOT
        self.token_url = self.origin + "/token"
        # A short poll interval: shutdown() waits for one, and each test starts a peer.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> OneRosterPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # knobs

    def force(
        self,
        status: int,
        *,
        count: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        on: str = "data",
    ) -> None:
        """The next ``count`` matching requests get this answer instead of the real one."""
        with self._lock:
            for _ in range(count):
                self.forced.append(Forced(status, dict(headers or {}), body, on))

    def expire_tokens(self) -> None:
        """Every token issued so far stops working (a server restart, a key rotation)."""
        with self._lock:
            self._tokens.clear()

    def data_requests(self, suffix: str = "") -> list[Logged]:
        with self._lock:
            return [
                r for r in self.requests if r.path.startswith(API_ROOT) and r.path.endswith(suffix)
            ]

    # answering

    def _take_forced(self, kind: str) -> Forced | None:
        with self._lock:
            for i, forced in enumerate(self.forced):
                if forced.on in (kind, "any"):
                    del self.forced[i]
                    return forced
        return None

    def _issue_token(self, authorization: str | None, form: dict[str, str]) -> tuple[int, dict]:
        client_id, secret = _basic(authorization)
        if client_id is None and "client_id" in form:
            # RFC 6749 allows the credentials in the body too; tolerate it as servers do.
            client_id, secret = form.get("client_id"), form.get("client_secret")
        if client_id != self.client_id or secret != self.client_secret:
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        if form.get("grant_type") != "client_credentials":
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": f"grant_type {form.get('grant_type')!r}",
            }
        asked = form.get("scope", "").split()
        unknown = [s for s in asked if s not in self.scopes]
        if unknown:
            return 400, {"error": "invalid_scope", "error_description": " ".join(unknown)}
        granted = frozenset(asked or self.scopes)
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (time.monotonic() + self.token_lifetime, granted)
            self.tokens_issued += 1
        return 200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_lifetime,
            "scope": " ".join(sorted(granted)),
        }

    def _scopes_of(self, authorization: str | None) -> frozenset[str] | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        token = authorization[7:].strip()
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def _data(self, path: str, query: dict[str, str], logged: Logged) -> tuple[int, dict, dict]:
        """(status, extra headers, JSON body) for an authorised GET under the API root."""
        parts = [p for p in path[len(API_ROOT) :].split("/") if p]
        if not parts or parts[0] not in ENDPOINTS or len(parts) > 2:
            return 404, {}, _imsx(f"no such endpoint: {path}", "unknownobject")
        endpoint = ENDPOINTS[parts[0]]
        with self.roster.lock:
            records = [
                r
                for r in self.roster.collections[endpoint.collection].values()
                if endpoint.keep is None or endpoint.keep(r)
            ]
            rendered = [self.render(endpoint.collection, r) for r in records]
        if len(parts) == 2:
            for item in rendered:
                if item["sourcedId"] == parts[1]:
                    return 200, {}, {endpoint.singular: _select(item, query.get("fields"))}
            return 404, {}, _imsx(f"{parts[0]} has no record {parts[1]!r}", "unknownobject")
        try:
            limit = _int_param(query, "limit", 100, minimum=1)
            offset = _int_param(query, "offset", 0, minimum=0)
            if "filter" in query:
                rendered = _filtered(rendered, query["filter"])
            if "sort" in query:
                rendered = _sorted(rendered, query["sort"], query.get("orderBy", "asc"))
            elif "orderBy" in query:
                raise BadRequest("orderBy needs sort")
            fields = query.get("fields")
            if fields:
                _select(rendered[0] if rendered else {}, fields)  # validates the names
        except BadRequest as exc:
            return 400, {}, _imsx(str(exc), exc.code_minor)
        effective = min(limit, self.max_limit, self.page_size_cap or limit)
        total = len(rendered)
        page = [_select(r, fields) for r in rendered[offset : offset + effective]]
        logged.count = len(page)
        headers = {"X-Total-Count": str(total)}
        links = self._links(path, query, offset, effective, total)
        if links:
            headers["Link"] = links
        return 200, headers, {endpoint.plural: page}

    def _links(self, path: str, query: dict[str, str], offset: int, limit: int, total: int) -> str:
        def link(rel: str, at: int) -> str:
            params = {**query, "limit": str(limit), "offset": str(at)}
            return f'<{self.origin}{path}?{urlencode(params)}>; rel="{rel}"'

        links = []
        if offset + limit < total:
            links.append(link("next", offset + limit))
        if offset > 0:
            links.append(link("prev", max(0, offset - limit)))
        links.append(link("first", 0))
        links.append(link("last", max(0, (total - 1) // limit * limit)))
        return ", ".join(links)

    # OneRoster 1.2 JSON

    def render(self, collection: str, record: Record) -> dict[str, Any]:
        def ref(kind: str, sourced_id: str) -> dict[str, str]:
            return {
                "href": f"{self.base_url}/{kind}/{sourced_id}",
                "sourcedId": sourced_id,
                "type": _REF_TYPES[kind],
            }

        out: dict[str, Any] = {
            "sourcedId": record.sourced_id,
            "status": record.status,
            "dateLastModified": iso_datetime(record.date_last_modified),
        }
        if isinstance(record, Org):
            out |= {"name": record.name, "type": record.type, "identifier": record.identifier}
            if record.parent:
                out["parent"] = ref("orgs", record.parent)
            children = [
                o.sourced_id
                for o in self.roster.collections["orgs"].values()
                if getattr(o, "parent", None) == record.sourced_id
            ]
            out["children"] = [ref("orgs", c) for c in children]
        elif isinstance(record, AcademicSession):
            out |= {
                "title": record.title,
                "type": record.type,
                "startDate": record.start_date.isoformat(),
                "endDate": record.end_date.isoformat(),
                "schoolYear": str(record.school_year),
            }
            if record.parent:
                out["parent"] = ref("academicSessions", record.parent)
            children = [
                s.sourced_id
                for s in self.roster.collections["academicSessions"].values()
                if getattr(s, "parent", None) == record.sourced_id
            ]
            out["children"] = [ref("academicSessions", c) for c in children]
        elif isinstance(record, User):
            out |= {
                "enabledUser": "true" if record.enabled else "false",
                "username": record.username,
                "userIds": [{"type": t, "identifier": i} for t, i in record.user_ids],
                "givenName": record.given_name,
                "familyName": record.family_name,
                "middleName": record.middle_name,
                "roles": [
                    {
                        "roleType": r.role_type,
                        "role": r.role,
                        "org": ref("orgs", r.org),
                        **({"beginDate": r.begin_date.isoformat()} if r.begin_date else {}),
                        **({"endDate": r.end_date.isoformat()} if r.end_date else {}),
                    }
                    for r in record.roles
                ],
                "identifier": record.identifier,
                "email": record.email,
                "sms": record.sms,
                "phone": record.phone,
                "agents": [ref("users", a) for a in record.agents],
                "grades": list(record.grades),
                "userMasterIdentifier": record.user_master_identifier,
            }
            if record.preferred_first_name:
                out["preferredFirstName"] = record.preferred_first_name
            if record.pronouns:
                out["pronouns"] = record.pronouns
            if record.primary_org:
                out["primaryOrg"] = ref("orgs", record.primary_org)
        elif isinstance(record, Course):
            out |= {
                "title": record.title,
                "courseCode": record.course_code,
                "grades": list(record.grades),
                "subjects": list(record.subjects),
                "org": ref("orgs", record.org),
            }
            if record.school_year:
                out["schoolYear"] = ref("academicSessions", record.school_year)
        elif isinstance(record, RosterClass):
            out |= {
                "title": record.title,
                "classCode": record.class_code,
                "classType": record.class_type,
                "location": record.location,
                "grades": list(record.grades),
                "subjects": list(record.subjects),
                "course": ref("courses", record.course),
                "school": ref("orgs", record.school),
                "terms": [ref("academicSessions", t) for t in record.terms],
                "periods": list(record.periods),
            }
        elif isinstance(record, Enrollment):
            out |= {
                "user": ref("users", record.user),
                "class": ref("classes", record.class_),
                "school": ref("orgs", record.school),
                "role": record.role,
                "primary": "true" if record.primary else "false",
            }
            if record.begin_date:
                out["beginDate"] = record.begin_date.isoformat()
            if record.end_date:
                out["endDate"] = record.end_date.isoformat()
        elif isinstance(record, Demographics):
            flags = {
                "americanIndianOrAlaskaNative": record.american_indian_or_alaska_native,
                "asian": record.asian,
                "blackOrAfricanAmerican": record.black_or_african_american,
                "nativeHawaiianOrOtherPacificIslander": (
                    record.native_hawaiian_or_other_pacific_islander
                ),
                "white": record.white,
                "demographicRaceTwoOrMoreRaces": record.demographic_race_two_or_more_races,
                "hispanicOrLatinoEthnicity": record.hispanic_or_latino_ethnicity,
            }
            out |= {k: "true" if v else "false" for k, v in flags.items()}
            if record.birth_date:
                out["birthDate"] = record.birth_date.isoformat()
            if record.sex:
                out["sex"] = record.sex
            for key, value in [
                ("countryOfBirthCode", record.country_of_birth_code),
                ("stateOfBirthAbbreviation", record.state_of_birth_abbreviation),
                ("cityOfBirth", record.city_of_birth),
                ("publicSchoolResidenceStatus", record.public_school_residence_status),
            ]:
                if value:
                    out[key] = value
        out.update(record.extra)
        return out


# --- the request handler ----------------------------------------------------------------------


def _handler(peer: OneRosterPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers: the client reuses sockets

        def date_time_string(self, timestamp: float | None = None) -> str:
            # The Date header is the roster's clock: the client's window bound follows the test.
            return formatdate(peer.roster.clock.now().timestamp(), usegmt=True)

        def _answer(
            self, status: int, body: bytes, headers: dict[str, str], *, json_body: bool = True
        ) -> None:
            if (
                json_body
                and "gzip" in (self.headers.get("accept-encoding") or "")
                and (len(body) > 1024)
            ):
                body = gzip.compress(body)
                headers = {**headers, "Content-Encoding": "gzip"}
            try:
                self.send_response(status)
                if json_body:
                    self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            split = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            logged = Logged(self.command, split.path, query, self.headers.get("authorization"))
            with peer._lock:
                peer.requests.append(logged)
            kind = "token" if split.path == "/token" else "data"
            forced = peer._take_forced(kind)
            if forced is not None:
                logged.status = forced.status
                body = forced.body
                if body is None:
                    body = json.dumps(_imsx(f"forced answer {forced.status}", "server_busy"))
                    body = body.encode()
                self._answer(forced.status, body, forced.headers)
                return
            if split.path == "/token":
                if self.command != "POST":
                    return self._send_json(logged, 405, {"error": "invalid_request"}, {})
                form = {k: v[-1] for k, v in parse_qs(raw_body.decode("utf-8", "replace")).items()}
                status, payload = peer._issue_token(self.headers.get("authorization"), form)
                extra = {"Cache-Control": "no-store"}
                if status == 401:
                    extra["WWW-Authenticate"] = 'Basic realm="oneroster"'
                return self._send_json(logged, status, payload, extra)
            if not split.path.startswith(API_ROOT + "/"):
                return self._send_json(logged, 404, _imsx("not found", "unknownobject"), {})
            scopes = peer._scopes_of(self.headers.get("authorization"))
            if scopes is None:
                return self._send_json(
                    logged,
                    401,
                    _imsx("a valid bearer token is required", "unauthorisedrequest"),
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            if self.command != "GET":
                return self._send_json(
                    logged, 405, _imsx(f"{self.command} is not supported", "forbidden"), {}
                )
            name = split.path[len(API_ROOT) :].strip("/").split("/")[0]
            endpoint = ENDPOINTS.get(name)
            if endpoint is not None:
                needed = (
                    {SCOPE_DEMOGRAPHICS} if endpoint.scope == "demo" else {SCOPE_CORE, SCOPE_ROSTER}
                )
                if not needed & scopes:
                    return self._send_json(
                        logged, 403, _imsx(f"the token lacks the scope for {name}", "forbidden"), {}
                    )
            status, headers, payload = peer._data(split.path, query, logged)
            logged.status = status
            body = json.dumps(payload).encode()
            for hook in list(peer.hooks):
                hook(logged)  # after the page was computed, before the client has it
            self._answer(status, body, headers)

        def _send_json(self, logged: Logged, status: int, payload: dict, headers: dict) -> None:
            logged.status = status
            self._answer(status, json.dumps(payload).encode(), headers)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, *args: object) -> None:  # quiet
            pass

    return Handler


# --- query parameters -------------------------------------------------------------------------


def _imsx(description: str, code_minor: str) -> dict[str, Any]:
    return {
        "imsx_codeMajor": "failure",
        "imsx_severity": "error",
        "imsx_description": description,
        "imsx_CodeMinor": {
            "imsx_codeMinorField": [
                {
                    "imsx_codeMinorFieldName": "TargetEndSystem",
                    "imsx_codeMinorFieldValue": code_minor,
                }
            ]
        },
    }


def _basic(authorization: str | None) -> tuple[str | None, str | None]:
    if not authorization or not authorization.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(authorization[6:].strip()).decode()
    except ValueError:
        return None, None
    client_id, _, secret = decoded.partition(":")
    return client_id, secret


def _int_param(query: dict[str, str], name: str, default: int, *, minimum: int) -> int:
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {query[name]!r}") from None
    if value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}, not {value}")
    return value


def _select(item: dict[str, Any], fields: str | None) -> dict[str, Any]:
    if not fields:
        return item
    names = [f.strip() for f in fields.split(",") if f.strip()]
    unknown = [n for n in names if item and n not in item and n not in _OPTIONAL_FIELDS]
    if unknown:
        raise BadRequest(f"unknown field(s) in fields: {', '.join(unknown)}")
    return {n: item[n] for n in names if n in item}


# Fields a record may omit when empty; naming them in fields or filter is not an error.
_OPTIONAL_FIELDS = {
    "parent", "preferredFirstName", "preferredMiddleName", "preferredLastName", "pronouns",
    "primaryOrg", "schoolYear", "beginDate", "endDate", "birthDate", "sex",
    "countryOfBirthCode", "stateOfBirthAbbreviation", "cityOfBirth",
    "publicSchoolResidenceStatus", "metadata",
}  # fmt: skip

_PREDICATE = re.compile(
    r"\s*(?P<field>[A-Za-z_][\w.]*)\s*(?P<op>!=|>=|<=|=|>|<|~)\s*'(?P<value>[^']*)'\s*"
)
_LOGICAL = re.compile(r"(AND|OR)\s+")


def _parse_filter(text: str) -> tuple[list[tuple[str, str, str]], str]:
    """[(field, op, value)], and "AND" or "OR"; BadRequest for anything else."""
    predicates: list[tuple[str, str, str]] = []
    logic: set[str] = set()
    position = 0
    while True:
        match = _PREDICATE.match(text, position)
        if not match:
            raise BadRequest(
                f"invalid filter {text!r} at character {position}: expected a field, an "
                "operator (= != > >= < <= ~) and a value in single quotes",
                "invalid_filter_field",
            )
        predicates.append((match["field"], match["op"], match["value"]))
        position = match.end()
        if position == len(text):
            break
        joiner = _LOGICAL.match(text, position)
        if not joiner:
            raise BadRequest(
                f"invalid filter {text!r} at character {position}: expected AND or OR",
                "invalid_filter_field",
            )
        logic.add(joiner[1])
        position = joiner.end()
    if len(logic) > 1:
        raise BadRequest(
            "a filter may join predicates with AND or OR, not both", "invalid_filter_field"
        )
    return predicates, (logic.pop() if logic else "AND")


def _values(item: dict[str, Any], name: str) -> list[Any] | None:
    """The values a filter or sort field has on a record, or None if the field is unknown."""
    if name == "role" and "roles" in item:
        return [r.get("role") for r in item["roles"]]
    current: list[Any] = [item]
    for part in name.split("."):
        found: list[Any] = []
        for value in current:
            if isinstance(value, dict) and part in value:
                inner = value[part]
                found.extend(inner if isinstance(inner, list) else [inner])
        if not found and not (part in _OPTIONAL_FIELDS and len(current) == 1):
            return None
        current = found
    return [v["sourcedId"] if isinstance(v, dict) and "sourcedId" in v else v for v in current]


def _known(name: str, records: list[dict[str, Any]]) -> bool:
    head = name.split(".")[0]
    return (
        not records
        or head in _OPTIONAL_FIELDS
        or (name == "role" and "roles" in records[0])
        or any(head in r for r in records)
    )


def _typed(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if "T" in value:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        if len(value) == 10 and value[4] == "-":
            return date.fromisoformat(value)
    except ValueError:
        pass
    return value


def _compare(left: Any, op: str, right: str) -> bool:
    if op == "~":
        return right.lower() in str(left).lower()
    a, b = _typed(left), _typed(right)
    if type(a) is not type(b):
        a, b = str(left), right
    if op == "=":
        return a == b
    if op == "!=":
        return a != b
    if a is None:
        return False
    return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]


def _filtered(records: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    predicates, logic = _parse_filter(text)
    for name, _op, _value in predicates:
        if not _known(name, records):
            raise BadRequest(f"unknown filter field {name!r}", "invalid_filter_field")

    def matches(item: dict[str, Any]) -> bool:
        results = []
        for name, op, value in predicates:
            values = _values(item, name) or []
            if op == "!=":
                results.append(all(_compare(v, op, value) for v in values))
            else:
                results.append(any(_compare(v, op, value) for v in values))
        return all(results) if logic == "AND" else any(results)

    return [r for r in records if matches(r)]


def _sorted(records: list[dict[str, Any]], name: str, order: str) -> list[dict[str, Any]]:
    if order not in ("asc", "desc"):
        raise BadRequest(f"orderBy must be asc or desc, not {order!r}")
    if not _known(name, records):
        raise BadRequest(f"unknown sort field {name!r}")

    def key(record: dict[str, Any]) -> str:
        values = _values(record, name) or [""]
        return str(values[0] if values else "")

    return sorted(records, key=key, reverse=order == "desc")
