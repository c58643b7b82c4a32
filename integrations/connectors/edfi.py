"""Ed-Fi ODS/API v7: pull with change queries, and push of discipline incidents.

Reading (``begin`` then ``read``):

- ``GET {base}/changeQueries/v1[/{year}]/availableChangeVersions`` once per run: its
  ``newestChangeVersion`` is the run's upper bound, fixed for every entity, and becomes the
  cursor when the run commits.
- A full read pages through ``{base}/data/v3[/{year}]/ed-fi/{resource}``; an incremental read
  asks for ``minChangeVersion = cursor + 1`` and ``maxChangeVersion = upper``, then the
  resource's ``/deletes`` (records flagged deleted) and ``/keyChanges`` (renames of source ids)
  within the same bounds.
- Paging is ``offset``/``limit`` with ``totalCount=true`` on every page (see :class:`_Pager`
  for why the count matters: an item that changes while we page leaves the window and shifts
  the offsets of the items after it).

Source ids are natural keys, because Ed-Fi resources refer to each other by natural key (a
studentSchoolAssociation names ``studentUniqueId`` and ``schoolId``, not the student's ``id``).
Each resource has one function composing its source id from *key values* (the flat names the
ODS uses in ``/deletes`` ``keyValues``); items are first reduced to the same key values, so a
delete or a key change composes exactly the string the item did. Records also carry the
composed source ids of what they refer to (``_studentSourceId``, ``_schoolSourceId`` ...) so
mappings can fill reference fields directly.

Pushing: hub incidents become a ``disciplineIncident`` (upserted by natural key: 201 created,
200 updated), a ``studentDisciplineIncidentBehaviorAssociation`` linking the student (the ODS
requires it before an action may reference the behavior), and a ``disciplineAction`` (its date
is part of its natural key: when the hub's action moves to another day, the action sent before
is deleted and the new one created, so the source never holds both). Which actions were "sent
before" the engine says (``row["sent_actions"]``, its record of what pushes sent); results
report the action sent and those dropped (``PushResult.sent_action``, ``dropped_actions``).
:meth:`EdFiConnector.fetch_action` and :meth:`EdFiConnector.delete_action` let the engine
delete an action it sent once the hub's is removed. Narratives are never sent. An update of an
incident the source has (the row carries the ``source_etag`` and ``source_resource_id`` the
engine read) is a PUT of that item with ``If-Match``, laid over the source's current item so
its own fields stay; a 412 is reported as a ``conflict`` result and nothing is written.
:meth:`EdFiConnector.delete_incident` deletes an incident the hub deleted, with its actions and
associations.

Unknown fields: ``EntityRead.known_fields`` lists what the Data Standard defines for the
resources read (:data:`RESOURCE_FIELDS`); the pipeline warns about the others.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from integrations.connectors.base import (
    Connector,
    ConnectorError,
    EntityRead,
    Param,
    PushResult,
    ReadMode,
    SourceRecord,
    Window,
)
from integrations.connectors.http import HttpStatusError, SourceHttp
from integrations.connectors.registry import register

#: The ODS/API refuses a ``limit`` above this (a 400 "Limit must be ... between 0 and 500").
MAX_PAGE_SIZE = 500
#: The ODS namespace of the standard descriptors; a code without ``uri://`` is put in it.
ED_FI_NAMESPACE = "uri://ed-fi.org"

KeyValues = Mapping[str, Any]

# --- Source ids --------------------------------------------------------------------------------

_MIDNIGHT = re.compile(r"^(\d{4}-\d{2}-\d{2})T00:00:00(\.0+)?(Z|[+-]00:00)?$")


def _text(value: Any) -> str:
    """One key value as text: ints as digits, dates as YYYY-MM-DD, descriptors unchanged."""
    if value is None or value == "":
        raise KeyError("empty")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    midnight = _MIDNIGHT.match(text)  # some ODS versions write dates in keyValues as date-times
    return midnight.group(1) if midnight else text


def descriptor_code(value: Any) -> str:
    """The code value of a descriptor URI: ``uri://ed-fi.org/TermDescriptor#Fall Semester``
    -> ``Fall Semester``. Source ids use the code, so they stay readable."""
    text = _text(value)
    return text.split("#", 1)[1] if "#" in text else text


def _join(*parts: str) -> str:
    return "|".join(parts)


def school_source_id(kv: KeyValues) -> str:
    return _text(kv["schoolId"])


def school_year_source_id(kv: KeyValues) -> str:
    """The school-year academic session the connector makes from the sessions of a year."""
    return f"schoolYear|{_text(kv['schoolYear'])}"


# Ed-Fi keys sessions and grading periods by school; the hub's academic sessions are the
# district's (one "Fall Semester 2027" for every school). The school is left out, and a read
# hands each such session over once.
def session_source_id(kv: KeyValues) -> str:
    return _join(_text(kv["schoolYear"]), _text(kv["sessionName"]))


def grading_period_source_id(kv: KeyValues) -> str:
    return _join(
        _text(kv["schoolYear"]),
        descriptor_code(kv["gradingPeriodDescriptor"]),
        _text(kv["gradingPeriodName"]),
    )


def staff_source_id(kv: KeyValues) -> str:
    return _text(kv["staffUniqueId"])


def student_source_id(kv: KeyValues) -> str:
    return _text(kv["studentUniqueId"])


def enrollment_source_id(kv: KeyValues) -> str:
    return _join(_text(kv["schoolId"]), _text(kv["studentUniqueId"]), _text(kv["entryDate"]))


def section_source_id(kv: KeyValues) -> str:
    # The whole Ed-Fi natural key: section identifiers and session names repeat across school
    # years ("ALG1-01", "Fall Semester"), so anything shorter merges last year's sections into
    # this year's at rollover.
    return _join(
        _text(kv["schoolId"]),
        _text(kv["schoolYear"]),
        _text(kv["sessionName"]),
        _text(kv["localCourseCode"]),
        _text(kv["sectionIdentifier"]),
    )


def section_enrollment_source_id(kv: KeyValues) -> str:
    return _join(section_source_id(kv), _text(kv["studentUniqueId"]), _text(kv["beginDate"]))


def attendance_source_id(kv: KeyValues) -> str:
    return _join(
        _text(kv["schoolId"]),
        _text(kv["studentUniqueId"]),
        _text(kv["eventDate"]),
        _text(kv["schoolYear"]),
        _text(kv["sessionName"]),
        descriptor_code(kv["attendanceEventCategoryDescriptor"]),
    )


def grade_source_id(kv: KeyValues) -> str:
    return _join(
        section_enrollment_source_id(kv),
        _text(kv["gradingPeriodSchoolYear"]),
        descriptor_code(kv["gradingPeriodDescriptor"]),
        _text(kv["gradingPeriodName"]),
        descriptor_code(kv["gradeTypeDescriptor"]),
    )


def _once_per_source_id(records: Iterator[SourceRecord]) -> Iterator[SourceRecord]:
    """District-wide sessions arrive once per school: keep the first of each (a live record
    before a delete of the same key)."""
    seen: dict[str, bool] = {}
    held: list[SourceRecord] = []
    for record in records:
        if record.source_id in seen:
            continue
        if record.deleted:
            held.append(record)
            continue
        seen[record.source_id] = True
        yield record
    for record in held:
        if record.source_id not in seen:
            seen[record.source_id] = True
            yield record


def incident_source_id(kv: KeyValues) -> str:
    return _join(_text(kv["schoolId"]), _text(kv["incidentIdentifier"]))


# --- Resources ---------------------------------------------------------------------------------

Paths = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Ref:
    """A reference to another record: a ``field`` holding its composed source id."""

    field: str
    compose: Callable[[KeyValues], str]
    #: key value name -> dotted path in the item
    paths: Paths


@dataclass(frozen=True)
class _Resource:
    """An Ed-Fi resource collection: its natural key and how its source id is composed."""

    name: str
    #: key value name (as in /deletes keyValues) -> dotted path in the item
    keys: Paths
    compose: Callable[[KeyValues], str]
    refs: tuple[_Ref, ...] = ()


def _student_ref(base: str) -> _Ref:
    return _Ref(
        "_studentSourceId", student_source_id, (("studentUniqueId", f"{base}.studentUniqueId"),)
    )


def _school_ref(base: str, name: str = "_schoolSourceId") -> _Ref:
    return _Ref(name, school_source_id, (("schoolId", f"{base}.schoolId"),))


def _section_paths(base: str) -> Paths:
    return tuple(
        (name, f"{base}.{name}")
        for name in (
            "localCourseCode",
            "schoolId",
            "schoolYear",
            "sectionIdentifier",
            "sessionName",
        )
    )


SCHOOLS = _Resource("schools", (("schoolId", "schoolId"),), school_source_id)
SESSIONS = _Resource(
    "sessions",
    (
        ("schoolId", "schoolReference.schoolId"),
        ("schoolYear", "schoolYearTypeReference.schoolYear"),
        ("sessionName", "sessionName"),
    ),
    session_source_id,
    (
        _school_ref("schoolReference"),
        _Ref(
            "_parentSourceId",
            school_year_source_id,
            (("schoolYear", "schoolYearTypeReference.schoolYear"),),
        ),
    ),
)
GRADING_PERIODS = _Resource(
    "gradingPeriods",
    (
        ("gradingPeriodDescriptor", "gradingPeriodDescriptor"),
        ("gradingPeriodName", "gradingPeriodName"),
        ("schoolId", "schoolReference.schoolId"),
        ("schoolYear", "schoolYearTypeReference.schoolYear"),
    ),
    grading_period_source_id,
    (_school_ref("schoolReference"),),
)
STAFFS = _Resource("staffs", (("staffUniqueId", "staffUniqueId"),), staff_source_id)
STUDENTS = _Resource("students", (("studentUniqueId", "studentUniqueId"),), student_source_id)
STUDENT_SCHOOL_ASSOCIATIONS = _Resource(
    "studentSchoolAssociations",
    (
        ("entryDate", "entryDate"),
        ("schoolId", "schoolReference.schoolId"),
        ("studentUniqueId", "studentReference.studentUniqueId"),
    ),
    enrollment_source_id,
    (
        _student_ref("studentReference"),
        _school_ref("schoolReference"),
        _Ref(
            "_schoolYearSourceId",
            school_year_source_id,
            (("schoolYear", "schoolYearTypeReference.schoolYear"),),
        ),
    ),
)
SECTIONS = _Resource(
    "sections",
    (
        *((n, p) for n, p in _section_paths("courseOfferingReference") if n != "sectionIdentifier"),
        ("sectionIdentifier", "sectionIdentifier"),
    ),
    section_source_id,
    (
        _school_ref("courseOfferingReference"),
        _Ref(
            "_sessionSourceId",
            session_source_id,
            (
                ("schoolId", "courseOfferingReference.schoolId"),
                ("schoolYear", "courseOfferingReference.schoolYear"),
                ("sessionName", "courseOfferingReference.sessionName"),
            ),
        ),
    ),
)
STUDENT_SECTION_ASSOCIATIONS = _Resource(
    "studentSectionAssociations",
    (
        ("beginDate", "beginDate"),
        *_section_paths("sectionReference"),
        ("studentUniqueId", "studentReference.studentUniqueId"),
    ),
    section_enrollment_source_id,
    (
        _student_ref("studentReference"),
        _Ref("_sectionSourceId", section_source_id, _section_paths("sectionReference")),
    ),
)
ATTENDANCE_EVENTS = _Resource(
    "studentSchoolAttendanceEvents",
    (
        ("attendanceEventCategoryDescriptor", "attendanceEventCategoryDescriptor"),
        ("eventDate", "eventDate"),
        ("schoolId", "schoolReference.schoolId"),
        ("schoolYear", "sessionReference.schoolYear"),
        ("sessionName", "sessionReference.sessionName"),
        ("studentUniqueId", "studentReference.studentUniqueId"),
    ),
    attendance_source_id,
    (
        _student_ref("studentReference"),
        _school_ref("schoolReference"),
        _Ref(
            "_sessionSourceId",
            session_source_id,
            (
                ("schoolId", "sessionReference.schoolId"),
                ("schoolYear", "sessionReference.schoolYear"),
                ("sessionName", "sessionReference.sessionName"),
            ),
        ),
    ),
)
_SSA_REF = "studentSectionAssociationReference"
GRADES = _Resource(
    "grades",
    (
        ("beginDate", f"{_SSA_REF}.beginDate"),
        ("gradeTypeDescriptor", "gradeTypeDescriptor"),
        ("gradingPeriodDescriptor", "gradingPeriodReference.gradingPeriodDescriptor"),
        ("gradingPeriodName", "gradingPeriodReference.gradingPeriodName"),
        ("gradingPeriodSchoolYear", "gradingPeriodReference.schoolYear"),
        *_section_paths(_SSA_REF),
        ("studentUniqueId", f"{_SSA_REF}.studentUniqueId"),
    ),
    grade_source_id,
    (
        _student_ref(_SSA_REF),
        _Ref("_sectionSourceId", section_source_id, _section_paths(_SSA_REF)),
        _Ref(
            "_sectionEnrollmentSourceId",
            section_enrollment_source_id,
            (
                ("beginDate", f"{_SSA_REF}.beginDate"),
                *_section_paths(_SSA_REF),
                ("studentUniqueId", f"{_SSA_REF}.studentUniqueId"),
            ),
        ),
        _Ref(
            "_gradingPeriodSourceId",
            grading_period_source_id,
            (
                ("gradingPeriodDescriptor", "gradingPeriodReference.gradingPeriodDescriptor"),
                ("gradingPeriodName", "gradingPeriodReference.gradingPeriodName"),
                ("schoolId", "gradingPeriodReference.schoolId"),
                ("schoolYear", "gradingPeriodReference.schoolYear"),
            ),
        ),
    ),
)
DISCIPLINE_INCIDENTS = _Resource(
    "disciplineIncidents",
    (("incidentIdentifier", "incidentIdentifier"), ("schoolId", "schoolReference.schoolId")),
    incident_source_id,
    (_school_ref("schoolReference"),),
)
BEHAVIOR_ASSOCIATIONS = _Resource(
    "studentDisciplineIncidentBehaviorAssociations",
    (
        ("behaviorDescriptor", "behaviorDescriptor"),
        ("incidentIdentifier", "disciplineIncidentReference.incidentIdentifier"),
        ("schoolId", "disciplineIncidentReference.schoolId"),
        ("studentUniqueId", "studentReference.studentUniqueId"),
    ),
    lambda kv: _join(
        incident_source_id(kv), student_source_id(kv), descriptor_code(kv["behaviorDescriptor"])
    ),
)
DISCIPLINE_ACTIONS = _Resource(
    "disciplineActions",
    (
        ("disciplineActionIdentifier", "disciplineActionIdentifier"),
        ("disciplineDate", "disciplineDate"),
        ("studentUniqueId", "studentReference.studentUniqueId"),
    ),
    lambda kv: _join(
        _text(kv["disciplineActionIdentifier"]),
        _text(kv["disciplineDate"]),
        student_source_id(kv),
    ),
)


def _dig(item: Mapping[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _key_values(paths: Paths, item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _dig(item, path) for name, path in paths}


def flatten(item: Mapping[str, Any]) -> dict[str, Any]:
    """An Ed-Fi item as source fields: nested objects with dots (``schoolReference.schoolId``),
    lists of scalars comma-joined, other lists as compact JSON text (``[{"a":"b"}]``). The
    ``link`` objects the ODS adds to references are dropped: they hold the referenced item's
    ``id``, which a natural-key world has no use for."""
    out: dict[str, Any] = {}

    def walk(value: Mapping[str, Any], prefix: str) -> None:
        for name, inner in value.items():
            if name == "link":
                continue
            key = f"{prefix}{name}"
            if isinstance(inner, Mapping):
                walk(inner, f"{key}.")
            elif isinstance(inner, list):
                if not inner:
                    out[key] = None
                elif all(not isinstance(v, Mapping | list) for v in inner):
                    out[key] = ",".join("" if v is None else str(v) for v in inner)
                else:
                    out[key] = json.dumps(_without_links(inner), separators=(",", ":"))
            else:
                out[key] = inner

    walk(item, "")
    if isinstance(out.get("_lastModifiedDate"), str):
        out["_lastModifiedDate"] = normalize_timestamp(out["_lastModifiedDate"])
    return out


def _without_links(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_links(v) for k, v in value.items() if k != "link"}
    if isinstance(value, list):
        return [_without_links(v) for v in value]
    return value


_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?$")


def normalize_timestamp(value: str) -> str:
    """``_lastModifiedDate`` as ISO 8601 that Python parses: .NET writes seven fractional
    digits (``2027-01-15T10:00:00.1234567Z``); this keeps six and spells UTC ``+00:00``."""
    match = _STAMP.match(value.strip())
    if not match:
        return value
    fraction = (match.group(2) or "")[:6]
    zone = match.group(3) or "Z"
    return (
        match.group(1)
        + (f".{fraction.ljust(6, '0')}" if fraction else "")
        + ("+00:00" if zone == "Z" else zone)
    )


# --- Known fields ------------------------------------------------------------------------------


class KnownFields(frozenset):
    """The fields the Ed-Fi Data Standard defines for a resource, as records carry them.

    A name ending in ``.`` stands for an object property: every field flattened out of it is
    known (``schoolReference.`` covers ``schoolReference.schoolId``), since the standard defines
    the object and flattening names its members. The pipeline asks ``name in known_fields``
    and reports the others as unknown fields: a warning, never a failure.
    """

    def __contains__(self, name: object) -> bool:
        if frozenset.__contains__(self, name):
            return True
        head, dot, _ = str(name).partition(".")
        return bool(dot) and frozenset.__contains__(self, f"{head}.")


_COMMON = ("id", "_etag", "_lastModifiedDate", "_ext.")
#: Properties of each resource read, per Ed-Fi Data Standard 5 (ODS/API 7); ``x.`` for an
#: object (a reference). Lists are flattened to one field under their own name.
RESOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "schools": (
        "schoolId",
        "educationOrganizationCategories",
        "gradeLevels",
        "charterApprovalSchoolYearTypeReference.",
        "localEducationAgencyReference.",
        "addresses",
        "administrativeFundingControlDescriptor",
        "charterApprovalAgencyTypeDescriptor",
        "charterStatusDescriptor",
        "identificationCodes",
        "indicators",
        "institutionTelephones",
        "internationalAddresses",
        "internetAccessDescriptor",
        "magnetSpecialProgramEmphasisSchoolDescriptor",
        "nameOfInstitution",
        "operationalStatusDescriptor",
        "schoolCategories",
        "schoolTypeDescriptor",
        "shortNameOfInstitution",
        "titleIPartASchoolDesignationDescriptor",
        "webSite",
    ),
    "sessions": (
        "sessionName",
        "schoolReference.",
        "schoolYearTypeReference.",
        "academicWeeks",
        "beginDate",
        "endDate",
        "gradingPeriods",
        "termDescriptor",
        "totalInstructionalDays",
    ),
    "gradingPeriods": (
        "gradingPeriodDescriptor",
        "gradingPeriodName",
        "schoolReference.",
        "schoolYearTypeReference.",
        "beginDate",
        "endDate",
        "periodSequence",
        "totalInstructionalDays",
    ),
    "staffs": (
        "staffUniqueId",
        "personReference.",
        "addresses",
        "ancestryEthnicOrigins",
        "birthDate",
        "citizenshipStatusDescriptor",
        "credentials",
        "electronicMails",
        "firstName",
        "genderIdentity",
        "generationCodeSuffix",
        "highestCompletedLevelOfEducationDescriptor",
        "highlyQualifiedTeacher",
        "hispanicLatinoEthnicity",
        "identificationCodes",
        "identificationDocuments",
        "internationalAddresses",
        "languages",
        "lastSurname",
        "loginId",
        "maidenName",
        "middleName",
        "otherNames",
        "personalIdentificationDocuments",
        "personalTitlePrefix",
        "preferredFirstName",
        "preferredLastSurname",
        "races",
        "recognitions",
        "sexDescriptor",
        "telephones",
        "tribalAffiliations",
        "visas",
        "yearsOfPriorProfessionalExperience",
        "yearsOfPriorTeachingExperience",
    ),
    "students": (
        "studentUniqueId",
        "personReference.",
        "birthCity",
        "birthCountryDescriptor",
        "birthDate",
        "birthInternationalProvince",
        "birthSexDescriptor",
        "birthStateAbbreviationDescriptor",
        "citizenshipStatusDescriptor",
        "dateEnteredUS",
        "firstName",
        "generationCodeSuffix",
        "identificationDocuments",
        "lastSurname",
        "maidenName",
        "middleName",
        "multipleBirthStatus",
        "otherNames",
        "personalIdentificationDocuments",
        "personalTitlePrefix",
        "preferredFirstName",
        "preferredLastSurname",
        "visas",
    ),
    "studentSchoolAssociations": (
        "entryDate",
        "calendarReference.",
        "classOfSchoolYearTypeReference.",
        "graduationPlanReference.",
        "nextYearSchoolReference.",
        "schoolReference.",
        "schoolYearTypeReference.",
        "studentReference.",
        "alternativeGraduationPlans",
        "educationPlans",
        "employedWhileEnrolled",
        "enrollmentTypeDescriptor",
        "entryGradeLevelDescriptor",
        "entryGradeLevelReasonDescriptor",
        "entryTypeDescriptor",
        "exitWithdrawDate",
        "exitWithdrawTypeDescriptor",
        "fullTimeEquivalency",
        "nextYearGradeLevelDescriptor",
        "primarySchool",
        "repeatGradeIndicator",
        "residencyStatusDescriptor",
        "schoolChoice",
        "schoolChoiceBasisDescriptor",
        "schoolChoiceTransfer",
        "termCompletionIndicator",
    ),
    "sections": (
        "sectionIdentifier",
        "courseOfferingReference.",
        "locationReference.",
        "locationSchoolReference.",
        "availableCreditConversion",
        "availableCredits",
        "availableCreditTypeDescriptor",
        "characteristics",
        "classPeriods",
        "courseLevelCharacteristics",
        "educationalEnvironmentDescriptor",
        "instructionLanguageDescriptor",
        "mediumOfInstructionDescriptor",
        "offeredGradeLevels",
        "officialAttendancePeriod",
        "populationServedDescriptor",
        "programs",
        "sectionName",
        "sectionTypeDescriptor",
        "sequenceOfCourse",
    ),
    "studentSectionAssociations": (
        "beginDate",
        "dualCreditEducationOrganizationReference.",
        "sectionReference.",
        "studentReference.",
        "attemptStatusDescriptor",
        "dualCreditIndicator",
        "dualCreditInstitutionDescriptor",
        "dualCreditTypeDescriptor",
        "dualHighSchoolCreditIndicator",
        "endDate",
        "homeroomIndicator",
        "programs",
        "repeatIdentifierDescriptor",
        "teacherStudentDataLinkExclusion",
    ),
    "studentSchoolAttendanceEvents": (
        "attendanceEventCategoryDescriptor",
        "eventDate",
        "schoolReference.",
        "sessionReference.",
        "studentReference.",
        "arrivalTime",
        "attendanceEventReason",
        "departureTime",
        "educationalEnvironmentDescriptor",
        "eventDuration",
        "schoolAttendanceDuration",
    ),
    "grades": (
        "gradeTypeDescriptor",
        "gradingPeriodReference.",
        "studentSectionAssociationReference.",
        "currentGradeAsOfDate",
        "currentGradeIndicator",
        "diagnosticStatement",
        "gradeEarnedDescription",
        "learningStandardGrades",
        "letterGradeEarned",
        "numericGradeEarned",
        "performanceBaseConversionDescriptor",
    ),
    "disciplineIncidents": (
        "incidentIdentifier",
        "schoolReference.",
        "behaviors",
        "caseNumber",
        "externalParticipants",
        "incidentCost",
        "incidentDate",
        "incidentDescription",
        "incidentLocationDescriptor",
        "incidentTime",
        "reportedToLawEnforcement",
        "reporterDescriptionDescriptor",
        "reporterName",
        "weapons",
        # The first discipline action of the incident, flattened under this prefix by the
        # enrichment (its own fields are those of a disciplineActions item).
        "disciplineAction.",
    ),
}


def known_fields(resources) -> KnownFields:
    """The fields records of these resources may carry without a warning."""
    names: set[str] = set(_COMMON)
    for resource in resources:
        names.update(RESOURCE_FIELDS.get(resource.name, ()))
    return KnownFields(names)


# --- Paging ------------------------------------------------------------------------------------

Fetch = Callable[[int], tuple[list[dict[str, Any]], int | None]]


class _Pager:
    """Offset paging through one collection within a change window, missing nothing.

    Ed-Fi recommends offset/limit paging for change windows and orders items by its surrogate
    key. Within ``[minChangeVersion, maxChangeVersion]`` with the upper bound fixed at the
    start of the run, nothing can *enter* the window while we page (a write gets a change
    version above the bound), so the item that changes mid-read is simply read by the next
    run. But that item *leaves* the window, and every item after it moves one place forward:
    if it was on a page already read, the first item of the next page slides onto the page we
    just read and would be skipped (the peer's mutate-during-paging test shows it). A delete
    does the same in a full read. So every page asks for ``totalCount``: the set can only
    shrink, and when the count drops by ``n`` the next page is fetched again from ``n`` places
    earlier; the items seen twice are dropped by ``id`` (only the last ``memory`` ids are kept,
    which bounds the step back).
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        page_size: int,
        what: str,
        on_page: Callable[[int], None],
        log: Callable[[str], None],
    ) -> None:
        self._fetch = fetch
        self._size = page_size
        self._what = what
        self._on_page = on_page
        self._log = log
        self._memory = max(4 * page_size, 2000)
        self._first: list[dict[str, Any]] | None = None
        #: the Total-Count of the first page (None before :meth:`start` or without the header)
        self.total: int | None = None

    def start(self) -> _Pager:
        """Fetch the first page now, so that ``total`` is known before records are read."""
        if self._first is None:
            self._first, self.total = self._fetch(0)
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.start()
        items, total = self._first or [], self.total
        self._first = None
        if total is None:
            self._log(
                f"{self._what}: the source sent no Total-Count header, so records changed "
                "while paging cannot be detected"
            )
        recent: OrderedDict[str, None] = OrderedDict()
        offset = 0
        while True:
            fresh = []
            for item in items:
                # Live items are unique by id; /deletes and /keyChanges entries by id and
                # version (one item can change its key twice in a window).
                ident = f"{item.get('id')}@{item.get('changeVersion', '')}"
                if ident in recent:
                    recent.move_to_end(ident)
                    continue
                recent[ident] = None
                fresh.append(item)
            while len(recent) > self._memory:
                recent.popitem(last=False)
            self._on_page(len(fresh))
            yield from fresh
            if len(items) < self._size:
                return
            offset += len(items)
            while True:
                items, count = self._fetch(offset)
                if total is None or count is None or count >= total:
                    total = count if count is not None else total
                    break
                gone = total - count
                # At most ``gone`` items moved onto pages already read (fewer if some of the
                # items that left had not been read yet).
                back = min(gone, offset)
                if back > self._memory:
                    raise ConnectorError(
                        f"{self._what}: {gone} items left the change window between two pages "
                        "(the source is changing faster than it can be read); the run can be "
                        "retried",
                        kind="unavailable",
                    )
                self._log(
                    f"{self._what}: {gone} item(s) left the window while paging (changed or "
                    f"deleted meanwhile); reading again from offset {offset - back}"
                )
                offset -= back
                total = count


