"""An Ed-Fi ODS/API v7-style server on 127.0.0.1 for tests: in memory, fed from its own fixture.

It speaks the parts of the protocol the connector uses, the way the ODS/API does:

- ``POST {root}/oauth/token``: OAuth2 client credentials (HTTP Basic or form/JSON fields);
  ``401 {"error": "invalid_client"}`` for a wrong key or secret.
- ``GET {root}/changeQueries/v1[/{year}]/availableChangeVersions``:
  ``{"oldestChangeVersion": .., "newestChangeVersion": ..}`` (the v7 camelCase names).
- ``{root}/data/v3[/{year}]/ed-fi/{resource}``: GET with ``offset``, ``limit`` (at most 500),
  ``totalCount=true`` (a ``Total-Count`` header), ``minChangeVersion``/``maxChangeVersion``
  (inclusive) and query-by-example on the natural key fields; ``/deletes`` and
  ``/keyChanges`` with the same parameters; POST (upsert by natural key: 201 or 200), PUT and
  DELETE by ``id``; errors as Ed-Fi problem details.
- Optimistic concurrency as the ODS/API does it: every item has an ETag (the ``ETag`` header of
  a GET by id, POST and PUT answers, and ``_etag`` in bodies); a POST that updates, a PUT or a
  DELETE with an ``If-Match`` header that is not the item's current ETag changes nothing and
  answers ``412`` (``urn:ed-fi:api:optimistic-lock-failed``). Without ``If-Match`` the write
  goes through (the ODS's opt-in model).
- A DELETE of an item another item still references answers ``409``
  (``urn:ed-fi:api:conflict:dependent-item-exists``): an incident with behavior associations,
  an association a discipline action refers to. (The :meth:`EdFiPeer.delete` knob does not
  check: it stands for the ODS's own cascades in fixtures.)

One global change version counter is stamped on every insert, update, delete and key change,
as the ODS does with its database sequence. Items are listed in insertion order (the ODS orders
by its surrogate key), so offset paging behaves as it does against a real ODS, including what
happens to offsets when an item leaves a change window while a client pages through it.

Test knobs: :meth:`EdFiPeer.force` (queued answers such as 429 with Retry-After, or 503),
``requests`` (the request log), :meth:`insert` / :meth:`update` / :meth:`delete` (which stamp
change versions and record deletes and key changes), :meth:`after_page` (run a mutation
while a client is paging) and ``before_write`` (callables ``(peer, method, resource, id)``
run before a client's PUT or DELETE of an item is applied: another client's change landing
just before ours), :meth:`hold_answer` (apply a request, then hold its answer back: a client
that dies meanwhile never hears that the source took it).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_LIMIT = 500
DEFAULT_LIMIT = 25
ED_FI = "uri://ed-fi.org"

# Natural keys: the names the ODS uses in /deletes ``keyValues`` and /keyChanges, and where each
# value sits in a resource. Query-by-example accepts the same names.
KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "schools": (("schoolId", "schoolId"),),
    "sessions": (
        ("schoolId", "schoolReference.schoolId"),
        ("schoolYear", "schoolYearTypeReference.schoolYear"),
        ("sessionName", "sessionName"),
    ),
    "gradingPeriods": (
        ("gradingPeriodDescriptor", "gradingPeriodDescriptor"),
        ("gradingPeriodName", "gradingPeriodName"),
        ("schoolId", "schoolReference.schoolId"),
        ("schoolYear", "schoolYearTypeReference.schoolYear"),
    ),
    "staffs": (("staffUniqueId", "staffUniqueId"),),
    "students": (("studentUniqueId", "studentUniqueId"),),
    "studentSchoolAssociations": (
        ("entryDate", "entryDate"),
        ("schoolId", "schoolReference.schoolId"),
        ("studentUniqueId", "studentReference.studentUniqueId"),
    ),
    "sections": (
        ("localCourseCode", "courseOfferingReference.localCourseCode"),
        ("schoolId", "courseOfferingReference.schoolId"),
        ("schoolYear", "courseOfferingReference.schoolYear"),
        ("sectionIdentifier", "sectionIdentifier"),
        ("sessionName", "courseOfferingReference.sessionName"),
    ),
    "studentSectionAssociations": (
        ("beginDate", "beginDate"),
        ("localCourseCode", "sectionReference.localCourseCode"),
        ("schoolId", "sectionReference.schoolId"),
        ("schoolYear", "sectionReference.schoolYear"),
        ("sectionIdentifier", "sectionReference.sectionIdentifier"),
        ("sessionName", "sectionReference.sessionName"),
        ("studentUniqueId", "studentReference.studentUniqueId"),
    ),
    "studentSchoolAttendanceEvents": (
        ("attendanceEventCategoryDescriptor", "attendanceEventCategoryDescriptor"),
        ("eventDate", "eventDate"),
        ("schoolId", "schoolReference.schoolId"),
        ("schoolYear", "sessionReference.schoolYear"),
        ("sessionName", "sessionReference.sessionName"),
        ("studentUniqueId", "studentReference.studentUniqueId"),
    ),
    "grades": (
        ("beginDate", "studentSectionAssociationReference.beginDate"),
        ("gradeTypeDescriptor", "gradeTypeDescriptor"),
        ("gradingPeriodDescriptor", "gradingPeriodReference.gradingPeriodDescriptor"),
        ("gradingPeriodName", "gradingPeriodReference.gradingPeriodName"),
        ("gradingPeriodSchoolYear", "gradingPeriodReference.schoolYear"),
        ("localCourseCode", "studentSectionAssociationReference.localCourseCode"),
        ("schoolId", "studentSectionAssociationReference.schoolId"),
        ("schoolYear", "studentSectionAssociationReference.schoolYear"),
        ("sectionIdentifier", "studentSectionAssociationReference.sectionIdentifier"),
        ("sessionName", "studentSectionAssociationReference.sessionName"),
        ("studentUniqueId", "studentSectionAssociationReference.studentUniqueId"),
    ),
    "disciplineIncidents": (
        ("incidentIdentifier", "incidentIdentifier"),
        ("schoolId", "schoolReference.schoolId"),
    ),
    "studentDisciplineIncidentBehaviorAssociations": (
        ("behaviorDescriptor", "behaviorDescriptor"),
        ("incidentIdentifier", "disciplineIncidentReference.incidentIdentifier"),
        ("schoolId", "disciplineIncidentReference.schoolId"),
        ("studentUniqueId", "studentReference.studentUniqueId"),
    ),
    "disciplineActions": (
        ("disciplineActionIdentifier", "disciplineActionIdentifier"),
        ("disciplineDate", "disciplineDate"),
        ("studentUniqueId", "studentReference.studentUniqueId"),
    ),
}

# Required non-key fields, checked on POST and PUT (the key fields are always required).
REQUIRED: dict[str, tuple[str, ...]] = {
    "disciplineIncidents": ("incidentDate",),
    "disciplineActions": ("disciplines", "responsibilitySchoolReference.schoolId"),
    "students": ("firstName", "lastSurname", "birthDate"),
    "schools": ("nameOfInstitution",),
}

# References checked on writes of the resources a client pushes (the ODS checks them all; the
# rest of the fixture is loaded by the peer itself and is consistent by construction).
# (path of the reference object, referenced resource, {key name in target: field in reference})
REFERENCES: dict[str, tuple[tuple[str, str, dict[str, str]], ...]] = {
    "disciplineIncidents": (("schoolReference", "schools", {"schoolId": "schoolId"}),),
    "studentDisciplineIncidentBehaviorAssociations": (
        ("studentReference", "students", {"studentUniqueId": "studentUniqueId"}),
        (
            "disciplineIncidentReference",
            "disciplineIncidents",
            {"incidentIdentifier": "incidentIdentifier", "schoolId": "schoolId"},
        ),
    ),
    "disciplineActions": (
        ("studentReference", "students", {"studentUniqueId": "studentUniqueId"}),
        ("responsibilitySchoolReference", "schools", {"schoolId": "schoolId"}),
    ),
}

KNOWN_DESCRIPTORS: dict[str, set[str]] = {
    "behaviorDescriptor": {
        "Fighting",
        "Defiance",
        "Disruption",
        "Bullying",
        "Theft",
        "School Code of Conduct",
        "State Offense",
        "Other",
    },
    "disciplineDescriptor": {
        "In School Suspension",
        "Out of School Suspension",
        "Detention",
        "Conference",
        "Expulsion",
    },
}

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}$")
_DESCRIPTOR = re.compile(r"^uri://[^#\s]+#.+$")


def dig(body: dict[str, Any], path: str) -> Any:
    value: Any = body
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        body = body.setdefault(part, {})
    body[parts[-1]] = value


def key_values(resource: str, body: dict[str, Any]) -> dict[str, Any]:
    return {name: dig(body, path) for name, path in KEYS[resource]}


class ProblemError(Exception):
    """An Ed-Fi problem details answer."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(problem.get("detail", ""))
        self.status = status
        self.problem = {**problem, "status": status}


