"""OneRoster 1.2 rostering REST consumer (1EdTech's REST/JSON binding of the rostering service).

Reads orgs, academic sessions, users (students, staff, guardians), classes, enrollments and
demographics from ``<base_url>/<collection>`` with a client-credentials token, and hands them
over under the **OneRoster 1.2 CSV column names** (``givenName``, ``orgSourcedIds``,
``termSourcedIds`` ...), so that one default mapping (:data:`ONEROSTER_DEFAULT_MAPPINGS`) serves
both this connector and the CSV one.

A few fields are not columns of the CSV file the record comes from; both connectors derive them
the same way (the CSV one from the package's other files):

- users: ``role`` and ``orgSourcedIds``. In the 1.2 CSV binding they moved out of users.csv into
  roles.csv; here they come from the user's ``roles``. ``role`` is the role of the primary
  roleType (in the primary org when there are several); :func:`role_fields` does it.
- students: ``birthDate``, from the demographics record with the user's sourcedId (users carry
  no birth date in OneRoster; demographics.csv does).
- demographics: ``raceEthnicityCode``, one EDFacts code from the race flags (:func:`race_code`).
- classes: ``courseCode`` and ``courseTitle``, from the class's course (the hub's sections carry
  the course code and title, OneRoster classes only a reference to the course).

Incremental reads filter on ``dateLastModified`` inside a window fixed by :meth:`begin` before
anything is read (see its docstring), and ``status=tobedeleted`` records arrive as deletes.

A JSON attribute the 1.2 binding does not define for the collection (:data:`JSON_FIELDS`; a
vendor's addition outside ``metadata``) is handed over under its own name, so a mapping can
use it, and is reported as an unknown field: the run's warnings name it, as the CSV connector's
do for an unknown column. It never fails the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from integrations.connectors.base import (
    Connector,
    ConnectorError,
    EntityRead,
    Param,
    ReadMode,
    SourceRecord,
    Window,
)
from integrations.connectors.http import HttpStatusError, SourceHttp
from integrations.connectors.registry import register

DEFAULT_SCOPE = (
    "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-core.readonly "
    "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-demographics.readonly"
)

#: OneRoster 1.2 user roles read as staff. Teachers come from /teachers; the others from /users
#: filtered by role (no dedicated endpoint exists for them).
STAFF_ROLES = (
    "principal",
    "siteAdministrator",
    "districtAdministrator",
    "systemAdministrator",
    "counselor",
    "aide",
    "proctor",
)
GUARDIAN_ROLES = ("parent", "guardian", "relative")

#: The race flags of a OneRoster demographics record, with the EDFacts code each one means.
RACE_FLAGS = {
    "americanIndianOrAlaskaNative": "AM7",
    "asian": "AS7",
    "blackOrAfricanAmerican": "BL7",
    "nativeHawaiianOrOtherPacificIslander": "PI7",
    "white": "WH7",
}

#: Subtracted from the source's clock for the window's upper bound. A SIS stamps
#: dateLastModified when it writes a record, and the write may become visible to readers a moment
#: later (a transaction still open, a replica lagging). A record stamped just before "now" but not
#: yet visible would fall below this run's upper bound unread, and the next run starts above it:
#: lost. Keeping the bound a few seconds in the past leaves such records to the next run.
UPPER_BOUND_MARGIN = timedelta(seconds=5)


# --- field derivations shared with the CSV connector --------------------------------------------


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() == "true" if value is not None else False


def race_code(fields: dict[str, Any]) -> str:
    """The EDFacts seven-category code for a OneRoster demographics record ("" when unknown).

    OneRoster keeps one "true"/"false" flag per race plus Hispanic/Latino ethnicity and a "two
    or more races" flag. EDFacts reports Hispanic/Latino of any race as HI7; otherwise two or
    more races (the explicit flag, or several race flags) is MU7; otherwise the one race's code.
    """
    if _truthy(fields.get("hispanicOrLatinoEthnicity")):
        return "HI7"
    races = [code for flag, code in RACE_FLAGS.items() if _truthy(fields.get(flag))]
    if _truthy(fields.get("demographicRaceTwoOrMoreRaces")) or len(races) > 1:
        return "MU7"
    return races[0] if races else ""


def role_fields(
    roles: Iterable[tuple[str, str, str]], primary_org: str | None = None
) -> dict[str, str | None]:
    """``role`` and ``orgSourcedIds`` of a user from its roles as (roleType, role, orgSourcedId).

    The role is the one of roleType "primary" (OneRoster: exactly one primary role per org),
    preferring the user's primary org; orgSourcedIds lists every org of the user once, in order.
    The CSV connector passes the user's rows of roles.csv.
    """
    roles = [(t or "", r or "", o or "") for t, r, o in roles]
    primary = [x for x in roles if x[0] == "primary"] or roles
    chosen = next((x for x in primary if primary_org and x[2] == primary_org), None)
    chosen = chosen or (primary[0] if primary else None)
    orgs = list(dict.fromkeys(o for _t, _r, o in roles if o))
    return {
        "role": chosen[1] if chosen else None,
        "orgSourcedIds": ",".join(orgs) if orgs else None,
    }


# --- JSON (REST binding) -> CSV column names --------------------------------------------------

_BASE_FIELDS = ("sourcedId", "status", "dateLastModified", "metadata")
#: The attributes the OneRoster 1.2 REST binding defines per collection (envelope key), from
#: 1EdTech's OpenAPI definition of the rostering service. ``role`` and ``orgs`` of users are
#: 1.1's, still sent by servers that speak both and read by :func:`_user_fields`.
JSON_FIELDS: dict[str, frozenset[str]] = {
    "orgs": frozenset((*_BASE_FIELDS, "name", "type", "identifier", "parent", "children")),
    "academicSessions": frozenset(
        (*_BASE_FIELDS, "title", "startDate", "endDate", "type", "parent", "children", "schoolYear")
    ),
    "users": frozenset(
        (
            *_BASE_FIELDS,
            "userMasterIdentifier",
            "username",
            "userIds",
            "enabledUser",
            "givenName",
            "familyName",
            "middleName",
            "preferredFirstName",
            "preferredMiddleName",
            "preferredLastName",
            "pronouns",
            "roles",
            "userProfiles",
            "primaryOrg",
            "identifier",
            "email",
            "sms",
            "phone",
            "agents",
            "grades",
            "password",
            "resources",
            "role",
            "orgs",
        )
    ),
    "classes": frozenset(
        (
            *_BASE_FIELDS,
            "title",
            "classCode",
            "classType",
            "location",
            "grades",
            "subjects",
            "course",
            "school",
            "terms",
            "subjectCodes",
            "periods",
            "resources",
        )
    ),
    "enrollments": frozenset(
        (*_BASE_FIELDS, "user", "class", "school", "role", "primary", "beginDate", "endDate")
    ),
    "demographics": frozenset(
        (
            *_BASE_FIELDS,
            "birthDate",
            "sex",
            "americanIndianOrAlaskaNative",
            "asian",
            "blackOrAfricanAmerican",
            "nativeHawaiianOrOtherPacificIslander",
            "white",
            "demographicRaceTwoOrMoreRaces",
            "hispanicOrLatinoEthnicity",
            "countryOfBirthCode",
            "stateOfBirthAbbreviation",
            "cityOfBirth",
            "publicSchoolResidenceStatus",
        )
    ),
}
#: Fields the connector adds to records besides the mapped attributes (see the module
#: docstring): known, so never reported.
DERIVED_FIELDS = frozenset(("birthDate", "courseCode", "courseTitle"))


def _unknown_attributes(item: dict[str, Any], key: str) -> dict[str, Any]:
    """The item's attributes the binding does not define for the collection ``key``, as
    source fields (objects and lists as compact JSON)."""
    known = JSON_FIELDS.get(key)
    if known is None:
        return {}
    out: dict[str, Any] = {}
    for name, value in item.items():
        if name in known:
            continue
        if isinstance(value, dict | list):
            out[name] = json.dumps(value, separators=(",", ":"), sort_keys=True)
        else:
            out[name] = _scalar(value)
    return out


def _ref(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("sourcedId") or None
    return str(value) if value else None


def _refs(value: Any) -> str | None:
    if not isinstance(value, list):
        return _ref(value)
    ids = [i for i in (_ref(v) for v in value) if i]
    return ",".join(ids) if ids else None


def _joined(value: Any) -> str | None:
    if isinstance(value, list):
        items = [str(v) for v in value if v is not None and str(v) != ""]
        return ",".join(items) if items else None
    return _scalar(value)


def _scalar(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _base(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "sourcedId": item.get("sourcedId"),
        "status": item.get("status"),
        "dateLastModified": item.get("dateLastModified"),
    }


def _user_fields(item: dict[str, Any]) -> dict[str, Any]:
    primary_org = _ref(item.get("primaryOrg"))
    if isinstance(item.get("roles"), list):
        derived = role_fields(
            (
                (r.get("roleType"), r.get("role"), _ref(r.get("org")))
                for r in item["roles"]
                if isinstance(r, dict)
            ),
            primary_org,
        )
    else:  # a 1.1-style server: one role, and the orgs as a list
        derived = {"role": _scalar(item.get("role")), "orgSourcedIds": _refs(item.get("orgs"))}
    user_ids = item.get("userIds") or []
    return {
        **_base(item),
        "enabledUser": _scalar(item.get("enabledUser")),
        "orgSourcedIds": derived["orgSourcedIds"],
        "role": derived["role"],
        "username": _scalar(item.get("username")),
        # The CSV binding's form of userIds: {type:identifier},{type:identifier}
        "userIds": ",".join(
            f"{{{u.get('type', '')}:{u.get('identifier', '')}}}"
            for u in user_ids
            if isinstance(u, dict)
        )
        or None,
        "givenName": _scalar(item.get("givenName")),
        "familyName": _scalar(item.get("familyName")),
        "middleName": _scalar(item.get("middleName")),
        "identifier": _scalar(item.get("identifier")),
        "email": _scalar(item.get("email")),
        "sms": _scalar(item.get("sms")),
        "phone": _scalar(item.get("phone")),
        "agentSourcedIds": _refs(item.get("agents")),
        "grades": _joined(item.get("grades")),
        "userMasterIdentifier": _scalar(item.get("userMasterIdentifier")),
        # JSON says preferredFirstName/LastName, the CSV binding preferredGivenName/FamilyName.
        "preferredGivenName": _scalar(item.get("preferredFirstName")),
        "preferredMiddleName": _scalar(item.get("preferredMiddleName")),
        "preferredFamilyName": _scalar(item.get("preferredLastName")),
        "primaryOrgSourcedId": primary_org,
        "pronouns": _scalar(item.get("pronouns")),
    }


def _org_fields(item: dict[str, Any]) -> dict[str, Any]:
    return {
        **_base(item),
        "name": _scalar(item.get("name")),
        "type": _scalar(item.get("type")),
        "identifier": _scalar(item.get("identifier")),
        "parentSourcedId": _ref(item.get("parent")),
    }


def _session_fields(item: dict[str, Any]) -> dict[str, Any]:
    return {
        **_base(item),
        "title": _scalar(item.get("title")),
        "type": _scalar(item.get("type")),
        "startDate": _scalar(item.get("startDate")),
        "endDate": _scalar(item.get("endDate")),
        "parentSourcedId": _ref(item.get("parent")),
        "schoolYear": _scalar(item.get("schoolYear")),
    }


def _class_fields(item: dict[str, Any]) -> dict[str, Any]:
    return {
        **_base(item),
        "title": _scalar(item.get("title")),
        "grades": _joined(item.get("grades")),
        "courseSourcedId": _ref(item.get("course")),
        "classCode": _scalar(item.get("classCode")),
        "classType": _scalar(item.get("classType")),
        "location": _scalar(item.get("location")),
        "schoolSourcedId": _ref(item.get("school")),
        "termSourcedIds": _refs(item.get("terms")),
        "subjects": _joined(item.get("subjects")),
        "subjectCodes": _joined(item.get("subjectCodes")),
        "periods": _joined(item.get("periods")),
    }


def _enrollment_fields(item: dict[str, Any]) -> dict[str, Any]:
    return {
        **_base(item),
        "classSourcedId": _ref(item.get("class")),
        "schoolSourcedId": _ref(item.get("school")),
        "userSourcedId": _ref(item.get("user")),
        "role": _scalar(item.get("role")),
        "primary": _scalar(item.get("primary")),
        "beginDate": _scalar(item.get("beginDate")),
        "endDate": _scalar(item.get("endDate")),
    }


def _demographic_fields(item: dict[str, Any]) -> dict[str, Any]:
    fields = {
        **_base(item),
        "birthDate": _scalar(item.get("birthDate")),
        "sex": _scalar(item.get("sex")),
        **{
            flag: _scalar(item.get(flag))
            for flag in (
                *RACE_FLAGS,
                "demographicRaceTwoOrMoreRaces",
                "hispanicOrLatinoEthnicity",
            )
        },
        "countryOfBirthCode": _scalar(item.get("countryOfBirthCode")),
        "stateOfBirthAbbreviation": _scalar(item.get("stateOfBirthAbbreviation")),
        "cityOfBirth": _scalar(item.get("cityOfBirth")),
        "publicSchoolResidenceStatus": _scalar(item.get("publicSchoolResidenceStatus")),
    }
    fields["raceEthnicityCode"] = race_code(fields) or None
    return fields


# --- default mappings ---------------------------------------------------------------------------


def _rule(target: str, source: str | list[str] | None, *transforms: dict) -> dict[str, Any]:
    return {"target": target, "source": source, "transforms": list(transforms)}


_TRIM = {"op": "trim"}
_LOWER = {"op": "case", "to": "lower"}
_UPPER = {"op": "case", "to": "upper"}
_DATE = {"op": "parse_date", "format": "%Y-%m-%d"}
_FIRST = {"op": "split", "separator": ",", "index": 0}
# OneRoster grades use the CEDS vocabulary; the hub keeps PK, KG and 01..12.
_GRADES = {
    "op": "crosswalk",
    "values": {
        "IT": "PK",
        "PR": "PK",
        "PK": "PK",
        "TK": "PK",
        "KG": "KG",
        **{f"{g:02d}": f"{g:02d}" for g in range(1, 13)},
    },
    "otherwise": "error",
}
_ENABLED = (
    {"op": "default", "value": "true"},
    _LOWER,
    {"op": "crosswalk", "values": {"true": "true", "false": "false"}, "otherwise": "error"},
)

#: entity -> mapping rules over OneRoster 1.2 CSV column names (and the derived fields in the
#: module docstring). The OneRoster CSV connector uses the same rules.
ONEROSTER_DEFAULT_MAPPINGS: dict[str, list[dict[str, Any]]] = {
    "school": [
        _rule("name", "name", _TRIM),
        # OneRoster orgs have one human-readable identifier, by the spec's own example the NCES
        # id. It serves as the school code too; a district with separate local codes edits this.
        _rule("code", "identifier", _TRIM),
        _rule("nces_id", "identifier", _TRIM),
        # OneRoster orgs carry no level or grade span: school_type, grade_low and grade_high
        # keep the hub's defaults unless the district maps them.
    ],
    "academic_session": [
        _rule("name", "title", _TRIM),
        _rule(
            "session_type",
            "type",
            _TRIM,
            {
                "op": "crosswalk",
                "values": {
                    "schoolYear": "schoolYear",
                    "semester": "semester",
                    "term": "term",
                    "gradingPeriod": "gradingPeriod",
                },
                "otherwise": "error",
            },
        ),
        _rule("school_year", "schoolYear", _TRIM),
        _rule("start_date", "startDate", _DATE),
        # OneRoster defines endDate as exclusive; sources in practice send the last day.
        _rule("end_date", "endDate", _DATE),
        _rule("parent", "parentSourcedId", _TRIM),
    ],
    "staff": [
        _rule("staff_number", "identifier", _TRIM),
        _rule("first_name", "givenName", _TRIM),
        _rule("last_name", "familyName", _TRIM),
        _rule("email", "email", _TRIM, _LOWER),
        _rule(
            "position",
            "role",
            _TRIM,
            {
                "op": "crosswalk",
                "values": {
                    "teacher": "teacher",
                    "principal": "principal",
                    "siteAdministrator": "assistant_principal",
                    "districtAdministrator": "district_admin",
                    "systemAdministrator": "support",
                    "counselor": "counselor",
                    "aide": "support",
                    "proctor": "support",
                },
                "otherwise": "error",
            },
        ),
        _rule("is_active", "enabledUser", *_ENABLED),
    ],
    "student": [
        _rule("student_number", "identifier", _TRIM),
        # The state id travels in userIds as {SSID:...} (or StateID, State): the CSV form.
        _rule(
            "state_id",
            "userIds",
            {
                "op": "regex_extract",
                "pattern": r"\{(?:ssid|stateid|state):([^}]+)\}",
                "group": 1,
                "flags": "i",
            },
            _TRIM,
        ),
        _rule("first_name", "givenName", _TRIM),
        _rule("middle_name", "middleName", _TRIM),
        _rule("last_name", "familyName", _TRIM),
        _rule("preferred_name", "preferredGivenName", _TRIM),
        # Users have no birth date in OneRoster; demographics do. The REST and CSV connectors
        # join demographics.birthDate onto each student record as birthDate.
        _rule("birth_date", "birthDate", _DATE),
        _rule("grade_level", "grades", _FIRST, _TRIM, _UPPER, _GRADES),
        _rule("email", "email", _TRIM, _LOWER),
        _rule("is_active", "enabledUser", *_ENABLED),
    ],
    "guardian": [
        _rule("first_name", "givenName", _TRIM),
        _rule("last_name", "familyName", _TRIM),
        _rule("email", "email", _TRIM, _LOWER),
        _rule("phone", "phone", _TRIM),
    ],
    "student_guardian": [
        # Read from the guardians' users, exploded over agentSourcedIds: _item is the student.
        _rule("student", "_item", _TRIM),
        _rule("guardian", "sourcedId", _TRIM),
        # OneRoster says parent, guardian or relative, never mother or father.
        _rule(
            "relationship",
            "role",
            _TRIM,
            {
                "op": "crosswalk",
                "values": {"parent": "guardian", "guardian": "guardian", "relative": "other"},
                "otherwise": "keep",
            },
        ),
    ],
    "enrollment": [
        # Read from the students, exploded over orgSourcedIds: _item is the school.
        _rule("student", "sourcedId", _TRIM),
        _rule("school", "_item", _TRIM),
        _rule("grade_level", "grades", _FIRST, _TRIM, _UPPER, _GRADES),
    ],
    "student_demographic": [
        _rule("student", "sourcedId", _TRIM),
        # Derived from the race flags by race_code(): OneRoster has no single code.
        _rule("race_ethnicity", "raceEthnicityCode", _TRIM),
        _rule(
            "sex",
            "sex",
            _TRIM,
            _LOWER,
            {
                "op": "crosswalk",
                "values": {"female": "F", "male": "M", "other": "X", "unspecified": "X"},
                "otherwise": "error",
            },
        ),
        # OneRoster has no IDEA, 504, English learner or economic flags: the hub's defaults stay.
    ],
    "section": [
        _rule("school", "schoolSourcedId", _TRIM),
        _rule("session", "termSourcedIds", _FIRST, _TRIM),
        _rule("course_code", "courseCode", _TRIM),
        _rule("course_title", "courseTitle", _TRIM),
        _rule("section_code", "classCode", _TRIM),
        _rule("period", "periods", _TRIM),
        _rule("room", "location", _TRIM),
    ],
    "section_enrollment": [
        _rule("section", "classSourcedId", _TRIM),
        _rule("student", "userSourcedId", _TRIM),
        _rule("begin_date", "beginDate", _DATE),
        _rule("end_date", "endDate", _DATE),
    ],
}


# --- paging -------------------------------------------------------------------------------------


class _Pager:
    """Offset paging over one collection read, safe against the set changing mid-read.

    OneRoster REST pages only by ``limit``/``offset`` (no key-set paging), over ``sort=sourcedId``
    so the order is stable. Offsets alone lose records: when a record before the read position
    leaves the filtered set (changed past the window's upper bound, hard-deleted), every later
    record moves up one place and the one at the page boundary is never returned, although it did
    not change and no later window will read it. So each page after the first starts one record
    early: its first record must be one already read. If it is not, the set shifted under us, and
    the read steps back a page at a time until it overlaps what was read. ``seen`` drops the
    duplicates this causes, and those of records met in two of one entity's sub-reads.

    Records that change during the read are caught by the window: an incremental read takes
    records modified in (lower, upper], and a record modified after ``upper`` is read by the next
    run, whose lower bound is this run's upper. A full read has no upper filter, so a record that
    changes mid-read stays in the set and is read in one version or the other.
    """

    def __init__(
        self,
        connector: OneRosterRestConnector,
        path: str,
        key: str,
        params: dict[str, str],
        seen: set[str],
        progress: Callable[[int], None],
    ) -> None:
        self.connector = connector
        self.path = path
        self.key = key
        self.params = params
        self.seen = seen
        # What this read itself returned: the overlap check must not be satisfied by a record
        # another sub-read of the entity (staff by role) happened to return.
        self.mine: set[str] = set()
        self.progress = progress
        self.limit = connector.page_size
        self.total: int | None = None
        self._first: tuple[list[dict[str, Any]], httpx.Headers] | None = None

    def start(self) -> None:
        """Fetch the first page now: its X-Total-Count is the entity's expected total."""
        self._first = self._page(0)
        self.total = _total(self._first[1])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._first is None:
            self.start()
        assert self._first is not None
        (page, headers), offset = self._first, 0
        overlapped = False  # whether this page was asked for starting one record early
        span = max(len(page), 2)  # how many records the server gives per page
        steps_back = 0
        while True:
            if overlapped and (not page or _sid(page[0]) not in self.mine):
                # The set shifted under the read: records may lie between what was read and
                # this page. Step back until a page starts with a record already read.
                steps_back += 1
                if steps_back > 1000:
                    raise ConnectorError(
                        f"{self.connector.http.url(self.path)} kept changing while it was read "
                        "(1000 pages re-read); try again later",
                        kind="unavailable",
                    )
                offset = max(0, offset - span)
                overlapped = offset > 0
                if steps_back == 1:
                    self.connector.log(
                        f"{self.path} changed while it was read (a page did not continue the "
                        f"previous one); re-reading from offset {offset}"
                    )
                page, headers = self._page(offset)
                continue
            span = max(span, len(page))
            fresh = yielded = 0
            for item in page:
                sid = _sid(item)
                if sid in self.mine:
                    continue
                self.mine.add(sid)
                fresh += 1
                if sid in self.seen:
                    continue
                self.seen.add(sid)
                yield item
                yielded += 1
            if yielded:
                self.progress(yielded)
            if self._ended(offset, len(page), fresh, headers):
                return
            # Overlap by one record so that the next page proves it continues this one; a
            # server that returns one record per page leaves no room for an overlap.
            overlapped = len(page) > 1
            offset += len(page) - 1 if overlapped else len(page)
            page, headers = self._page(offset)

    def _ended(self, offset: int, count: int, fresh: int, headers: httpx.Headers) -> bool:
        total = _total(headers)
        if total is not None:
            return offset + count >= total
        links = headers.get("link")
        if links is not None:
            return 'rel="next"' not in links.replace("'", '"')
        # Neither a count nor links: a server may return fewer than asked without being at the
        # end (it caps the limit), so read on until a page brings nothing new.
        return count == 0 or fresh == 0

    def _page(self, offset: int) -> tuple[list[dict[str, Any]], httpx.Headers]:
        params = {
            **self.params,
            "limit": str(self.limit),
            "offset": str(offset),
            "sort": "sourcedId",
            "orderBy": "asc",
        }
        http = self.connector.http
        body, headers = http.get_json(self.path, params)
        if not isinstance(body, dict) or not isinstance(body.get(self.key), list):
            keys = ", ".join(sorted(body)) if isinstance(body, dict) else type(body).__name__
            raise ConnectorError(
                f"GET {http.url(self.path)} answered without a {self.key!r} list "
                f"(OneRoster's envelope); it has: {keys or 'nothing'}"
            )
        items = [i for i in body[self.key] if isinstance(i, dict)]
        missing = [i for i in items if not _sid(i)]
        if missing:
            raise ConnectorError(
                f"GET {http.url(self.path)} returned {len(missing)} {self.key} without a sourcedId"
            )
        return items, headers


def _sid(item: dict[str, Any]) -> str:
    return str(item.get("sourcedId") or "")


def _total(headers: httpx.Headers) -> int | None:
    value = headers.get("x-total-count")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# --- the connector ------------------------------------------------------------------------------


@register
class OneRosterRestConnector(Connector):
    """Pulls a district's roster from a OneRoster 1.2 REST server (client credentials)."""

    type_name = "oneroster_rest"
    label = "OneRoster 1.2 REST"
    description = (
        "Reads schools, sessions, staff, students, guardians, classes, enrollments and "
        "demographics from a OneRoster 1.2 rostering API; incremental runs ask for records "
        "modified since the last run (dateLastModified) and apply tobedeleted records as removals."
    )
    params = (
        Param(
            "base_url",
            "API base URL",
            "url",
            help="Up to and including /ims/oneroster/rostering/v1p2, e.g. "
            "https://sis.example.org/ims/oneroster/rostering/v1p2",
        ),
        Param("token_url", "Token URL", "url", help="The OAuth2 token endpoint."),
        Param("client_id", "Client id"),
        Param("client_secret", "Client secret", "secret"),
        Param(
            "scope",
            "Scopes",
            required=False,
            default=DEFAULT_SCOPE,
            help="Space-separated. Demographics need roster-demographics.readonly.",
        ),
        Param(
            "page_size",
            "Page size",
            "int",
            required=False,
            default=500,
            help="Records per request; the server may return fewer.",
        ),
    )
    entities = (
        "school",
        "academic_session",
        "staff",
        "student",
        "guardian",
        "student_guardian",
        "enrollment",
        "student_demographic",
        "section",
        "section_enrollment",
    )
    cursor_kind = "timestamp"
    default_mappings = ONEROSTER_DEFAULT_MAPPINGS

    #: Retry policy of the HTTP layer; tests replace ``sleep`` to record the waits.
    max_attempts = 5
    backoff_base = 0.5
    backoff_cap = 30.0
    page_timeout = 60.0

    def __init__(
        self,
        *,
        params: dict[str, Any],
        state: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(params=params, state=state, log=log, progress=progress)
        self.sleep: Callable[[float], None] = time.sleep
        self._http: SourceHttp | None = None

    # parameters

    def _param(self, name: str) -> str:
        value = self.params.get(name)
        if value is None or str(value).strip() == "":
            raise ConnectorError(f"the parameter {name} is required", kind="input")
        return str(value).strip()

    @property
    def page_size(self) -> int:
        value = self.params.get("page_size") or 500
        try:
            size = int(value)
        except (TypeError, ValueError):
            size = 0
        if not 1 <= size <= 10_000:
            raise ConnectorError(
                f"the parameter page_size must be a whole number from 1 to 10000, not {value!r}",
                kind="input",
            )
        return size

    @property
    def http(self) -> SourceHttp:
        if self._http is None:
            scope = self.params.get("scope")
            self._http = SourceHttp(
                base_url=self._param("base_url"),
                token_url=self._param("token_url"),
                client_id=self._param("client_id"),
                client_secret=self._param("client_secret"),
                scope=DEFAULT_SCOPE if scope is None else (str(scope).strip() or None),
                state=self.state,
                log=self.log,
                max_attempts=self.max_attempts,
                backoff_base=self.backoff_base,
                backoff_cap=self.backoff_cap,
                sleep=lambda seconds: self.sleep(seconds),
                page_timeout=self.page_timeout,
            )
        return self._http

    # the Connector interface

    def test(self) -> str:
        http = self.http
        http.invalidate_token()  # prove the credentials now, not a token cached last week
        http.token()
        _body, headers = http.get_json("orgs", {"limit": "1"})
        total = _total(headers)
        orgs = f"{total} orgs" if total is not None else "/orgs answered (no X-Total-Count)"
        left = http.token_seconds_left()
        valid = f", token valid for {left} s" if left is not None else ""
        return f"Connected: {orgs}{valid}"

    def begin(self, *, mode: ReadMode, cursor: str | None) -> Window:
        """Fix the window before reading.

        The upper bound is the source's "now", from the Date header of a request made here (the
        source stamps dateLastModified with its own clock, so ours, however skewed, must not
        decide), or our UTC clock when the server sends no usable Date; less
        ``UPPER_BOUND_MARGIN`` either way. Incremental and delta reads ask for records modified in
        (cursor, upper]; a full read takes everything. ``cursor_after`` is the upper bound, so a
        record modified during this run is read by the next one.
        """
        response = self.http.get("orgs", {"limit": "1"})
        now, where = _server_now(response.headers.get("date")), "the source's Date header"
        if now is None:
            now, where = datetime.now(UTC), "this server's clock (the source sent no Date)"
        upper = _iso(now - UPPER_BOUND_MARGIN)
        if mode == "full":
            self.log(f"full read; the next incremental run starts at {upper} (from {where})")
            return Window(mode=mode, lower=None, upper=upper, cursor_after=upper)
        lower = cursor or None
        if lower is not None and _parse_iso(lower) is None:
            raise ConnectorError(
                f"the stored cursor {lower!r} is not a OneRoster dateLastModified; reset the "
                "sync's cursor or run a full sync",
                kind="input",
            )
        if lower is not None and _parse_iso(lower) >= _parse_iso(upper):
            # Our last upper bound is ahead of the source's clock now (the clock was set back):
            # keep the cursor rather than moving it back and reading twice.
            self.log(f"the source's clock ({upper}) is not past the cursor {lower}; nothing new")
            return Window(mode=mode, lower=lower, upper=lower, cursor_after=lower)
        self.log(
            f"{mode} read of records modified after {lower or 'the beginning'} and up to "
            f"{upper} (from {where})"
        )
        return Window(mode=mode, lower=lower, upper=upper, cursor_after=upper)

    def read(self, entity: str, window: Window) -> EntityRead:
        if entity not in self.entities:
            raise ConnectorError(
                f"{self.type_name} does not read {entity!r}; it reads {', '.join(self.entities)}",
                kind="input",
            )
        plan = self._plan(entity)
        # Sub-reads of one entity (staff by role) share one set: a user in two roles once.
        seen: set[str] = set()
        pagers = [
            _Pager(self, path, key, self._params(window, role), seen, self._report)
            for path, key, role in plan.reads
        ]
        for pager in pagers:
            pager.start()
        totals = [p.total for p in pagers]
        expected = sum(t for t in totals if t is not None) if None not in totals else None
        return EntityRead(
            entity=entity,
            complete=window.mode == "full",
            records=self._records(pagers, plan, window),
            explode=plan.explode,
            expected_total=expected,
            known_fields=frozenset(plan.fields({})) | DERIVED_FIELDS,
        )

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # reading

    def _plan(self, entity: str) -> _Plan:
        users = _user_fields
        if entity == "school":
            return _Plan([("schools", "orgs", None)], _org_fields)
        if entity == "academic_session":
            return _Plan([("academicSessions", "academicSessions", None)], _session_fields)
        if entity == "staff":
            reads = [("teachers", "users", None)] + [("users", "users", r) for r in STAFF_ROLES]
            return _Plan(reads, users)
        if entity == "student":
            return _Plan([("students", "users", None)], users, join_birth_dates=True)
        if entity in ("guardian", "student_guardian"):
            reads = [("users", "users", r) for r in GUARDIAN_ROLES]
            explode = "agentSourcedIds" if entity == "student_guardian" else None
            return _Plan(reads, users, explode=explode)
        if entity == "enrollment":
            return _Plan([("students", "users", None)], users, explode="orgSourcedIds")
        if entity == "student_demographic":
            return _Plan([("demographics", "demographics", None)], _demographic_fields)
        if entity == "section":
            return _Plan([("classes", "classes", None)], _class_fields, join_courses=True)
        assert entity == "section_enrollment"
        return _Plan([("enrollments", "enrollments", "student")], _enrollment_fields)

    @staticmethod
    def _params(window: Window, role: str | None) -> dict[str, str]:
        predicates = [f"role='{role}'"] if role else []
        if window.mode != "full":
            if window.lower:
                predicates.append(f"dateLastModified>'{window.lower}'")
            predicates.append(f"dateLastModified<='{window.upper}'")
        return {"filter": " AND ".join(predicates)} if predicates else {}

    def _records(self, pagers: list[_Pager], plan: _Plan, window: Window) -> Iterator[SourceRecord]:
        birth_date = self._birth_dates(window, pagers) if plan.join_birth_dates else None
        courses = self._courses() if plan.join_courses else None
        for pager in pagers:
            for item in pager:
                fields = plan.fields(item)
                for name, value in _unknown_attributes(item, pager.key).items():
                    # Under its own name, for a mapping that wants it; the pipeline warns.
                    fields.setdefault(name, value)
                sid = str(fields["sourcedId"])
                if birth_date is not None:
                    fields["birthDate"] = birth_date(sid)
                if courses is not None:
                    code, title = courses.get(fields.get("courseSourcedId") or "", (None, None))
                    fields["courseCode"], fields["courseTitle"] = code, title
                status = str(fields.get("status") or "active").lower()
                # 1.1's "inactive" reads as tobedeleted, as the 1.2 specification asks.
                yield SourceRecord(
                    source_id=sid, fields=fields, deleted=status in ("tobedeleted", "inactive")
                )

    def _report(self, count: int) -> None:
        self.progress(count)

    def _lookup(self, path: str, key: str) -> Iterator[dict[str, Any]]:
        """Every record of a collection, unfiltered, for a join (kept off the progress bar)."""
        return iter(_Pager(self, path, key, {}, set(), lambda n: None))

    def _birth_dates(self, window: Window, pagers: list[_Pager]) -> Callable[[str], str | None]:
        """sourcedId -> the demographics birthDate, fetched the cheaper way for this read.

        A full read pages through all demographics once. An incremental one reads few students
        as a rule: then one GET /demographics/{id} each costs less than paging through them all.
        """
        students = sum(p.total or 0 for p in pagers)
        missing_scope = (
            "students read without birth dates: {} (is the roster-demographics.readonly scope "
            "granted?)"
        )
        try:
            if window.mode != "full" and None not in (p.total for p in pagers):
                _body, headers = self.http.get_json("demographics", {"limit": "1"})
                pages = -(-(_total(headers) or 0) // self.page_size)
                if students <= pages:
                    return self._birth_date_of
            dates = {
                _sid(d): _scalar(d.get("birthDate"))
                for d in self._lookup("demographics", "demographics")
            }
        except HttpStatusError as exc:
            if exc.status not in (403, 404):
                raise
            self.log(missing_scope.format(exc))
            return lambda sid: None
        return dates.get

    def _birth_date_of(self, sourced_id: str) -> str | None:
        try:
            body, _headers = self.http.get_json(f"demographics/{quote(sourced_id, safe='')}")
        except HttpStatusError as exc:
            if exc.status == 404:
                return None  # a student without a demographics record
            raise
        record = body.get("demographics") if isinstance(body, dict) else None
        return _scalar(record.get("birthDate")) if isinstance(record, dict) else None

    def _courses(self) -> dict[str, tuple[str | None, str | None]]:
        return {
            _sid(c): (_scalar(c.get("courseCode")), _scalar(c.get("title")))
            for c in self._lookup("courses", "courses")
        }


class _Plan:
    """How one entity is read: (path, envelope key, role filter) reads and the field mapper."""

    def __init__(
        self,
        reads: list[tuple[str, str, str | None]],
        fields: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        explode: str | None = None,
        join_birth_dates: bool = False,
        join_courses: bool = False,
    ) -> None:
        self.reads = reads
        self.fields = fields
        self.explode = explode
        self.join_birth_dates = join_birth_dates
        self.join_courses = join_courses


def _server_now(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    return parsed.astimezone(UTC)


def _iso(value: datetime) -> str:
    # Whole seconds: truncating moves the bound earlier, the safe direction.
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