# --- Entities ----------------------------------------------------------------------------------

ENTITY_RESOURCES: dict[str, tuple[_Resource, ...]] = {
    "school": (SCHOOLS,),
    "academic_session": (SESSIONS, GRADING_PERIODS),
    "staff": (STAFFS,),
    "student": (STUDENTS,),
    "enrollment": (STUDENT_SCHOOL_ASSOCIATIONS,),
    "section": (SECTIONS,),
    "section_enrollment": (STUDENT_SECTION_ASSOCIATIONS,),
    "daily_attendance": (ATTENDANCE_EVENTS,),
    "grade": (GRADES,),
    "incident": (DISCIPLINE_INCIDENTS,),
}

# Ed-Fi grade levels in school order (the code values of uri://ed-fi.org/GradeLevelDescriptor).
GRADE_ORDER = (
    "Infant/toddler",
    "Early Education",
    "Preschool/Prekindergarten",
    "Transitional Kindergarten",
    "Kindergarten",
    "First grade",
    "Second grade",
    "Third grade",
    "Fourth grade",
    "Fifth grade",
    "Sixth grade",
    "Seventh grade",
    "Eighth grade",
    "Ninth grade",
    "Tenth grade",
    "Eleventh grade",
    "Twelfth grade",
    "Grade 13",
    "Postsecondary",
    "Adult Education",
    "Ungraded",
)
GRADE_LEVELS = {
    "Preschool/Prekindergarten": "PK",
    "Early Education": "PK",
    "Transitional Kindergarten": "KG",
    "Kindergarten": "KG",
    "First grade": "01",
    "Second grade": "02",
    "Third grade": "03",
    "Fourth grade": "04",
    "Fifth grade": "05",
    "Sixth grade": "06",
    "Seventh grade": "07",
    "Eighth grade": "08",
    "Ninth grade": "09",
    "Tenth grade": "10",
    "Eleventh grade": "11",
    "Twelfth grade": "12",
}
#: Ed-Fi behavior code -> the hub's problem behavior code (and back, for pushes).
BEHAVIORS = {
    "Fighting": "fighting-physical-aggression",
    "Defiance": "defiance",
    "Disruption": "disruption",
    "Disrespect": "disrespect",
    "Bullying": "bullying",
    "Harassment": "harassment",
    "Theft": "theft",
    "Tardy": "tardy",
    "Truancy": "skip-truancy",
    "Property Damage": "property-damage",
    "Weapons": "weapons",
    "Drugs": "drugs",
    "Alcohol": "alcohol",
    "Tobacco": "tobacco",
    "Other": "other",
}
BEHAVIOR_LEVELS = {
    "Fighting": "major",
    "Bullying": "major",
    "Harassment": "major",
    "Theft": "major",
    "Property Damage": "major",
    "Weapons": "major",
    "Drugs": "major",
    "Alcohol": "major",
    "Tobacco": "major",
    "Truancy": "major",
    "State Offense": "major",
    "Defiance": "minor",
    "Disruption": "minor",
    "Disrespect": "minor",
    "Tardy": "minor",
    "School Code of Conduct": "minor",
    "School Violation": "minor",
    "Other": "minor",
}
#: The hub's action codes -> Ed-Fi DisciplineDescriptor code values, for pushes.
DISCIPLINES = {
    "in-school-suspension": "In School Suspension",
    "out-of-school-suspension": "Out of School Suspension",
    "detention": "Detention",
    "conference-with-student": "Conference",
    "parent-contact": "Conference",
    "loss-of-privilege": "Loss of Privileges",
    "time-in-office": "Removal from Classroom",
    "community-service": "Community Service",
    "expulsion-with-services": "Expulsion",
    "expulsion-without-services": "Expulsion",
    "other": "Other",
}