def _bad_parameter(message: str) -> ProblemError:
    return ProblemError(
        400,
        {
            "type": "urn:ed-fi:api:bad-request:parameter",
            "title": "Parameter Validation Failed",
            "detail": "The request could not be processed. See 'errors' for details.",
            "errors": [message],
        },
    )


def _bad_data(errors: dict[str, list[str]]) -> ProblemError:
    return ProblemError(
        400,
        {
            "type": "urn:ed-fi:api:bad-request:data-validation-failed",
            "title": "Data Validation Failed",
            "detail": "Data validation failed. See 'validationErrors' for details.",
            "validationErrors": errors,
        },
    )


def _not_found(detail: str) -> ProblemError:
    return ProblemError(
        404, {"type": "urn:ed-fi:api:not-found", "title": "Not Found", "detail": detail}
    )


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Forced:
    """A queued answer: the next request whose path contains ``match`` gets it."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    match: str = "/"


@dataclass
class Held:
    """An answer held back after its request was applied (:meth:`EdFiPeer.hold_answer`)."""

    method: str
    match: str
    #: set once the request was applied (stored), just before the answer would go out
    applied: threading.Event = field(default_factory=threading.Event)
    #: set by the test to let the answer go (to a client that may be gone by then)
    release: threading.Event = field(default_factory=threading.Event)


#: Seconds a held answer waits for its release at most, so a failed test frees the thread.
HOLD_TIMEOUT = 120


@dataclass
class _Stored:
    id: str
    seq: int
    change_version: int
    body: dict[str, Any]
    etag: str
    modified: dt.datetime


class EdFiPeer:
    """The server. Use as a context manager; ``url`` is the API root (the connector's base_url)."""

    RESOURCES = tuple(KEYS)

    def __init__(
        self,
        *,
        client_id: str = "edfi-key",
        client_secret: str = "edfi-secret",
        school_year: int = 2027,
        year_specific: bool = False,
        token_ttl: int = 1800,
        fixture: bool = True,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.school_year = school_year
        self.year_specific = year_specific
        self.token_ttl = token_ttl
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.requests: list[Request] = []
        self.forced: deque[Forced] = deque()
        self.tokens: set[str] = set()
        self.oldest_change_version = 0
        self._lock = threading.RLock()
        self._change_version = 0
        self._seq = 0
        self._data: dict[str, dict[str, _Stored]] = {name: {} for name in self.RESOURCES}
        self._deletes: dict[str, list[dict[str, Any]]] = {name: [] for name in self.RESOURCES}
        self._key_changes: dict[str, list[dict[str, Any]]] = {name: [] for name in self.RESOURCES}
        self._page_calls: dict[str, int] = {}
        self._page_hooks: list[tuple[str, int, Callable[[EdFiPeer], None]]] = []
        self.before_write: list[Callable[[EdFiPeer, str, str, str], None]] = []
        self._holds: list[Held] = []
        if fixture:
            load_fixture(self)

        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, Nagle's algorithm and the
            # client's delayed ACK hold every answer for 40 ms.
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = peer._dispatch(
                    self.command, self.path, self.headers, body
                )
                held = peer._held(self.command, self.path)
                if held is not None:  # outside the lock: the peer goes on serving others
                    held.release.wait(HOLD_TIMEOUT)
                data = b"" if payload is None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    if payload is not None:
                        self.send_header("content-type", "application/json; charset=utf-8")
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> EdFiPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            for held in self._holds:
                held.release.set()
        self.server.shutdown()
        self.server.server_close()

    # --- Test knobs -----------------------------------------------------------------------

    def force(
        self,
        status: int,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        match: str = "/data/",
    ) -> None:
        """Queue an answer for the next request whose path contains ``match``."""
        with self._lock:
            self.forced.append(Forced(status, body, headers or {}, match))

    def refuse_as_referenced(self, match: str, *, by: str = "an existing item") -> None:
        """Answer the next request whose path contains ``match`` as Ed-Fi refuses to delete a
        resource another one still refers to: 409, dependent-item-exists."""
        self.force(
            409,
            body={
                "type": "urn:ed-fi:api:conflict:dependent-item-exists",
                "title": "Dependent Item Exists",
                "detail": f"referenced by {by}",
            },
            match=match,
        )

    def hold_answer(self, method: str, match: str) -> Held:
        """Apply the next ``method`` request whose path contains ``match`` as usual (the item
        is stored, its change version stamped), then hold the answer back until the test sets
        ``release``; ``applied`` is set when the change is stored. A client killed meanwhile
        never hears that the source took its write."""
        held = Held(method, match)
        with self._lock:
            self._holds.append(held)
        return held

    def _held(self, method: str, raw_path: str) -> Held | None:
        """The hold an applied request's answer waits on, marked applied (once only)."""
        path = urlsplit(raw_path).path
        with self._lock:
            for held in self._holds:
                if held.method == method and held.match in path and not held.applied.is_set():
                    held.applied.set()
                    return held
            return None

    def after_page(self, resource: str, page: int, action: Callable[[EdFiPeer], None]) -> None:
        """Run ``action(peer)`` right after the ``page``-th GET of ``resource``'s collection
        (1-based, counting from now) has been answered, before the client asks for the next."""
        with self._lock:
            done = self._page_calls.get(resource, 0)
            self._page_hooks.append((resource, done + page, action))

    @property
    def newest_change_version(self) -> int:
        with self._lock:
            return self._change_version

    def requests_to(self, fragment: str, method: str = "GET") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if fragment in r.path and r.method == method]

    def items(self, resource: str) -> list[dict[str, Any]]:
        """The resource's items as a GET answers them, in the server's order."""
        with self._lock:
            return [self._render(s) for s in self._data[resource].values()]

    def find(self, resource: str, **keys: Any) -> dict[str, Any] | None:
        """The item whose natural key fields equal ``keys`` (a subset of the key names)."""
        with self._lock:
            for stored in self._data[resource].values():
                values = key_values(resource, stored.body)
                if all(values.get(k) == v for k, v in keys.items()):
                    return self._render(stored)
            return None

    def insert(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create an item (its natural key must be new); returns it as a GET shows it."""
        with self._lock:
            keys = key_values(resource, body)
            if self._find_by_key(resource, keys) is not None:
                raise ValueError(f"{resource} {keys} exists already")
            return self._render(self._create(resource, copy.deepcopy(body)))

    def update(self, resource: str, id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change fields of an item (dotted paths allowed). A change to a natural key field is
        a key change, recorded for /keyChanges as the ODS does for a PUT that changes a key."""
        with self._lock:
            stored = self._data[resource][id]
            body = copy.deepcopy(stored.body)
            for path, value in changes.items():
                _set(body, path, value)
            self._replace(resource, stored, body)
            return self._render(stored)

    def delete(self, resource: str, id: str) -> None:
        with self._lock:
            stored = self._data[resource].pop(id)
            self._deletes[resource].append(
                {
                    "id": stored.id,
                    "changeVersion": self._next_version(),
                    "keyValues": key_values(resource, stored.body),
                }
            )

    def revoke_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    # --- Storage --------------------------------------------------------------------------

    def _next_version(self) -> int:
        self._change_version += 1
        return self._change_version

    def _stamp(self, stored: _Stored) -> None:
        stored.change_version = self._next_version()
        stored.etag = str(5_000_000_000_000_000_000 + stored.change_version * 7919 + stored.seq)
        stored.modified = self.clock()

    def _create(self, resource: str, body: dict[str, Any]) -> _Stored:
        self._seq += 1
        body.pop("id", None)
        stored = _Stored(uuid.uuid4().hex, self._seq, 0, body, "", self.clock())
        self._stamp(stored)
        self._data[resource][stored.id] = stored
        return stored

    def _replace(self, resource: str, stored: _Stored, body: dict[str, Any]) -> None:
        body.pop("id", None)
        old_keys = key_values(resource, stored.body)
        new_keys = key_values(resource, body)
        stored.body = body
        self._stamp(stored)
        if old_keys != new_keys:
            # The ODS records a key change with its own change version, after the update.
            self._key_changes[resource].append(
                {
                    "id": stored.id,
                    "changeVersion": self._next_version(),
                    "oldKeyValues": old_keys,
                    "newKeyValues": new_keys,
                }
            )

    def _find_by_key(self, resource: str, keys: dict[str, Any]) -> _Stored | None:
        for stored in self._data[resource].values():
            if key_values(resource, stored.body) == keys:
                return stored
        return None

    def _render(self, stored: _Stored) -> dict[str, Any]:
        modified = stored.modified.astimezone(dt.UTC)
        # .NET writes seven fractional digits; clients must cope with them.
        stamp = modified.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
        return {
            "id": stored.id,
            **copy.deepcopy(stored.body),
            "_etag": stored.etag,
            "_lastModifiedDate": stamp,
        }

    # --- HTTP -----------------------------------------------------------------------------

    def _dispatch(
        self, method: str, raw_path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        path = split.path
        with self._lock:
            self.requests.append(
                Request(method, path, query, {k.lower(): v for k, v in headers.items()}, body)
            )
            if self.forced and self.forced[0].match in path:
                forced = self.forced.popleft()
                return forced.status, dict(forced.headers), forced.body
            try:
                return self._route(method, path, query, headers, body)
            except ProblemError as exc:
                return exc.status, {}, exc.problem

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        if not path.startswith("/api/"):
            raise _not_found(f"No route for {path}.")
        parts = [p for p in path[len("/api/") :].split("/") if p]
        if parts == ["oauth", "token"] and method == "POST":
            return self._token(headers, body)
        self._authenticate(headers)
        if parts[:2] == ["changeQueries", "v1"] and method == "GET":
            rest = self._year(parts[2:])
            if rest == ["availableChangeVersions"]:
                return (
                    200,
                    {},
                    {
                        "oldestChangeVersion": self.oldest_change_version,
                        "newestChangeVersion": self._change_version,
                    },
                )
        if parts[:2] == ["data", "v3"]:
            rest = self._year(parts[2:])
            if len(rest) >= 2 and rest[0] == "ed-fi" and rest[1] in self._data:
                if_match = headers.get("if-match")
                return self._resource(method, rest[1], rest[2:], query, body, if_match)
        raise _not_found(f"No resource at {path}.")

    def _year(self, parts: list[str]) -> list[str]:
        if parts and parts[0].isdigit():
            if int(parts[0]) != self.school_year:
                raise _not_found(f"No ODS for school year {parts[0]}.")
            return parts[1:]
        if self.year_specific:
            raise _not_found("This ODS/API uses year-specific routes: add the school year.")
        return parts

    def _token(self, headers: Any, body: bytes) -> tuple[int, dict[str, str], Any]:
        fields: dict[str, str] = {}
        kind = (headers.get("content-type") or "").split(";")[0].strip()
        if kind == "application/json" and body:
            fields = {k: str(v) for k, v in json.loads(body).items()}
        else:
            fields = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        client_id, client_secret = fields.get("client_id"), fields.get("client_secret")
        auth = headers.get("authorization") or ""
        if auth.lower().startswith("basic "):
            decoded = base64.b64decode(auth[6:]).decode()
            client_id, _, client_secret = decoded.partition(":")
        if fields.get("grant_type") != "client_credentials":
            return 400, {}, {"error": "unsupported_grant_type"}
        if client_id != self.client_id or client_secret != self.client_secret:
            return 401, {}, {"error": "invalid_client"}
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return (
            200,
            {},
            {"access_token": token, "expires_in": self.token_ttl, "token_type": "bearer"},
        )

    def _authenticate(self, headers: Any) -> None:
        auth = headers.get("authorization") or ""
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            raise ProblemError(
                401,
                {
                    "type": "urn:ed-fi:api:security:authentication",
                    "title": "Authentication Failed",
                    "detail": "The caller could not be authenticated.",
                },
            )

    def _resource(
        self,
        method: str,
        resource: str,
        rest: list[str],
        query: dict[str, str],
        body: bytes,
        if_match: str | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        if method == "GET" and rest in ([], ["deletes"], ["keyChanges"]):
            return self._list(resource, rest[0] if rest else "", query)
        if method == "GET" and len(rest) == 1:
            stored = self._data[resource].get(rest[0])
            if stored is None:
                raise _not_found("The resource could not be found.")
            return 200, {"ETag": f'"{stored.etag}"'}, self._render(stored)
        if method in ("PUT", "DELETE") and len(rest) == 1:
            for hook in list(self.before_write):
                hook(self, method, resource, rest[0])
        if method == "POST" and not rest:
            return self._post(resource, self._json(body), if_match)
        if method == "PUT" and len(rest) == 1:
            return self._put(resource, rest[0], self._json(body), if_match)
        if method == "DELETE" and len(rest) == 1:
            stored = self._data[resource].get(rest[0])
            if stored is None:
                raise _not_found("Resource to delete was not found.")
            self._check_etag(stored, if_match)
            self._check_no_dependents(resource, stored)
            self.delete(resource, rest[0])
            return 204, {}, None
        raise ProblemError(
            405, {"type": "urn:ed-fi:api:method-not-allowed", "title": "Method Not Allowed"}
        )

    def _list(
        self, resource: str, kind: str, query: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        offset = self._int_parameter(query, "offset", 0, "Offset")
        limit = self._int_parameter(query, "limit", DEFAULT_LIMIT, "Limit")
        if offset < 0:
            raise _bad_parameter("Offset cannot be a negative value.")
        if not 0 <= limit <= MAX_LIMIT:
            raise _bad_parameter(
                f"Limit must be omitted or set to a numeric value between 0 and {MAX_LIMIT}."
            )
        low = self._int_parameter(query, "minChangeVersion", None, "MinChangeVersion")
        high = self._int_parameter(query, "maxChangeVersion", None, "MaxChangeVersion")

        def in_window(version: int) -> bool:
            return (low is None or version >= low) and (high is None or version <= high)

        if kind == "deletes":
            rows = [
                copy.deepcopy(r) for r in self._deletes[resource] if in_window(r["changeVersion"])
            ]
        elif kind == "keyChanges":
            rows = [
                copy.deepcopy(r)
                for r in self._key_changes[resource]
                if in_window(r["changeVersion"])
            ]
        else:
            names = {name for name, _ in KEYS[resource]}
            filters = {k: v for k, v in query.items() if k in names}
            rows = []
            for stored in self._data[resource].values():
                if not in_window(stored.change_version):
                    continue
                values = key_values(resource, stored.body)
                if all(str(values[k]) == v for k, v in filters.items()):
                    rows.append(self._render(stored))
        headers = {}
        if query.get("totalCount", "").lower() == "true":
            headers["Total-Count"] = str(len(rows))
        page = rows[offset : offset + limit]
        if not kind:
            self._page_calls[resource] = self._page_calls.get(resource, 0) + 1
            calls = self._page_calls[resource]
            due = [h for h in self._page_hooks if h[0] == resource and h[1] == calls]
            for hook in due:
                self._page_hooks.remove(hook)
                hook[2](self)
        return 200, headers, page

    @staticmethod
    def _int_parameter(query: dict[str, str], name: str, default: Any, label: str) -> Any:
        if name not in query:
            return default
        try:
            return int(query[name])
        except ValueError:
            raise _bad_parameter(f"{label} must be a numeric value, not '{query[name]}'.") from None

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        if not body:
            raise ProblemError(
                400,
                {
                    "type": "urn:ed-fi:api:bad-request",
                    "title": "Bad Request",
                    "detail": "The request could not be processed. See 'errors' for details.",
                    "errors": ["A non-empty request body is required."],
                },
            )
        try:
            value = json.loads(body)
        except ValueError as exc:
            raise ProblemError(
                400,
                {
                    "type": "urn:ed-fi:api:bad-request",
                    "title": "Bad Request",
                    "detail": "The request could not be processed. See 'errors' for details.",
                    "errors": [f"The request body is not valid JSON: {exc}"],
                },
            ) from None
        if not isinstance(value, dict):
            raise _bad_data({"$": ["The request body must be a JSON object."]})
        return value

    def _validate(self, resource: str, body: dict[str, Any]) -> None:
        errors: dict[str, list[str]] = {}
        required = [path for _, path in KEYS[resource]] + list(REQUIRED.get(resource, ()))
        for path in required:
            value = dig(body, path)
            if value is None or value == "" or value == []:
                errors[f"$.{path}"] = [f"{path.split('.')[-1]} is required."]

        def walk(value: Any, path: str) -> None:
            if isinstance(value, dict):
                for name, item in value.items():
                    walk(item, f"{path}.{name}")
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    walk(item, f"{path}[{index}]")
            elif isinstance(value, str):
                name = path.rsplit(".", 1)[-1]
                if name.endswith("Date") and not _DATE.match(value):
                    errors.setdefault(path, []).append(f"{name} '{value}' is not a valid date.")
                elif name.endswith("Time") and not _TIME.match(value):
                    errors.setdefault(path, []).append(
                        f"{name} '{value}' is not a valid time (HH:MM:SS)."
                    )
                elif name.endswith("Descriptor"):
                    if not _DESCRIPTOR.match(value):
                        errors.setdefault(path, []).append(
                            f"{name} '{value}' is not a descriptor URI (namespace#codeValue)."
                        )
                    elif name in KNOWN_DESCRIPTORS and (
                        value.split("#", 1)[1] not in KNOWN_DESCRIPTORS[name]
                    ):
                        type_name = name[0].upper() + name[1:]
                        errors.setdefault(path, []).append(
                            f"{type_name} value '{value}' does not exist."
                        )

        walk(body, "$")
        if errors:
            raise _bad_data(errors)
        for ref_path, target, mapping in REFERENCES.get(resource, ()):
            reference = dig(body, ref_path) or {}
            wanted = {key: reference.get(field_) for key, field_ in mapping.items()}
            names = dict(KEYS[target])
            found = any(
                all(dig(s.body, names[k]) == v for k, v in wanted.items())
                for s in self._data[target].values()
            )
            if not found:
                label = target[0].upper() + target[1:-1]
                raise ProblemError(
                    409,
                    {
                        "type": "urn:ed-fi:api:conflict:unresolved-reference",
                        "title": "Unresolved Reference",
                        "detail": f"The referenced '{label}' resource does not exist.",
                    },
                )
        if resource == "disciplineActions":
            sdiba = "studentDisciplineIncidentBehaviorAssociations"
            for index, link in enumerate(body.get(sdiba) or []):
                ref = (link or {}).get(f"{sdiba[:-1]}Reference") or {}
                wanted = {name: ref.get(name) for name, _ in KEYS[sdiba]}
                if self._find_by_key(sdiba, wanted) is None:
                    raise ProblemError(
                        409,
                        {
                            "type": "urn:ed-fi:api:conflict:unresolved-reference",
                            "title": "Unresolved Reference",
                            "detail": f"The referenced '{sdiba[0].upper()}{sdiba[1:-1]}'"
                            f" resource does not exist ({sdiba}[{index}]).",
                        },
                    )

    @staticmethod
    def _check_etag(stored: _Stored, if_match: str | None) -> None:
        if if_match is None:
            return
        if if_match.strip() != "*" and if_match.strip().strip('"') != stored.etag:
            raise ProblemError(
                412,
                {
                    "type": "urn:ed-fi:api:optimistic-lock-failed",
                    "title": "Optimistic Lock Failed",
                    "detail": "The resource item has been modified by another user.",
                    "errors": [
                        "The resource item's etag value does not match what was specified in "
                        "the 'If-Match' request header indicating that it has been modified by "
                        "another client since it was last retrieved."
                    ],
                },
            )

    def _check_no_dependents(self, resource: str, stored: _Stored) -> None:
        """The ODS refuses to delete an item that another item references."""
        keys = key_values(resource, stored.body)
        dependents: list[str] = []
        for other, refs in REFERENCES.items():
            for ref_path, target, mapping in refs:
                if target != resource:
                    continue
                for item in self._data[other].values():
                    reference = dig(item.body, ref_path) or {}
                    if all(reference.get(f) == keys[k] for k, f in mapping.items()):
                        dependents.append(other)
                        break
        sdiba = "studentDisciplineIncidentBehaviorAssociations"
        if resource == sdiba:
            for item in self._data["disciplineActions"].values():
                for link in item.body.get(sdiba) or []:
                    ref = (link or {}).get(f"{sdiba[:-1]}Reference") or {}
                    if all(ref.get(name) == keys[name] for name, _ in KEYS[sdiba]):
                        dependents.append("disciplineActions")
                        break
        if dependents:
            names = ", ".join(sorted({d[0].upper() + d[1:-1] for d in dependents}))
            raise ProblemError(
                409,
                {
                    "type": "urn:ed-fi:api:conflict:dependent-item-exists",
                    "title": "Dependent Item Exists",
                    "detail": "The requested action cannot be performed because this item is "
                    f"referenced by existing {names} item(s).",
                },
            )

    def _post(
        self, resource: str, body: dict[str, Any], if_match: str | None = None
    ) -> tuple[int, dict[str, str], Any]:
        self._validate(resource, body)
        existing = self._find_by_key(resource, key_values(resource, body))
        if existing is not None:
            self._check_etag(existing, if_match)
            self._replace(resource, existing, body)
            return 200, {"ETag": f'"{existing.etag}"'}, None
        stored = self._create(resource, body)
        location = f"{self.url}/data/v3/ed-fi/{resource}/{stored.id}"
        return 201, {"Location": location, "ETag": f'"{stored.etag}"'}, None

    def _put(
        self, resource: str, id: str, body: dict[str, Any], if_match: str | None = None
    ) -> tuple[int, dict[str, str], Any]:
        stored = self._data[resource].get(id)
        if stored is None:
            raise _not_found("Resource to update was not found.")
        self._check_etag(stored, if_match)
        if body.get("id") not in (None, id):
            raise _bad_data({"$.id": ["Resource identifier in the body does not match the URL."]})
        self._validate(resource, body)
        clash = self._find_by_key(resource, key_values(resource, body))
        if clash is not None and clash is not stored:
            raise ProblemError(
                409,
                {
                    "type": "urn:ed-fi:api:conflict:not-unique",
                    "title": "Identifying Values Are Not Unique",
                    "detail": "Another resource has the same natural key.",
                },
            )
        self._replace(resource, stored, body)
        return 204, {"ETag": f'"{stored.etag}"'}, None


# --- Fixture -------------------------------------------------------------------------------


def d(namespace_type: str, code: str, namespace: str = ED_FI) -> str:
    """A descriptor URI: d("GradeLevelDescriptor", "Ninth grade")."""
    return f"{namespace}/{namespace_type}#{code}"


YEAR = 2027
FALL = "2026-2027 Fall Semester"
SPRING = "2026-2027 Spring Semester"

SCHOOLS = [
    {
        "schoolId": 255901001,
        "nameOfInstitution": "Lincoln Elementary School",
        "shortNameOfInstitution": "LES",
        "grades": [
            "Kindergarten",
            "First grade",
            "Second grade",
            "Third grade",
            "Fourth grade",
            "Fifth grade",
        ],
        "category": "Elementary School",
        "nces": "480000100001",
    },
    {
        "schoolId": 255901107,
        "nameOfInstitution": "Roosevelt High School",
        "shortNameOfInstitution": "RHS",
        "grades": ["Twelfth grade", "Ninth grade", "Tenth grade", "Eleventh grade"],
        "category": "High School",
        "nces": "480000100107",
    },
]

STUDENTS = [
    # studentUniqueId, first, middle, last, birth date, school index, grade, preferred name
    ("604821", "Ava", "Marie", "Lopez", "2019-03-14", 0, "Second grade", None),
    ("604822", "Ben", None, "Okafor", "2018-07-02", 0, "Third grade", "Benny"),
    ("604823", "Chloe", "Ann", "Nguyen", "2017-11-23", 0, "Fourth grade", None),
    ("604824", "Dev", None, "Patel", "2016-01-30", 0, "Fifth grade", None),
    ("604825", "Ella", "Rose", "Smith", "2020-05-05", 0, "Kindergarten", None),
    ("604826", "Finn", None, "Murphy", "2011-09-17", 1, "Ninth grade", None),
    ("604827", "Grace", "Lee", "Kim", "2010-04-08", 1, "Tenth grade", "Gracie"),
    ("604828", "Hugo", None, "Silva", "2009-12-12", 1, "Eleventh grade", None),
    ("604829", "Iris", "Jane", "Brown", "2008-06-21", 1, "Twelfth grade", None),
    ("604830", "Jonah", None, "Cohen", "2010-10-10", 1, "Tenth grade", None),
]

STAFF = [
    ("207219", "Maria", "Garcia", "mgarcia@district.example.org"),
    ("207220", "James", "Wilson", "jwilson@district.example.org"),
    ("207221", "Priya", "Shah", "pshah@district.example.org"),
    ("207222", "Tom", "Baker", None),
]

SECTIONS = [
    # school index, section id, course code, name, period, room
    (0, "R2-01", "READ2", "Reading 2", "P1", "104"),
    (0, "M4-01", "MATH4", "Math 4", "P2", "110"),
    (1, "ALG1-01", "ALG1", "Algebra I", "P3", "201"),
    (1, "BIO-02", "BIO", "Biology", "P4", "Lab 2"),
]


def load_fixture(peer: EdFiPeer) -> None:
    """A small district: 2 schools, school year 2027, 10 students, 4 staff, 4 sections, ..."""
    school_ids = [s["schoolId"] for s in SCHOOLS]
    for school in SCHOOLS:
        peer.insert(
            "schools",
            {
                "schoolId": school["schoolId"],
                "nameOfInstitution": school["nameOfInstitution"],
                "shortNameOfInstitution": school["shortNameOfInstitution"],
                "educationOrganizationCategories": [
                    {
                        "educationOrganizationCategoryDescriptor": d(
                            "EducationOrganizationCategoryDescriptor", "School"
                        )
                    }
                ],
                "gradeLevels": [
                    {"gradeLevelDescriptor": d("GradeLevelDescriptor", g)} for g in school["grades"]
                ],
                "schoolCategories": [
                    {"schoolCategoryDescriptor": d("SchoolCategoryDescriptor", school["category"])}
                ],
                "identificationCodes": [
                    {
                        "educationOrganizationIdentificationSystemDescriptor": d(
                            "EducationOrganizationIdentificationSystemDescriptor", "NCES"
                        ),
                        "identificationCode": school["nces"],
                    }
                ],
                "localEducationAgencyReference": {"localEducationAgencyId": 255901},
            },
        )
    for school_id in school_ids:
        for name, descriptor, begin, end, days in (
            ("Q1", "First Nine Weeks", "2026-08-17", "2026-10-16", 44),
            ("Q2", "Second Nine Weeks", "2026-10-19", "2026-12-18", 40),
        ):
            peer.insert(
                "gradingPeriods",
                {
                    "gradingPeriodDescriptor": d("GradingPeriodDescriptor", descriptor),
                    "gradingPeriodName": name,
                    "schoolReference": {"schoolId": school_id},
                    "schoolYearTypeReference": {"schoolYear": YEAR},
                    "beginDate": begin,
                    "endDate": end,
                    "periodSequence": 1 if name == "Q1" else 2,
                    "totalInstructionalDays": days,
                },
            )
        for session_name, term, begin, end, periods in (
            (FALL, "Fall Semester", "2026-08-17", "2026-12-18", ["Q1", "Q2"]),
            (SPRING, "Spring Semester", "2027-01-05", "2027-05-28", []),
        ):
            peer.insert(
                "sessions",
                {
                    "sessionName": session_name,
                    "schoolReference": {"schoolId": school_id},
                    "schoolYearTypeReference": {"schoolYear": YEAR},
                    "beginDate": begin,
                    "endDate": end,
                    "termDescriptor": d("TermDescriptor", term),
                    "totalInstructionalDays": 84,
                    "gradingPeriods": [
                        {
                            "gradingPeriodReference": {
                                "gradingPeriodDescriptor": d(
                                    "GradingPeriodDescriptor",
                                    "First Nine Weeks" if p == "Q1" else "Second Nine Weeks",
                                ),
                                "gradingPeriodName": p,
                                "schoolId": school_id,
                                "schoolYear": YEAR,
                            }
                        }
                        for p in periods
                    ],
                },
            )
    for unique_id, first, last, email in STAFF:
        body: dict[str, Any] = {
            "staffUniqueId": unique_id,
            "firstName": first,
            "lastSurname": last,
        }
        if email:
            body["electronicMails"] = [
                {
                    "electronicMailAddress": email,
                    "electronicMailTypeDescriptor": d("ElectronicMailTypeDescriptor", "Work"),
                }
            ]
        peer.insert("staffs", body)
    for unique_id, first, middle, last, birth, school, grade, preferred in STUDENTS:
        body = {
            "studentUniqueId": unique_id,
            "firstName": first,
            "lastSurname": last,
            "birthDate": birth,
        }
        if middle:
            body["middleName"] = middle
        if preferred:
            body["preferredFirstName"] = preferred
        peer.insert("students", body)
        association = {
            "entryDate": "2026-08-17",
            "schoolReference": {"schoolId": school_ids[school]},
            "studentReference": {"studentUniqueId": unique_id},
            "entryGradeLevelDescriptor": d("GradeLevelDescriptor", grade),
            "schoolYearTypeReference": {"schoolYear": YEAR},
        }
        if unique_id == "604824":
            association["exitWithdrawDate"] = "2026-11-20"
            association["exitWithdrawTypeDescriptor"] = d(
                "ExitWithdrawTypeDescriptor", "Transferred to another district"
            )
        peer.insert("studentSchoolAssociations", association)
    for school, identifier, course, name, period, room in SECTIONS:
        school_id = school_ids[school]
        peer.insert(
            "sections",
            {
                "sectionIdentifier": identifier,
                "courseOfferingReference": {
                    "localCourseCode": course,
                    "schoolId": school_id,
                    "schoolYear": YEAR,
                    "sessionName": FALL,
                },
                "sectionName": name,
                "classPeriods": [
                    {"classPeriodReference": {"classPeriodName": period, "schoolId": school_id}}
                ],
                "locationReference": {"classroomIdentificationCode": room, "schoolId": school_id},
                "availableCredits": 1.0,
            },
        )
    for unique_id, _first, _middle, _last, _birth, school, _grade, _pref in STUDENTS:
        for section_school, identifier, course, _name, _period, _room in SECTIONS:
            if section_school != school:
                continue
            section_ref = {
                "localCourseCode": course,
                "schoolId": school_ids[school],
                "schoolYear": YEAR,
                "sectionIdentifier": identifier,
                "sessionName": FALL,
            }
            peer.insert(
                "studentSectionAssociations",
                {
                    "beginDate": "2026-08-17",
                    "sectionReference": section_ref,
                    "studentReference": {"studentUniqueId": unique_id},
                    "homeroomIndicator": identifier.startswith("R2"),
                },
            )
            if identifier in ("M4-01", "ALG1-01"):
                peer.insert(
                    "grades",
                    {
                        "gradeTypeDescriptor": d("GradeTypeDescriptor", "Grading Period"),
                        "gradingPeriodReference": {
                            "gradingPeriodDescriptor": d(
                                "GradingPeriodDescriptor", "First Nine Weeks"
                            ),
                            "gradingPeriodName": "Q1",
                            "schoolId": school_ids[school],
                            "schoolYear": YEAR,
                        },
                        "studentSectionAssociationReference": {
                            **section_ref,
                            "beginDate": "2026-08-17",
                            "studentUniqueId": unique_id,
                        },
                        "letterGradeEarned": "B",
                        "numericGradeEarned": 85.0,
                        "diagnosticStatement": "Steady progress",
                    },
                )
    for unique_id, date, category, minutes in (
        ("604821", "2026-09-01", "Excused Absence", 0),
        ("604822", "2026-09-01", "Tardy", 375),
        ("604826", "2026-09-02", "Unexcused Absence", 0),
        ("604827", "2026-09-02", "In Attendance", 390),
        ("604828", "2026-09-03", "Early departure", 200),
    ):
        school = next(s[5] for s in STUDENTS if s[0] == unique_id)
        peer.insert(
            "studentSchoolAttendanceEvents",
            {
                "attendanceEventCategoryDescriptor": d(
                    "AttendanceEventCategoryDescriptor", category
                ),
                "eventDate": date,
                "schoolReference": {"schoolId": school_ids[school]},
                "sessionReference": {
                    "schoolId": school_ids[school],
                    "schoolYear": YEAR,
                    "sessionName": FALL,
                },
                "studentReference": {"studentUniqueId": unique_id},
                "schoolAttendanceDuration": minutes,
            },
        )
    for identifier, school, date, time, behavior, student, discipline in (
        ("INC-0001", 1, "2026-09-15", "10:20:00", "Fighting", "604826", "Out of School Suspension"),
        ("INC-0002", 0, "2026-09-16", "13:05:00", "Defiance", "604822", "Conference"),
        ("INC-0003", 1, "2026-09-20", "08:45:00", "Disruption", "604828", None),
    ):
        school_id = school_ids[school]
        peer.insert(
            "disciplineIncidents",
            {
                "incidentIdentifier": identifier,
                "schoolReference": {"schoolId": school_id},
                "incidentDate": date,
                "incidentTime": time,
                "behaviors": [{"behaviorDescriptor": d("BehaviorDescriptor", behavior)}],
                "incidentDescription": f"Narrative of {identifier} (confidential).",
                "incidentLocationDescriptor": d("IncidentLocationDescriptor", "Classroom"),
                "reporterDescriptionDescriptor": d("ReporterDescriptionDescriptor", "Staff"),
            },
        )
        link = {
            "behaviorDescriptor": d("BehaviorDescriptor", behavior),
            "incidentIdentifier": identifier,
            "schoolId": school_id,
            "studentUniqueId": student,
        }
        peer.insert(
            "studentDisciplineIncidentBehaviorAssociations",
            {
                "behaviorDescriptor": link["behaviorDescriptor"],
                "disciplineIncidentReference": {
                    "incidentIdentifier": identifier,
                    "schoolId": school_id,
                },
                "studentReference": {"studentUniqueId": student},
            },
        )
        if discipline:
            peer.insert(
                "disciplineActions",
                {
                    "disciplineActionIdentifier": f"ACT-{identifier[4:]}",
                    "disciplineDate": date,
                    "disciplines": [
                        {"disciplineDescriptor": d("DisciplineDescriptor", discipline)}
                    ],
                    "studentReference": {"studentUniqueId": student},
                    "responsibilitySchoolReference": {"schoolId": school_id},
                    "disciplineActionLength": 2.0 if "Suspension" in discipline else 0.0,
                    "studentDisciplineIncidentBehaviorAssociations": [
                        {"studentDisciplineIncidentBehaviorAssociationReference": link}
                    ],
                },
            )
