"""What every connector type is: declared parameters, a connection test, and entity reads.

A connector knows one protocol (OneRoster CSV, OneRoster REST, Ed-Fi ...) and nothing of the
hub's tables. It hands the engine *source records* per hub entity, in the source's own field
vocabulary; the integration's mappings turn those into hub fields, and the pipeline
(``integrations.pipeline``) stages, validates, diffs and merges them. So a connector never
writes to the database, and the engine never speaks a protocol.

Reading is split in two so that incremental pulls are correct (see shared/design/SYNC.md):

1. ``begin(mode=..., cursor=...)`` fixes the window *before* anything is read: the lower bound is
   the cursor the last committed run left, the upper bound is taken from the source now (Ed-Fi's
   newest change version, or the source's clock for OneRoster's dateLastModified). Records
   changed while the run reads have a version above the upper bound and are read next time.
2. ``read(entity, window)`` returns an :class:`EntityRead` for each entity, inside that window.

``Window.cursor_after`` is what the engine stores as the new cursor, and only when the run
commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

#: ``pem``: a block of text such as a PEM certificate (several lines, not secret).
ParamKind = Literal["text", "url", "secret", "int", "path", "choice", "bool", "pem"]
ReadMode = Literal["full", "incremental", "delta"]


@dataclass(frozen=True)
class Param:
    """A parameter an admin fills in for an integration of this type.

    ``secret`` parameters are stored encrypted and never shown again after saving.
    """

    name: str
    label: str
    kind: ParamKind = "text"
    required: bool = True
    default: Any = None
    help: str = ""
    choices: tuple[tuple[str, str], ...] = ()


class ConnectorError(Exception):
    """A failure the admin sees as the run's or the test's message. Say what and where.

    ``kind``: ``credentials`` (rejected credentials: counts for the circuit breaker),
    ``unavailable`` (network, 5xx or 429 after the retries ran out), ``protocol`` (the source
    answered something the protocol does not allow), ``input`` (a missing file or column, an
    invalid manifest, an undecodable file: the run fails before any write).
    """

    def __init__(self, message: str, *, kind: str = "protocol") -> None:
        super().__init__(message)
        self.kind = kind


class CredentialsRejected(ConnectorError):
    def __init__(self, detail: str = "") -> None:
        message = "credentials rejected" + (f": {detail}" if detail else "")
        super().__init__(message, kind="credentials")


@dataclass
class SourceRecord:
    """One record as the source has it, flattened to ``field -> value``.

    ``fields`` uses the source's names. Nested objects are flattened with dots
    (``schoolReference.schoolId``); lists of scalars are joined with commas; other lists are
    JSON text. Values are str, int, float, bool or None. ``source_id`` is the record's key in
    the source (what other records use to refer to it); ``deleted`` marks a delete (OneRoster
    ``status=tobedeleted``, an Ed-Fi ``/deletes`` entry, whose ``fields`` may be empty).
    """

    source_id: str
    fields: dict[str, Any]
    deleted: bool = False
    file: str = ""
    line: int | None = None


@dataclass
class CsvFile:
    """A CSV file the pipeline loads with PostgreSQL COPY (the fast path for bulk files).

    ``encoding`` is a Python codec name; the connector has checked the file decodes with it.
    """

    name: str
    path: Path
    encoding: str = "utf-8"


@dataclass
class Join:
    """A CSV file joined to another: its row whose ``key`` equals the main row's ``from_field``.

    With ``aggregates`` (alias -> SQL aggregate over the joined file's rows, named ``x``), the
    joined file is grouped by ``key`` and only those aliases are added: OneRoster 1.2's
    ``roles.csv`` becomes a user's primary role and the list of their orgs.
    """

    csv: CsvFile
    key: str = "sourcedId"
    from_field: str = "sourcedId"
    aggregates: dict[str, str] = field(default_factory=dict)


@dataclass
class EntityRead:
    """What a connector read for one hub entity within a window.

    Exactly one of ``records`` or ``csv`` is set.

    - ``complete``: True when the read holds the whole entity (a full pull, a bulk CSV file).
      Then hub rows of this source that are missing from it are removals. False for deltas
      and incremental pulls, where only ``deleted`` records remove.
    - ``where``: for CSV files holding several entities (OneRoster ``users.csv``), keep only
      rows whose field is one of the values, e.g. ``{"role": ["student"]}``.
    - ``explode``: a field holding a comma-separated list (``orgSourcedIds``); each value
      becomes its own record with the value in field ``_item`` and ``source_id``
      ``<source_id>:<value>``. REST connectors hand such fields over joined the same way.
    - ``key_changes``: (old source id, new source id) pairs, applied before the merge (Ed-Fi
      ``/keyChanges``).
    - ``joins``: for CSV, other files whose columns are added to each row (OneRoster 1.2 keeps
      birth dates in ``demographics.csv`` and roles in ``roles.csv``); see :class:`Join`.
    - ``derived``: for CSV, extra source fields computed by SQL over the staged row ``r`` (and
      ``j0``, ``j1``... the joined rows); for values no mapping op expresses, like OneRoster's
      race flags to one code. API connectors compute such fields in Python instead.
    - ``id_field``: the CSV column holding the record's source id.
    - ``deleted_when``: for CSV, ``(field, value)`` marking a deleted row (``status``,
      ``tobedeleted``).
    """

    entity: str
    complete: bool
    records: Iterable[SourceRecord] | None = None
    csv: CsvFile | None = None
    where: dict[str, list[str]] = field(default_factory=dict)
    explode: str | None = None
    key_changes: list[tuple[str, str]] = field(default_factory=list)
    id_field: str = "sourcedId"
    joins: list[Join] = field(default_factory=list)
    derived: dict[str, str] = field(default_factory=dict)
    deleted_when: tuple[str, str] | None = ("status", "tobedeleted")
    expected_total: int | None = None
    #: every field the protocol defines for this file or resource; others draw a warning
    known_fields: frozenset[str] | None = None


@dataclass
class Window:
    """The bounds of one run's read, fixed by ``begin`` before anything is read."""

    mode: ReadMode
    lower: str | None
    upper: str | None
    cursor_after: str | None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class PushResult:
    """What a push of one hub record to the source did.

    ``conflict``: the source refused the write because the record changed there since it was
    read (an optimistic write whose ``If-Match`` no longer matched: HTTP 412); nothing was
    changed, and the engine settles it under the sync's conflict policy. ``deleted``: a delete
    the hub made was carried out in the source; ``unchanged`` for a delete: the source did not
    have the record (any more).

    For the engine's record of what a push sent (``integrations.models.PushedAction``):
    ``sent_action`` is the dependent action the push wrote with the record (its natural key
    ``identifier``, ``student``, ``date``, and ``resource_id`` when the source said), and
    ``dropped_actions`` the natural keys of the actions it deleted because the new one replaces
    them. Both are filled on every outcome, a failed one included, so the record never claims
    less or more than the source holds. No ``sent_action`` tells the engine the action was not
    sent (not POSTed, or refused): the record it wrote ahead of the send
    (:meth:`Connector.planned_action`) is deleted again.
    """

    source_id: str
    action: Literal["created", "updated", "deleted", "unchanged", "skipped", "failed", "conflict"]
    message: str = ""
    sent_action: dict[str, str] | None = None
    dropped_actions: list[dict[str, str]] = field(default_factory=list)


class Connector:
    """Base class of connector types. Subclasses set the class attributes and implement the
    methods; ``integrations.connectors.registry.register`` makes them selectable in the admin.

    ``params`` holds the integration's parameter values (secrets decrypted). ``state`` is a
    dict the engine persists between runs for the connector (a cached token with its expiry):
    mutate it in place. ``log(message)`` appends to the run's log. ``progress(n)`` reports n
    more source records read, for the progress bar.
    """

    type_name: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    #: hub entities this type reads, in the order a run merges them
    entities: ClassVar[tuple[str, ...]] = ()
    #: hub entities this type can push back to the source
    writes: ClassVar[tuple[str, ...]] = ()
    #: ``"change_version"``, ``"timestamp"`` or None (no incremental reads)
    cursor_kind: ClassVar[str | None] = None
    #: entity -> default mapping rules (see ``integrations.transforms``)
    default_mappings: ClassVar[dict[str, list[dict[str, Any]]]] = {}

    def __init__(
        self,
        *,
        params: dict[str, Any],
        state: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.params = params
        self.state = state if state is not None else {}
        self.log = log or (lambda message: None)
        self.progress = progress or (lambda n: None)

    def test(self) -> str:
        """Check the connection and credentials; return a one-line success message.

        Raise :class:`ConnectorError` (or :class:`CredentialsRejected`) with what failed.
        """
        raise NotImplementedError

    def begin(self, *, mode: ReadMode, cursor: str | None) -> Window:
        """Fix the window of this run (see the module docstring)."""
        return Window(mode=mode, lower=None, upper=None, cursor_after=None)

    def read(self, entity: str, window: Window) -> EntityRead:
        raise NotImplementedError

    def push(self, entity: str, rows: list[dict[str, Any]]) -> list[PushResult]:
        """Send hub rows to the source (bidirectional syncs). Only for ``writes`` entities."""
        raise NotImplementedError

    def planned_action(self, row: dict[str, Any]) -> dict[str, str] | None:
        """The dependent action ``push`` would send with ``row``, before it is sent: its
        natural key (``identifier``, ``student``, ``date``, as in
        :attr:`PushResult.sent_action`) and ``incident``, the source id of the record it
        belongs to; None when the row sends none. The engine records it ahead of the send
        (``integrations.models.PushedAction``), so a worker that dies after the source took
        the action still has it on record. Computed by the code that builds the request, so
        the key recorded is the key sent."""
        return None

    def close(self) -> None:
        """Release files and connections."""