_CODE = [{"op": "split", "separator": "#", "index": 1}]
_FIRST_CODE_IN_JSON = {"op": "regex_extract", "pattern": '#([^"]+)"', "group": 1}
_DATE = [{"op": "parse_date", "format": "%Y-%m-%d"}]


def _rule(target: str, source: str | list[str] | None, *transforms: dict[str, Any]) -> dict:
    return {"target": target, "source": source, "transforms": list(transforms)}


def _crosswalk(values: dict[str, str], otherwise: str = "error") -> dict[str, Any]:
    return {"op": "crosswalk", "values": dict(values), "otherwise": otherwise}


DEFAULT_MAPPINGS: dict[str, list[dict[str, Any]]] = {
    "school": [
        _rule("name", "nameOfInstitution", {"op": "trim"}),
        _rule("code", "schoolId"),
        _rule(
            "school_type",
            "schoolCategories",
            _FIRST_CODE_IN_JSON,
            _crosswalk(
                {
                    "Elementary School": "elementary",
                    "Primary School": "elementary",
                    "Middle School": "middle",
                    "Junior High School": "middle",
                    "High School": "high",
                    "Secondary School": "high",
                    "All Levels": "other",
                    "Adult School": "other",
                    "Ungraded": "other",
                    "Other": "other",
                }
            ),
            {"op": "default", "value": "other"},
        ),
        _rule("grade_low", "_gradeLow", _crosswalk(GRADE_LEVELS)),
        _rule("grade_high", "_gradeHigh", _crosswalk(GRADE_LEVELS)),
        _rule("nces_id", "_identificationCodes.NCES"),
    ],
    "academic_session": [
        _rule("name", "_name", {"op": "trim"}),
        _rule(
            "session_type",
            "_sessionKind",
            _crosswalk(
                {
                    "School Year": "schoolYear",
                    "Year Round": "schoolYear",
                    "Fall Semester": "semester",
                    "Spring Semester": "semester",
                    "Summer Semester": "semester",
                    "First Trimester": "term",
                    "Second Trimester": "term",
                    "Third Trimester": "term",
                    "First Quarter": "term",
                    "Second Quarter": "term",
                    "Third Quarter": "term",
                    "Fourth Quarter": "term",
                    "MiniTerm": "term",
                    "Grading Period": "gradingPeriod",
                }
            ),
        ),
        _rule("school_year", "_schoolYear"),
        _rule("start_date", "beginDate", *_DATE),
        _rule("end_date", "endDate", *_DATE),
        _rule("parent", "_parentSourceId"),
    ],
    "staff": [
        _rule("staff_number", "staffUniqueId", {"op": "trim"}),
        _rule("first_name", "firstName", {"op": "trim"}),
        _rule("last_name", "lastSurname", {"op": "trim"}),
        _rule("email", "_electronicMail", {"op": "trim"}, {"op": "case", "to": "lower"}),
        # Positions live in staffEducationOrganizationAssignmentAssociations, not read here.
        _rule("position", None, {"op": "default", "value": "teacher"}),
        _rule("is_active", None, {"op": "default", "value": "true"}),
    ],
    "student": [
        _rule("student_number", "studentUniqueId", {"op": "trim"}),
        _rule("first_name", "firstName", {"op": "trim"}),
        _rule("middle_name", "middleName", {"op": "trim"}),
        _rule("last_name", "lastSurname", {"op": "trim"}),
        _rule("preferred_name", "preferredFirstName", {"op": "trim"}),
        _rule("birth_date", "birthDate", *_DATE),
        _rule("grade_level", "_gradeLevel", _crosswalk(GRADE_LEVELS)),
        _rule("is_active", None, {"op": "default", "value": "true"}),
    ],
    "enrollment": [
        _rule("student", "_studentSourceId"),
        _rule("school", "_schoolSourceId"),
        _rule("school_year", "_schoolYearSourceId"),
        _rule("grade_level", "entryGradeLevelDescriptor", *_CODE, _crosswalk(GRADE_LEVELS)),
        _rule("entry_date", "entryDate", *_DATE),
        _rule("exit_date", "exitWithdrawDate", *_DATE),
        _rule(
            "exit_reason",
            "exitWithdrawTypeDescriptor",
            *_CODE,
            _crosswalk(
                {
                    "Transferred": "transfer",
                    "Transferred to another district": "transfer",
                    "Transferred to another school in the district": "transfer",
                    "Transferred to a private school": "transfer",
                    "Transferred out of state": "transfer",
                    "Graduated": "graduated",
                    "Graduated with a high school diploma": "graduated",
                    "Completed": "graduated",
                    "Promoted": "promoted",
                    "Dropped out": "dropped_out",
                    "Discontinued schooling": "dropped_out",
                    "Died": "other",
                    "Expelled": "other",
                    "Other": "other",
                }
            ),
        ),
    ],
    "section": [
        _rule("school", "_schoolSourceId"),
        _rule("session", "_sessionSourceId"),
        _rule("course_code", "courseOfferingReference.localCourseCode", {"op": "trim"}),
        _rule("course_title", "sectionName", {"op": "trim"}),
        _rule("section_code", "sectionIdentifier", {"op": "trim"}),
        _rule("period", "_classPeriods"),
        _rule("room", "locationReference.classroomIdentificationCode", {"op": "trim"}),
    ],
    "section_enrollment": [
        _rule("section", "_sectionSourceId"),
        _rule("student", "_studentSourceId"),
        _rule("begin_date", "beginDate", *_DATE),
        _rule("end_date", "endDate", *_DATE),
    ],
    "daily_attendance": [
        _rule("student", "_studentSourceId"),
        _rule("school", "_schoolSourceId"),
        _rule("date", "eventDate", *_DATE),
        _rule(
            "status",
            "attendanceEventCategoryDescriptor",
            *_CODE,
            _crosswalk(
                {
                    "In Attendance": "present",
                    "Excused Absence": "excused",
                    "Unexcused Absence": "unexcused",
                    "Tardy": "tardy",
                    "Early departure": "early_departure",
                }
            ),
        ),
    ],
    "grade": [
        _rule("student", "_studentSourceId"),
        _rule("section", "_sectionSourceId"),
        _rule("grading_period", "_gradingPeriodSourceId"),
        _rule("letter_grade", "letterGradeEarned", {"op": "trim"}),
        _rule("numeric_grade", "numericGradeEarned"),
        _rule("comment", "diagnosticStatement", {"op": "trim"}),
    ],
    "incident": [
        _rule("student", "_studentSourceId"),
        _rule("school", "_schoolSourceId"),
        _rule("occurred_on", "incidentDate", *_DATE),
        _rule(
            "occurred_at",
            "incidentTime",
            {"op": "regex_extract", "pattern": r"^(\d{2}:\d{2})", "group": 1},
        ),
        _rule("level", "_behaviorCode", _crosswalk(BEHAVIOR_LEVELS)),
        _rule("problem_behavior", "_behaviorCode", _crosswalk(BEHAVIORS, otherwise="keep")),
        _rule("narrative", "incidentDescription"),
    ],
}


@dataclass
class _Settings:
    base_url: str
    token_url: str
    client_key: str
    client_secret: str
    school_year: int | None
    page_size: int
    namespace: str


@dataclass
class _Companions:
    """Items of other collections that records are enriched from, read once per entity."""

    by_target: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, target: str, item: dict[str, Any]) -> None:
        self.by_target.setdefault(target, []).append(item)

    def get(self, target: str) -> list[dict[str, Any]]:
        return self.by_target.get(target, [])


@register
class EdFiConnector(Connector):
    """Reads an Ed-Fi ODS/API v7 with change queries; pushes incidents as discipline data."""

    type_name = "edfi"
    label = "Ed-Fi ODS/API v7"
    description = (
        "Pulls schools, sessions, staff, students, enrollments, sections, attendance, grades "
        "and discipline incidents from an Ed-Fi ODS/API v7 using change queries, and pushes "
        "hub incidents back as discipline incidents and actions."
    )
    params = (
        Param(
            "base_url",
            "API base URL",
            "url",
            help="The API root, e.g. https://ods.district.org/api: data is read under "
            "{base}/data/v3 and change versions under {base}/changeQueries/v1.",
        ),
        Param(
            "token_url",
            "Token URL",
            "url",
            required=False,
            default="",
            help="Leave empty for {base}/oauth/token.",
        ),
        Param("client_key", "Client key"),
        Param("client_secret", "Client secret", "secret"),
        Param(
            "school_year",
            "School year",
            "int",
            required=False,
            default=None,
            help="For an ODS/API with year-specific routes (/data/v3/2027/ed-fi/...); "
            "leave empty for a single ODS.",
        ),
        Param(
            "page_size",
            "Page size",
            "int",
            required=False,
            default=MAX_PAGE_SIZE,
            help=f"Items per request, at most {MAX_PAGE_SIZE} (the ODS/API's limit).",
        ),
        Param(
            "descriptor_namespace",
            "Descriptor namespace",
            required=False,
            default=ED_FI_NAMESPACE,
            help="Namespace of the behavior and discipline descriptors sent with pushed "
            "incidents, e.g. uri://ed-fi.org or your state's.",
        ),
    )
    entities = tuple(ENTITY_RESOURCES)
    writes = ("incident",)
    cursor_kind = "change_version"
    default_mappings: ClassVar[dict[str, list[dict[str, Any]]]] = DEFAULT_MAPPINGS

    def __init__(
        self,
        *,
        params: dict[str, Any],
        state: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
        progress: Callable[[int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(params=params, state=state, log=log, progress=progress)
        self._sleep = sleep
        self._http_client: SourceHttp | None = None
        self._settings_cache: _Settings | None = None

    # --- Parameters and HTTP -------------------------------------------------------------------

    def _settings(self) -> _Settings:
        if self._settings_cache is not None:
            return self._settings_cache
        p = self.params
        base = str(p.get("base_url") or "").strip().rstrip("/")
        if not base:
            raise ConnectorError("base_url is required (the Ed-Fi API root)", kind="input")
        for name in ("client_key", "client_secret"):
            if not str(p.get(name) or "").strip():
                raise ConnectorError(f"{name} is required", kind="input")
        year = p.get("school_year")
        if year in (None, ""):
            school_year = None
        else:
            try:
                school_year = int(year)
            except (TypeError, ValueError):
                raise ConnectorError(f"school_year {year!r} is not a year", kind="input") from None
            if not 1900 < school_year < 2200:
                raise ConnectorError(f"school_year {school_year} is not a year", kind="input")
        size = p.get("page_size")
        try:
            page_size = MAX_PAGE_SIZE if size in (None, "") else int(size)
        except (TypeError, ValueError):
            raise ConnectorError(f"page_size {size!r} is not a number", kind="input") from None
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ConnectorError(
                f"page_size {page_size} is outside 1..{MAX_PAGE_SIZE}: the Ed-Fi ODS/API refuses "
                f"a limit above {MAX_PAGE_SIZE}",
                kind="input",
            )
        self._settings_cache = _Settings(
            base_url=base,
            token_url=str(p.get("token_url") or "").strip() or f"{base}/oauth/token",
            client_key=str(p["client_key"]).strip(),
            client_secret=str(p["client_secret"]),
            school_year=school_year,
            page_size=page_size,
            namespace=str(p.get("descriptor_namespace") or ED_FI_NAMESPACE).rstrip("/"),
        )
        return self._settings_cache

    @property
    def _http(self) -> SourceHttp:
        if self._http_client is None:
            s = self._settings()
            self._http_client = SourceHttp(
                base_url=s.base_url,
                token_url=s.token_url,
                client_id=s.client_key,
                client_secret=s.client_secret,
                state=self.state,
                log=self.log,
                sleep=self._sleep,
            )
        return self._http_client

    def _data_path(self, resource: str) -> str:
        year = self._settings().school_year
        return f"/data/v3/{year}/ed-fi/{resource}" if year else f"/data/v3/ed-fi/{resource}"

    def _versions_path(self) -> str:
        year = self._settings().school_year
        middle = f"/{year}" if year else ""
        return f"/changeQueries/v1{middle}/availableChangeVersions"

    def close(self) -> None:
        if self._http_client is not None:
            self._http_client.close()
            self._http_client = None

    # --- Connection test and window ------------------------------------------------------------

    def _available_versions(self) -> tuple[int, int]:
        body, _ = self._http.get_json(self._versions_path())
        url = self._http.url(self._versions_path())
        if not isinstance(body, dict):
            raise ConnectorError(f"GET {url} answered {type(body).__name__}, not an object")

        def version(name: str) -> int:
            # v7 writes camelCase; ODS/API 5.x wrote PascalCase.
            value = body.get(name, body.get(name[0].upper() + name[1:]))
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ConnectorError(f"GET {url} answered without {name}: {body}")
            try:
                return int(value)
            except ValueError:
                raise ConnectorError(f"GET {url}: {name} {value!r} is not a number") from None

        return version("oldestChangeVersion"), version("newestChangeVersion")

    def test(self) -> str:
        oldest, newest = self._available_versions()
        return (
            f"Connected to {self._settings().base_url}: change queries available, newest "
            f"change version {newest} (oldest {oldest})"
        )

    def begin(self, *, mode: ReadMode, cursor: str | None) -> Window:
        oldest, newest = self._available_versions()
        context: dict[str, Any] = {"oldestChangeVersion": oldest, "newestChangeVersion": newest}
        full_reason = ""
        lower: int | None = None
        if mode == "full":
            full_reason = "a full read was asked for"
        elif cursor in (None, ""):
            full_reason = "there is no cursor yet (first run)"
        else:
            try:
                lower = int(str(cursor))
            except ValueError:
                raise ConnectorError(
                    f"the stored cursor {cursor!r} is not an Ed-Fi change version", kind="input"
                ) from None
            if lower + 1 < oldest:
                # The ODS purged the change records our cursor would need (or was rebuilt):
                # deletes and key changes since the cursor are gone, only a full read is safe.
                full_reason = (
                    f"the cursor {lower} is older than the oldest change version the source "
                    f"keeps ({oldest}): a full read is needed"
                )
            elif lower > newest:
                full_reason = (
                    f"the cursor {lower} is newer than the source's newest change version "
                    f"({newest}): the ODS was restored or replaced, a full read is needed"
                )
        if full_reason:
            context["full_read_reason"] = full_reason
            self.log(f"Ed-Fi: full read up to change version {newest}, because {full_reason}")
            return Window(
                mode="full",
                lower=None,
                upper=str(newest),
                cursor_after=str(newest),
                context=context,
            )
        self.log(f"Ed-Fi: changes after version {lower} up to {newest} ({mode})")
        return Window(
            mode=mode,
            lower=str(lower),
            upper=str(newest),
            cursor_after=str(newest),
            context=context,
        )

    # --- Reading -------------------------------------------------------------------------------

    def _fetch(self, resource: str, params: dict[str, Any], suffix: str = "") -> Fetch:
        path = self._data_path(resource) + suffix
        size = self._settings().page_size

        def fetch(offset: int) -> tuple[list[dict[str, Any]], int | None]:
            body, headers = self._http.get_json(
                path, {**params, "offset": offset, "limit": size, "totalCount": "true"}
            )
            if not isinstance(body, list) or not all(isinstance(i, dict) for i in body):
                raise ConnectorError(
                    f"GET {self._http.url(path)} answered {type(body).__name__}, not a JSON "
                    "array of objects"
                )
            count = headers.get("Total-Count")
            try:
                total = int(count) if count is not None else None
            except ValueError:
                total = None
            return body, total

        return fetch

    def _pager(
        self, resource: str, params: dict[str, Any], suffix: str = "", *, progress: bool = True
    ) -> _Pager:
        """``progress``: count the items for the run's progress bar (not for the collections
        read only to enrich records)."""
        return _Pager(
            self._fetch(resource, params, suffix),
            page_size=self._settings().page_size,
            what=f"{resource}{suffix}",
            on_page=self.progress if progress else (lambda n: None),
            log=self.log,
        )

    def _all(self, resource: str) -> Iterator[dict[str, Any]]:
        """Every current item of a collection (for enrichment)."""
        yield from self._pager(resource, {}, progress=False)

    @staticmethod
    def _window_params(window: Window) -> dict[str, Any] | None:
        """Change-version bounds of an incremental window; None for a full read.

        A full read sends no maxChangeVersion: the ODS orders items by surrogate key, so an
        item updated while we page stays where it is and is read with its newer values (and
        again by the next run, harmlessly). With the upper bound, that item would leave the
        window, be missing from this *complete* read and be taken for a removal.
        """
        if window.mode == "full" or window.lower is None:
            return None
        return {"minChangeVersion": int(window.lower) + 1, "maxChangeVersion": int(window.upper)}

    def read(self, entity: str, window: Window) -> EntityRead:
        if entity not in ENTITY_RESOURCES:
            raise ConnectorError(
                f"the Ed-Fi connector does not read {entity!r}; "
                f"it reads {', '.join(self.entities)}",
                kind="input",
            )
        bounds = self._window_params(window)
        incremental = bounds is not None
        if incremental and int(window.lower) >= int(window.upper):
            self.log(f"{entity}: no change since version {window.lower}")
            return EntityRead(entity=entity, complete=False, records=iter(()), expected_total=0)
        enrich = _Enricher(self, entity)
        enrich.load()
        parts: list[tuple[_Resource, _Pager]] = []
        key_changes: list[tuple[int, str, str]] = []
        total = 0
        for resource in ENTITY_RESOURCES[entity]:
            pager = self._pager(resource.name, bounds or {}).start()
            total += pager.total or 0
            parts.append((resource, pager))
            if incremental:
                for change in self._pager(resource.name, bounds, "/keyChanges"):
                    key_changes.append(self._key_change(resource, change))
        records = self._records(entity, parts, enrich, bounds)
        if entity == "academic_session":
            records = _once_per_source_id(records)
        return EntityRead(
            entity=entity,
            complete=not incremental,
            records=records,
            key_changes=_collapse(key_changes),
            expected_total=total,
            known_fields=known_fields(ENTITY_RESOURCES[entity]),
        )

    def _records(
        self,
        entity: str,
        parts: list[tuple[_Resource, _Pager]],
        enrich: _Enricher,
        bounds: dict[str, Any] | None,
    ) -> Iterator[SourceRecord]:
        emitted: set[str] = set()
        for resource, pager in parts:
            for item in pager:
                record = self._record(resource, item, enrich)
                if bounds is not None:
                    emitted.add(record.source_id)
                yield record
            if bounds is None:
                continue
            # Items whose enrichment changed in the window (a new discipline action for an
            # incident, a new enrollment for a student's grade level) are read again.
            for keys in enrich.changed_targets(resource, bounds):
                for item in self._query(resource, keys):
                    record = self._record(resource, item, enrich)
                    if record.source_id not in emitted:
                        emitted.add(record.source_id)
                        yield record
            for gone in self._pager(resource.name, bounds, "/deletes"):
                source_id = self._compose(resource, gone.get("keyValues"), "keyValues of a delete")
                # Deleted and created again with the same natural key in this window: the
                # live record read above is the truth.
                if source_id not in emitted:
                    yield SourceRecord(source_id=source_id, fields={}, deleted=True)
        yield from enrich.extra_records(bounds)

    def _query(self, resource: _Resource, keys: dict[str, Any]) -> list[dict[str, Any]]:
        body, _ = self._http.get_json(self._data_path(resource.name), keys)
        return body if isinstance(body, list) else []

    def _compose(self, resource: _Resource, kv: Any, what: str) -> str:
        if not isinstance(kv, Mapping):
            raise ConnectorError(f"{resource.name}: {what} is missing or not an object: {kv!r}")
        try:
            return resource.compose(kv)
        except KeyError as exc:
            raise ConnectorError(
                f"{resource.name}: {what} has no value for natural key field {exc.args[0]!r}: "
                f"{dict(kv)}"
            ) from None

    def _key_change(self, resource: _Resource, change: dict[str, Any]) -> tuple[int, str, str]:
        old = self._compose(resource, change.get("oldKeyValues"), "oldKeyValues of a key change")
        new = self._compose(resource, change.get("newKeyValues"), "newKeyValues of a key change")
        version = change.get("changeVersion")
        return (version if isinstance(version, int) else 0), old, new

    def _record(self, resource: _Resource, item: dict[str, Any], enrich: _Enricher) -> SourceRecord:
        source_id = self._compose(
            resource, _key_values(resource.keys, item), f"item {item.get('id', '?')}"
        )
        fields = flatten(item)
        for ref in resource.refs:
            try:
                fields[ref.field] = ref.compose(_key_values(ref.paths, item))
            except KeyError:
                fields[ref.field] = None  # an optional reference left out
        enrich.apply(resource, item, fields)
        return SourceRecord(source_id=source_id, fields=fields)

    # --- Pushing incidents ---------------------------------------------------------------------

    def fetch_incident(self, source_id: str) -> dict[str, Any] | None:
        """The Ed-Fi incident with this source id as flattened fields (with ``_etag`` and
        ``_lastModifiedDate`` in ISO 8601), or None when the source has no such incident; for
        the engine's conflict policies (newest wins compares ``_lastModifiedDate`` with the
        hub's ``updated_at``)."""
        school_id, identifier = _split_incident_id(source_id)
        items = self._query(
            DISCIPLINE_INCIDENTS, {"schoolId": school_id, "incidentIdentifier": identifier}
        )
        if not items:
            return None
        fields = flatten(items[0])
        fields["_schoolSourceId"] = str(school_id)
        fields["_sourceId"] = incident_source_id(
            {"schoolId": school_id, "incidentIdentifier": identifier}
        )
        return fields

    @staticmethod
    def incident_values(fields: Mapping[str, Any]) -> dict[str, Any]:
        """A fetched incident (:meth:`fetch_incident`) in the vocabulary of push rows, so the
        engine can compare it with the hub's row and take the source's side of a conflict:
        ``occurred_on`` (``YYYY-MM-DD``), ``occurred_at`` (``HH:MM:SS``), ``behavior_code`` (the
        hub's problem behavior code of the first behavior; the Ed-Fi code value when the hub
        has no equivalent) and ``modified_at`` (``_lastModifiedDate`` as an aware datetime, or
        None when the source did not send it)."""
        behavior = None
        try:
            listed = json.loads(fields.get("behaviors") or "[]")
        except (TypeError, ValueError):
            listed = []
        if isinstance(listed, list) and listed and isinstance(listed[0], Mapping):
            code = _code_or_none(listed[0].get("behaviorDescriptor"))
            behavior = BEHAVIORS.get(code, code) if code else None
        time_of_day = str(fields.get("incidentTime") or "").strip() or None
        if time_of_day and len(time_of_day) == 5:
            time_of_day += ":00"
        modified = None
        stamp = fields.get("_lastModifiedDate")
        if isinstance(stamp, str) and stamp:
            try:
                modified = dt.datetime.fromisoformat(normalize_timestamp(stamp))
            except ValueError:
                modified = None
            if modified is not None and modified.tzinfo is None:
                modified = modified.replace(tzinfo=dt.UTC)  # the ODS writes UTC
        return {
            "occurred_on": _iso_date(fields.get("incidentDate")),
            "occurred_at": time_of_day[:8] if time_of_day else None,
            "behavior_code": behavior,
            "modified_at": modified,
        }

    def push(self, entity: str, rows: list[dict[str, Any]]) -> list[PushResult]:
        if entity not in self.writes:
            raise ConnectorError(
                f"the Ed-Fi connector cannot push {entity!r}; it writes: {', '.join(self.writes)}",
                kind="input",
            )
        return [self._push_incident(row) for row in rows]

    def _descriptor(self, kind: str, code: str) -> str:
        return code if code.startswith("uri://") else f"{self._settings().namespace}/{kind}#{code}"

    def planned_action(self, row: dict[str, Any]) -> dict[str, str] | None:
        """The discipline action :meth:`push` would POST for ``row`` (see
        :meth:`Connector.planned_action`), from the code that builds that POST."""
        try:
            _school, identifier, source_id = _incident_of(row)
        except ValueError:
            return None  # refused before anything is sent
        key = _action_key(row, identifier)
        return {**key, "incident": source_id} if key else None

    def _push_incident(self, row: dict[str, Any]) -> PushResult:
        try:
            school_id, identifier, source_id = _incident_of(row)
        except ValueError as exc:
            source_id = str(row.get("source_id") or "").strip()
            return PushResult(source_id=source_id, action="failed", message=str(exc))
        # Checked before anything is sent, so that a bad row leaves no half-written incident.
        length: float | None = None
        if row.get("duration_days") not in (None, ""):
            try:
                length = float(row["duration_days"])
            except (TypeError, ValueError):
                return PushResult(
                    source_id=source_id,
                    action="failed",
                    message=f"duration_days {row['duration_days']!r} is not a number",
                )
        behavior = str(row.get("behavior_code") or "").strip()
        behavior_uri = (
            self._descriptor("BehaviorDescriptor", _ED_FI_BEHAVIOR.get(behavior, behavior))
            if behavior
            else None
        )
        incident: dict[str, Any] = {
            "incidentIdentifier": identifier,
            "schoolReference": {"schoolId": school_id},
            "incidentDate": _iso_date(row.get("occurred_on")),
        }
        occurred_at = str(row.get("occurred_at") or "").strip()
        if occurred_at:
            incident["incidentTime"] = (
                occurred_at if len(occurred_at) == 8 else f"{occurred_at[:5]}:00"
            )
        if behavior_uri:
            incident["behaviors"] = [{"behaviorDescriptor": behavior_uri}]
        # Narratives stay in the hub: they are free text about children, and a state system
        # has no business holding a teacher's account of an incident.
        etag = str(row.get("source_etag") or "").strip().strip('"')
        resource_id = str(row.get("source_resource_id") or "").strip()
        outcome: PushResult | str | None = None
        if etag and resource_id:
            outcome = self._update_incident(resource_id, etag, incident, source_id)
        if isinstance(outcome, PushResult):
            return outcome  # refused, or changed in the source since it was read
        if outcome is None:
            response = self._http.send_json(
                "POST", self._data_path("disciplineIncidents"), incident
            )
            if response.status_code not in (200, 201):
                return PushResult(
                    source_id=source_id,
                    action="failed",
                    message=_problem("disciplineIncidents", response),
                )
            outcome = "created" if response.status_code == 201 else "updated"
        action = outcome
        student = str(row.get("student_source_id") or "").strip()
        if not student:
            return PushResult(source_id=source_id, action=action)
        links = []
        if behavior_uri:
            link = {
                "behaviorDescriptor": behavior_uri,
                "disciplineIncidentReference": {
                    "incidentIdentifier": identifier,
                    "schoolId": school_id,
                },
                "studentReference": {"studentUniqueId": student},
            }
            response = self._http.send_json(
                "POST", self._data_path("studentDisciplineIncidentBehaviorAssociations"), link
            )
            if response.status_code not in (200, 201):
                return PushResult(
                    source_id=source_id,
                    action="failed",
                    message=f"the incident was {action}, but linking student {student} failed: "
                    + _problem("studentDisciplineIncidentBehaviorAssociations", response),
                )
            links.append(
                {
                    "studentDisciplineIncidentBehaviorAssociationReference": {
                        "behaviorDescriptor": behavior_uri,
                        "incidentIdentifier": identifier,
                        "schoolId": school_id,
                        "studentUniqueId": student,
                    }
                }
            )
        key = _action_key(row, identifier)
        if key is not None:
            code = str(row["action_code"]).strip()
            body: dict[str, Any] = {
                "disciplineActionIdentifier": key["identifier"],
                "disciplineDate": key["date"],
                "disciplines": [
                    {
                        "disciplineDescriptor": self._descriptor(
                            "DisciplineDescriptor", DISCIPLINES.get(code, code)
                        )
                    }
                ],
                "studentReference": {"studentUniqueId": key["student"]},
                "responsibilitySchoolReference": {"schoolId": school_id},
                "studentDisciplineIncidentBehaviorAssociations": links,
            }
            if length is not None:
                body["disciplineActionLength"] = length
            dropped, refused = self._drop_replaced_actions(
                key, row.get("sent_actions") or (), source_id
            )
            if refused is not None:
                return refused
            response = self._http.send_json("POST", self._data_path("disciplineActions"), body)
            if response.status_code not in (200, 201):
                return PushResult(
                    source_id=source_id,
                    action="failed",
                    message=f"the incident was {action}, but its discipline action was refused: "
                    + _problem("disciplineActions", response),
                    dropped_actions=dropped,
                )
            # A 201 says where the new item is; a 200 (an upsert of the same natural key)
            # does not, and the engine keeps the id it had.
            location = response.headers.get("location") or ""
            resource_id = location.rstrip("/").rsplit("/", 1)[-1] if location else ""
            return PushResult(
                source_id=source_id,
                action=action,
                sent_action={**key, "resource_id": resource_id},
                dropped_actions=dropped,
            )
        return PushResult(source_id=source_id, action=action)

    def _drop_replaced_actions(
        self, key: dict[str, str], sent: Iterable[Mapping[str, Any]], source_id: str
    ) -> tuple[list[dict[str, str]], PushResult | None]:
        """Delete the discipline actions this push replaces, before the new one is posted.

        ``sent``: the natural keys of the actions earlier pushes sent for this incident (the
        engine's record, ``row["sent_actions"]``). A discipline action's natural key includes
        its ``disciplineDate`` and student: when the hub's action moves to another day (or the
        incident to another student), a POST (an upsert by natural key) would create a second
        action beside the one sent before. So each recorded action whose key differs from
        ``key`` is deleted first, with ``If-Match`` on the version just read. Only recorded
        ones: an action with the same identifier that the source holds of its own is never
        touched (the identifier alone cannot tell them apart).

        Returns the keys dropped (deleted now, or gone already) and, when one could not be
        deleted, a failed result naming them; nothing new is posted then, and the next run
        tries again. (The ODS/API allows a key change by PUT only for the resources whose
        model says so; delete-then-create works on every ODS and on the test server alike.)
        """
        dropped: list[dict[str, str]] = []
        for old in sent:
            old_key = {name: str(old.get(name) or "") for name in ("identifier", "student", "date")}
            if old_key == key:
                continue
            items = self._query(
                DISCIPLINE_ACTIONS,
                {
                    "disciplineActionIdentifier": old_key["identifier"],
                    "studentUniqueId": old_key["student"],
                    "disciplineDate": old_key["date"],
                },
            )
            for item in items:
                response = self.delete_action(str(item["id"]), etag=item.get("_etag"))
                if response.action not in ("deleted", "unchanged"):
                    return dropped, PushResult(
                        source_id=source_id,
                        action="failed",
                        message=f"its discipline action moved to {key['date']}, but the "
                        f"one of {old_key['date']} could not be replaced: {response.message}",
                        dropped_actions=dropped,
                    )
            dropped.append(old_key)
        return dropped, None

    def fetch_action(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The discipline action with this natural key (``identifier``, ``student``, ``date``
        as in :attr:`PushResult.sent_action`) as flattened fields, with ``id``, ``_etag`` and
        ``_lastModifiedDate``; None when the source has no such action."""
        items = self._query(
            DISCIPLINE_ACTIONS,
            {
                "disciplineActionIdentifier": str(key.get("identifier") or ""),
                "studentUniqueId": str(key.get("student") or ""),
                "disciplineDate": str(key.get("date") or ""),
            },
        )
        return flatten(items[0]) if items else None

    def delete_action(self, resource_id: str, *, etag: str | None = None) -> PushResult:
        """Delete one discipline action, only if it is still the version read (``If-Match``
        with ``etag``): ``deleted``; ``unchanged`` when the source has it no more (404);
        ``conflict`` when it changed since it was read (412); ``failed`` with the source's
        reason otherwise."""
        path = f"{self._data_path('disciplineActions')}/{resource_id}"
        current = str(etag or "").strip('"')
        headers = {"If-Match": f'"{current}"'} if current else None
        response = self._http.send_json("DELETE", path, None, headers=headers)
        if response.status_code in (200, 204):
            return PushResult(source_id=resource_id, action="deleted")
        if response.status_code == 404:
            return PushResult(
                source_id=resource_id, action="unchanged", message="not in the source (any more)"
            )
        return PushResult(
            source_id=resource_id,
            action="conflict" if response.status_code == 412 else "failed",
            message=_problem("disciplineActions", response),
        )

    def _update_incident(
        self, resource_id: str, etag: str, incident: dict[str, Any], source_id: str
    ) -> PushResult | str | None:
        """Update an incident the source has, only if it is still the version the engine read.

        The ODS/API replaces a whole resource on PUT (and on a POST upsert), so the fields the
        hub does not hold (the source's description, location, reporter, other behaviors...)
        are taken from the source's current item and only the hub's fields are laid over them.
        ``If-Match`` carries the ETag of the version the engine decided on: a 412 means the
        source changed the incident since, and nothing was written (``action="conflict"``).
        Returns "updated", a failed or conflict :class:`PushResult`, or None when the incident
        is gone from the source (the caller creates it again).
        """
        path = f"{self._data_path('disciplineIncidents')}/{resource_id}"
        try:
            current, _ = self._http.get_json(path)
        except HttpStatusError as exc:
            if exc.status == 404:
                return None
            raise
        if not isinstance(current, dict):
            raise ConnectorError(f"GET {self._http.url(path)} answered something not an object")
        body = {
            k: _without_links(v)
            for k, v in current.items()
            if k not in ("id", "_etag", "_lastModifiedDate", "link")
        }
        for name in ("incidentIdentifier", "schoolReference", "incidentDate", "incidentTime"):
            if name in incident:
                body[name] = incident[name]
        if incident.get("behaviors"):
            ours = incident["behaviors"][0]
            theirs = _objects(body, "behaviors")
            if theirs:
                # The hub knows one behavior: it replaces the source's first, the rest stay.
                first = {**theirs[0], **ours}
                rest = [
                    b
                    for b in theirs[1:]
                    if b.get("behaviorDescriptor") != ours["behaviorDescriptor"]
                ]
                body["behaviors"] = [first, *rest]
            else:
                body["behaviors"] = [ours]
        response = self._http.send_json("PUT", path, body, headers={"If-Match": f'"{etag}"'})
        if response.status_code == 412:
            return PushResult(
                source_id=source_id,
                action="conflict",
                message="changed in the source since it was read: "
                + _problem("disciplineIncidents", response),
            )
        if response.status_code == 404:
            return None
        if response.status_code not in (200, 201, 204):
            return PushResult(
                source_id=source_id,
                action="failed",
                message=_problem("disciplineIncidents", response),
            )
        return "updated"

    def delete_incident(self, source_id: str, *, etag: str | None = None) -> PushResult:
        """Delete an incident the hub deleted, with what hangs on it, in the order the ODS/API
        allows (it refuses to delete an item another still references, 409):

        1. its discipline actions: an action that refers only to this incident's student
           behavior associations is deleted; one that also refers to another incident is kept
           and only loses the references to this one (a PUT);
        2. its studentDisciplineIncidentBehaviorAssociations;
        3. the incident itself, with ``If-Match``.

        ``etag``: the version of the incident the engine decided on. When the incident is no
        longer that version, nothing is deleted and the result is ``conflict``; the check is
        made before step 1, so a conflict leaves the actions and associations as they were.
        ``unchanged`` when the source has no such incident (deleted there already).
        """
        try:
            school_id, identifier = _split_incident_id(source_id)
        except ValueError as exc:
            return PushResult(source_id=source_id, action="failed", message=str(exc))
        keys = {"schoolId": school_id, "incidentIdentifier": identifier}
        items = self._query(DISCIPLINE_INCIDENTS, keys)
        if not items:
            return PushResult(
                source_id=source_id, action="unchanged", message="not in the source (any more)"
            )
        item = items[0]
        current = str(item.get("_etag") or "").strip('"')
        wanted = str(etag or "").strip('"')
        if wanted and current and current != wanted:
            return PushResult(
                source_id=source_id,
                action="conflict",
                message=f"changed in the source since it was read (its ETag is no longer {wanted})",
            )
        links = self._query(BEHAVIOR_ASSOCIATIONS, keys)
        students = sorted(
            {
                str(_dig(link, "studentReference.studentUniqueId"))
                for link in links
                if _dig(link, "studentReference.studentUniqueId") is not None
            }
        )
        sdiba = "studentDisciplineIncidentBehaviorAssociations"
        for student in students:
            actions = self._pager(
                DISCIPLINE_ACTIONS.name, {"studentUniqueId": student}, progress=False
            )
            for action in list(actions):
                refs = _objects(action, sdiba)
                ours = [r for r in refs if _refers_to(r, keys)]
                if not ours:
                    continue
                path = f"{self._data_path('disciplineActions')}/{action['id']}"
                if len(ours) == len(refs):
                    response = self._http.send_json("DELETE", path, None)
                else:
                    body = {
                        k: _without_links(v)
                        for k, v in action.items()
                        if k not in ("id", "_etag", "_lastModifiedDate", "link")
                    }
                    body[sdiba] = _without_links([r for r in refs if r not in ours])
                    response = self._http.send_json("PUT", path, body)
                if response.status_code not in (200, 204, 404):
                    return PushResult(
                        source_id=source_id,
                        action="failed",
                        message="its discipline action "
                        f"{action.get('disciplineActionIdentifier')} could not be removed: "
                        + _problem("disciplineActions", response),
                    )
        for link in links:
            path = f"{self._data_path(sdiba)}/{link['id']}"
            response = self._http.send_json("DELETE", path, None)
            if response.status_code not in (204, 404):
                return PushResult(
                    source_id=source_id,
                    action="failed",
                    message="its student behavior association could not be deleted: "
                    + _problem(sdiba, response),
                )
        path = f"{self._data_path('disciplineIncidents')}/{item['id']}"
        headers = {"If-Match": f'"{current}"'} if current else None
        response = self._http.send_json("DELETE", path, None, headers=headers)
        if response.status_code == 412:
            return PushResult(
                source_id=source_id,
                action="conflict",
                message="changed in the source while it was being deleted: "
                + _problem("disciplineIncidents", response),
            )
        if response.status_code == 404:
            return PushResult(
                source_id=source_id, action="unchanged", message="not in the source (any more)"
            )
        if response.status_code not in (200, 204):
            return PushResult(
                source_id=source_id,
                action="failed",
                message=_problem("disciplineIncidents", response),
            )
        return PushResult(source_id=source_id, action="deleted")

    def find_incident_key(self, identifier: str) -> str | None:
        """The source id (``schoolId|incidentIdentifier``) of the incident with this
        identifier in any school, or None: for a hub incident that was sent under its stable
        identifier while keeping another system's lineage."""
        items = self._query(DISCIPLINE_INCIDENTS, {"incidentIdentifier": identifier})
        if not items:
            return None
        return incident_source_id(_key_values(DISCIPLINE_INCIDENTS.keys, items[0]))


_ED_FI_BEHAVIOR = {hub: ed_fi for ed_fi, hub in BEHAVIORS.items()}


def _incident_of(row: Mapping[str, Any]) -> tuple[int, str, str]:
    """The schoolId, incidentIdentifier and source id of the incident a push row is about:
    its lineage (``source_id``), or for a new one its school and stable identifier. Raises
    ValueError when the row names none."""
    source_id = str(row.get("source_id") or "").strip()
    if source_id:
        school_id, identifier = _split_incident_id(source_id)
    else:
        school_id = _school_id(row.get("school_source_id"))
        identifier = str(row.get("incident_identifier") or "").strip()
        if not identifier:
            raise ValueError("incident_identifier is required for a new incident")
    return (
        school_id,
        identifier,
        incident_source_id({"schoolId": school_id, "incidentIdentifier": identifier}),
    )


def _action_key(row: Mapping[str, Any], identifier: str) -> dict[str, str] | None:
    """The natural key of the discipline action a push row sends with its incident, or None
    when it sends none (no action, or no student to give it to). The one place the key is
    made: the POST's body takes it, and so does the engine's record ahead of the POST
    (:meth:`EdFiConnector.planned_action`)."""
    student = str(row.get("student_source_id") or "").strip()
    code = str(row.get("action_code") or "").strip()
    if not student or not code:
        return None
    return {
        # One action per incident and student; Ed-Fi identifiers are at most 36 long.
        "identifier": identifier[:36],
        "student": student,
        "date": _iso_date(row.get("action_date") or row.get("occurred_on")),
    }


def _split_incident_id(source_id: str) -> tuple[int, str]:
    school, sep, identifier = str(source_id).partition("|")
    if not sep or not identifier:
        raise ValueError(f"incident source id {source_id!r} is not 'schoolId|incidentIdentifier'")
    return _school_id(school), identifier


def _school_id(value: Any) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise ValueError(
            f"school source id {value!r} is not an Ed-Fi schoolId (a number)"
        ) from None


def _iso_date(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)[:10]


def _problem(resource: str, response: httpx.Response) -> str:
    """An Ed-Fi problem details answer as one line naming the fields:
    ``disciplineIncidents answered 400 Data Validation Failed: $.incidentDate: ...``."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    head = f"{resource} answered {response.status_code}"
    if not isinstance(body, dict):
        text = response.text.strip()[:300]
        return f"{head}: {text}" if text else head
    details: list[str] = []
    validation = body.get("validationErrors")
    if isinstance(validation, dict):
        for path, messages in validation.items():
            listed = messages if isinstance(messages, list) else [messages]
            details.extend(f"{path}: {m}" for m in listed)
    errors = body.get("errors")
    if isinstance(errors, list):
        details.extend(str(e) for e in errors)
    title = body.get("title") or ""
    if not details and body.get("detail"):
        details.append(str(body["detail"]))
    return f"{head} {title}".rstrip() + (f": {'; '.join(details)}" if details else "")


def _collapse(changes: list[tuple[int, str, str]]) -> list[tuple[str, str]]:
    """Key changes in version order, chains folded: A->B then B->C is A->C; no-ops dropped."""
    origin_of: dict[str, str] = {}
    current: dict[str, str] = {}
    for _, old, new in sorted(changes, key=lambda c: c[0]):
        origin = origin_of.pop(old, old)
        current[origin] = new
        origin_of[new] = origin
    return [(origin, new) for origin, new in current.items() if origin != new]


# --- Enrichment ---------------------------------------------------------------------------------


class _Enricher:
    """Fields a record gets from other collections or derived from its own lists.

    - school: ``_gradeLow``/``_gradeHigh`` (Ed-Fi grade level code values),
      ``_identificationCodes.<system>`` (``_identificationCodes.NCES``).
    - academic_session: ``_kind``, ``_name``, ``_sessionKind`` (the term code, "Grading
      Period" or "School Year"), ``_schoolYear``, ``_parentSourceId``; plus one school-year
      record per year, spanning its sessions (Ed-Fi has no dated school-year resource).
    - staff: ``_electronicMail`` (the work address if there is one).
    - student: ``_gradeLevel``, the entry grade of the latest studentSchoolAssociation.
    - section: ``_classPeriods`` (class period names, comma-joined).
    - incident: ``_behaviorCode`` (the first behavior's code value); ``_studentSourceId``,
      ``_disciplineCode`` and ``disciplineAction.*`` from the first discipline action that
      references the incident, else the student from its
      studentDisciplineIncidentBehaviorAssociation. One record per incident: an incident with
      several students is linked to one of them (the hub's incident has one student).
    """

    def __init__(self, connector: EdFiConnector, entity: str) -> None:
        self.connector = connector
        self.entity = entity
        self.companions = _Companions()
        self.actions = _Companions()
        self.sessions: list[dict[str, Any]] = []

    def load(self) -> None:
        c = self.connector
        if self.entity == "student":
            for item in c._all(STUDENT_SCHOOL_ASSOCIATIONS.name):
                student = _dig(item, "studentReference.studentUniqueId")
                if student is not None:
                    self.companions.add(str(student), item)
        elif self.entity == "academic_session":
            self.sessions = list(c._all(SESSIONS.name))
            for session in self.sessions:
                for key in _session_grading_periods(session):
                    self.companions.add(grading_period_source_id(key), session)
        elif self.entity == "incident":
            for item in c._all(BEHAVIOR_ASSOCIATIONS.name):
                for key in _incident_targets(BEHAVIOR_ASSOCIATIONS, item):
                    self.companions.add(incident_source_id(key), item)
            for item in c._all(DISCIPLINE_ACTIONS.name):
                for key in _incident_targets(DISCIPLINE_ACTIONS, item):
                    self.actions.add(incident_source_id(key), item)

    def changed_targets(self, resource: _Resource, bounds: dict[str, Any]) -> list[dict[str, Any]]:
        """Key values (query parameters) of the items whose enrichment changed in the window."""
        c = self.connector
        targets: list[dict[str, Any]] = []
        if resource is STUDENTS:
            for item in c._pager(STUDENT_SCHOOL_ASSOCIATIONS.name, bounds, progress=False):
                targets.append({"studentUniqueId": _dig(item, "studentReference.studentUniqueId")})
            for gone in c._pager(
                STUDENT_SCHOOL_ASSOCIATIONS.name, bounds, "/deletes", progress=False
            ):
                targets.append(
                    {"studentUniqueId": (gone.get("keyValues") or {}).get("studentUniqueId")}
                )
        elif resource is GRADING_PERIODS:
            for session in c._pager(SESSIONS.name, bounds, progress=False):
                targets.extend(_session_grading_periods(session))
        elif resource is DISCIPLINE_INCIDENTS:
            for companion in (BEHAVIOR_ASSOCIATIONS, DISCIPLINE_ACTIONS):
                for item in c._pager(companion.name, bounds, progress=False):
                    targets.extend(_incident_targets(companion, item))
            for gone in c._pager(BEHAVIOR_ASSOCIATIONS.name, bounds, "/deletes", progress=False):
                kv = gone.get("keyValues") or {}
                targets.append(
                    {
                        "schoolId": kv.get("schoolId"),
                        "incidentIdentifier": kv.get("incidentIdentifier"),
                    }
                )
        unique: dict[str, dict[str, Any]] = {}
        for keys in targets:
            if all(v not in (None, "") for v in keys.values()):
                unique[json.dumps(keys, sort_keys=True, default=str)] = keys
        return list(unique.values())

    def apply(self, resource: _Resource, item: dict[str, Any], fields: dict[str, Any]) -> None:
        if resource is SCHOOLS:
            codes = [
                descriptor_code(g.get("gradeLevelDescriptor"))
                for g in _objects(item, "gradeLevels")
                if g.get("gradeLevelDescriptor")
            ]
            ranked = sorted((c for c in codes if c in GRADE_ORDER), key=GRADE_ORDER.index)
            fields["_gradeLow"] = ranked[0] if ranked else None
            fields["_gradeHigh"] = ranked[-1] if ranked else None
            for code in _objects(item, "identificationCodes"):
                system = code.get("educationOrganizationIdentificationSystemDescriptor")
                if system and code.get("identificationCode") is not None:
                    fields[f"_identificationCodes.{descriptor_code(system)}"] = code[
                        "identificationCode"
                    ]
        elif resource is SESSIONS:
            fields.update(
                _kind="session",
                _name=item.get("sessionName"),
                _sessionKind=_code_or_none(item.get("termDescriptor")),
                _schoolYear=_dig(item, "schoolYearTypeReference.schoolYear"),
            )
        elif resource is GRADING_PERIODS:
            source_id = grading_period_source_id(_key_values(GRADING_PERIODS.keys, item))
            parents = self.companions.get(source_id)
            year = _dig(item, "schoolYearTypeReference.schoolYear")
            fields.update(
                _kind="gradingPeriod",
                _name=item.get("gradingPeriodName"),
                _sessionKind="Grading Period",
                _schoolYear=year,
                _parentSourceId=(
                    session_source_id(_key_values(SESSIONS.keys, parents[0]))
                    if parents
                    else (school_year_source_id({"schoolYear": year}) if year else None)
                ),
            )
        elif resource is STAFFS:
            mails = _objects(item, "electronicMails")
            work = [
                m
                for m in mails
                if descriptor_code(m.get("electronicMailTypeDescriptor") or "x") == "Work"
            ]
            chosen = (work or mails or [{}])[0]
            fields["_electronicMail"] = chosen.get("electronicMailAddress")
        elif resource is STUDENTS:
            associations = self.companions.get(str(item.get("studentUniqueId")))
            # The latest entry wins; an open enrollment beats one the student has left.
            ranked = sorted(
                associations,
                key=lambda a: (a.get("exitWithdrawDate") is None, str(a.get("entryDate") or "")),
            )
            grade = ranked[-1].get("entryGradeLevelDescriptor") if ranked else None
            fields["_gradeLevel"] = _code_or_none(grade)
        elif resource is SECTIONS:
            names = [
                str(_dig(p, "classPeriodReference.classPeriodName"))
                for p in _objects(item, "classPeriods")
                if _dig(p, "classPeriodReference.classPeriodName")
            ]
            fields["_classPeriods"] = ",".join(names) or None
        elif resource is DISCIPLINE_INCIDENTS:
            source_id = incident_source_id(_key_values(DISCIPLINE_INCIDENTS.keys, item))
            behaviors = _objects(item, "behaviors")
            fields["_behaviorCode"] = (
                _code_or_none(behaviors[0].get("behaviorDescriptor")) if behaviors else None
            )
            links = sorted(
                self.companions.get(source_id),
                key=lambda a: str(_dig(a, "studentReference.studentUniqueId")),
            )
            actions = sorted(
                self.actions.get(source_id),
                key=lambda a: (
                    str(a.get("disciplineDate")),
                    str(a.get("disciplineActionIdentifier")),
                ),
            )
            student = _dig(actions[0], "studentReference.studentUniqueId") if actions else None
            if student is None and links:
                student = _dig(links[0], "studentReference.studentUniqueId")
            fields["_studentSourceId"] = str(student) if student is not None else None
            if actions:
                for name, value in flatten(actions[0]).items():
                    if not name.startswith("_") and name != "id":
                        fields[f"disciplineAction.{name}"] = value
                disciplines = _objects(actions[0], "disciplines")
                fields["_disciplineCode"] = (
                    _code_or_none(disciplines[0].get("disciplineDescriptor"))
                    if disciplines
                    else None
                )

    def extra_records(self, bounds: dict[str, Any] | None) -> Iterator[SourceRecord]:
        """The school-year sessions, made from the sessions of each year (every read: they are
        few, and an unchanged one is left untouched by the merge)."""
        if self.entity != "academic_session":
            return
        years: dict[int, list[dict[str, Any]]] = {}
        for session in self.sessions:
            year = _dig(session, "schoolYearTypeReference.schoolYear")
            if isinstance(year, int):
                years.setdefault(year, []).append(session)
        for year, sessions in sorted(years.items()):
            begins = [str(s["beginDate"]) for s in sessions if s.get("beginDate")]
            ends = [str(s["endDate"]) for s in sessions if s.get("endDate")]
            yield SourceRecord(
                source_id=school_year_source_id({"schoolYear": year}),
                fields={
                    "_kind": "schoolYear",
                    "_name": f"{year - 1}-{year}",
                    "_sessionKind": "School Year",
                    "_schoolYear": year,
                    "beginDate": min(begins) if begins else None,
                    "endDate": max(ends) if ends else None,
                    "_parentSourceId": None,
                },
            )


def _refers_to(link: Mapping[str, Any], keys: Mapping[str, Any]) -> bool:
    """Whether a discipline action's association entry refers to the incident ``keys``."""
    ref = link.get("studentDisciplineIncidentBehaviorAssociationReference") or {}
    return str(ref.get("schoolId")) == str(keys["schoolId"]) and str(
        ref.get("incidentIdentifier")
    ) == str(keys["incidentIdentifier"])


def _objects(item: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    value = item.get(name)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _code_or_none(value: Any) -> str | None:
    return descriptor_code(value) if value not in (None, "") else None


def _session_grading_periods(session: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for period in _objects(session, "gradingPeriods"):
        ref = period.get("gradingPeriodReference") or {}
        keys = {
            name: ref.get(name)
            for name in ("gradingPeriodDescriptor", "gradingPeriodName", "schoolId", "schoolYear")
        }
        if all(v not in (None, "") for v in keys.values()):
            out.append(keys)
    return out


def _incident_targets(resource: _Resource, item: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The incidents (schoolId, incidentIdentifier) an association or action points at."""
    if resource is BEHAVIOR_ASSOCIATIONS:
        refs = [item.get("disciplineIncidentReference") or {}]
    else:
        refs = [
            link.get("studentDisciplineIncidentBehaviorAssociationReference") or {}
            for link in _objects(item, "studentDisciplineIncidentBehaviorAssociations")
        ]
    out = []
    for ref in refs:
        if ref.get("schoolId") is not None and ref.get("incidentIdentifier"):
            out.append(
                {"schoolId": ref["schoolId"], "incidentIdentifier": ref["incidentIdentifier"]}
            )
    return out
