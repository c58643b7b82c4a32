"""The sync pipeline: stream, transform, stage, validate, diff, hold, merge, stamp, emit.

Everything after reading is set-wise SQL over staging tables, so a run of a million records
costs a handful of statements, not a million round trips (benchmark B2):

1. **Stage.** Each entity's source records land in an UNLOGGED table in schema ``sync_stage``:
   a bulk CSV file by PostgreSQL ``COPY`` straight from the file (falling back to Python's CSV
   reader only when the file has malformed rows, to report every one of them), records from an
   API by ``COPY ... FROM STDIN`` rows. Open record errors of earlier runs are added back, so a
   failed record is retried until it succeeds or is dismissed.
2. **Transform and validate.** The mapping (``integrations.transforms``) is compiled to one SQL
   expression per hub field; one ``CREATE TABLE AS`` computes them all. Type, required, code,
   length and duplicate checks are one ``INSERT ... SELECT`` into the record errors, naming
   file, line, field and reason. In a delta or incremental read, a required field a record
   leaves empty first takes the hub's value for a record the hub already has. Bad rows are
   flagged, not dropped, so that a full sync does not mistake a row it could not read for a
   removal.
3. **Merge**, for all entities in one transaction, referenced entities first: resolve
   references by source id, match identities (source id, state id, number plus name and birth
   date; an ambiguous person goes to the review queue), diff against current rows column by
   column (unchanged rows are not touched, so they keep their change version), and if the
   changes cross the definition's thresholds, roll back and hold the run with a preview.
   Otherwise keep before-images (rollback), update, insert, remove (deactivate people, delete
   the rest: the delete trigger writes tombstones), advance the cursor, audit, emit events.
   A constraint the database still rejects (two rows claiming one open enrollment) is isolated
   by bisection under savepoints and becomes a record error; the rest of the set goes in.

Between 1 and 2, records unchanged since the definition's last merge are *kept*: each staged
row gets a fingerprint (a 64-bit hash of the mapping's signature, its own text and its
joined rows'), and a row whose fingerprint and hub row (same change version) are as the last
merge stored them is neither mapped, validated nor merged; it counts as unchanged, and as
present for removals. The merge re-checks kept rows' hub rows in its transaction and stores the
fingerprints of what it left (``RecordFingerprint``). Every entity is: a list exploded into
records per item, an effective-dated one against its current period (see
Stager._keep_unchanged).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import psycopg
from auditlog.models import LogEntry
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from psycopg import sql as psql

from bxos.common import events
from bxos.common.audit import audit_bulk
from bxos.common.db import own_connection, safe_change_version
from integrations import entities as ent
from integrations import transforms
from integrations.choices import ErrorStatus
from integrations.connectors.base import ConnectorError, CsvFile, EntityRead, SourceRecord
from integrations.models import FingerprintMark, RecordError, RunChange, SyncRun

logger = logging.getLogger(__name__)

SCHEMA = "sync_stage"
#: Staging tables (unlogged: a run that crashes starts again) are kept out of autovacuum's way.
#: The pipeline analyzes what it needs itself; an autovacuum worker busy on a million-row
#: staging table took CPU from the run and held up its DROP at the end for a second each
#: (deadlock_timeout, after which PostgreSQL cancels it).
STAGING_OPTIONS = "WITH (autovacuum_enabled = false)"

# Python codec -> PostgreSQL COPY encoding, for the native fast path.
PG_ENCODINGS = {
    "utf-8": "UTF8",
    "utf-8-sig": "UTF8",
    "cp1252": "WIN1252",
    "windows-1252": "WIN1252",
    "latin-1": "LATIN1",
    "iso-8859-1": "LATIN1",
    "iso8859-1": "LATIN1",
}

TRUE_WORDS = ("true", "t", "1", "yes", "y")
FALSE_WORDS = ("false", "f", "0", "no", "n")


#: Part of every fingerprint's signature: raise it when a change to the mapping code (not the
#: rules) changes what a record maps to, so that no record is skipped on a stale fingerprint.
FINGERPRINT_VERSION = 3

#: The fingerprint hash: PostgreSQL's 64-bit hashtextextended (its hash partitioning's), about
#: half md5's cost over a million rows; a false match needs a 2**-64 collision between a
#: record and its own earlier text. Seed 0.
FINGERPRINT_HASH = "hashtextextended({}, 0)"


def hub_defaults(spec: ent.EntitySpec, district_id: int) -> str:
    """md5 of the values the merge fills in for fields a record leaves empty (today's school
    year, its start): they come from the hub, not the record, so a fingerprint holds only
    while they are the same. A stored fingerprint is the record's combined with
    :func:`defaults_key` of this, as the merge that stored it saw it."""
    defaults = [t for t in spec.targets if t.default_sql]
    values: list = []
    if defaults:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT " + ", ".join(f"({t.default_sql})::text" for t in defaults),
                {"district": district_id},
            )
            values = list(cur.fetchone())
    return hashlib.md5(json.dumps(values).encode()).hexdigest()


def defaults_key(defaults: str) -> int:
    """:func:`hub_defaults` as a signed 64-bit integer, XORed (``#``) into a record's
    fingerprint to make the one stored: an integer operation per row where hashing the two
    together as text was about 0.4 s of a re-run's million enrollments. A false match would
    still need two different texts' hashes to differ by exactly this key (2**-64)."""
    return int.from_bytes(bytes.fromhex(defaults[:16]), "big", signed=True)


HASH_WORK_MEM = "128MB"


# Below this many records, nested loops over the hub's indexes beat reading the district's
# rows into a hash (a delta of a few hundred records against a table of a million).
HASH_MIN_ROWS = 20000
# A merge that wrote at least this many rows, and more than a tenth of a table, analyzes it.
ANALYZE_MIN_ROWS = 1000


@contextlib.contextmanager
def local_settings(cur, settings: dict[str, str]) -> Iterator[None]:
    """``settings`` (PostgreSQL's, by name) for the statements inside, as transaction-local
    settings put back after: nothing else in the caller's transaction sees them, and a failed
    statement's savepoint or transaction undoes them too."""
    names = list(settings)
    shown = ", ".join(f"current_setting({lit(name)})" for name in names)
    cur.execute(f"SELECT {shown}")
    before = cur.fetchone()

    def put(values) -> None:
        cur.execute(
            "SELECT " + ", ".join(f"set_config({lit(name)}, %s, true)" for name in names),
            list(values),
        )

    put(settings.values())
    yield
    put(before)


@contextlib.contextmanager
def hash_joins(cur, *, rows: int | None = None) -> Iterator[None]:
    """For the statements inside, within the caller's transaction: no nested loops.

    The fingerprint statements join a run's records to the fingerprints and to the hub table
    by hash: the hub table was just loaded by this transaction (a first run inserting a
    million rows) and the fingerprints by the previous run, so their statistics may say
    "empty", and the planner's nested loop over them then takes hours instead of a second.

    ``rows``: how many records the statements start from; below :data:`HASH_MIN_ROWS` the
    planner is left to choose. None: hash whatever the count."""
    if rows is not None and rows < HASH_MIN_ROWS:
        yield
        return
    # Memory enough to hash a million records' fingerprints without spilling to disk.
    with local_settings(cur, {"enable_nestloop": "off", "work_mem": HASH_WORK_MEM}):
        yield


@contextlib.contextmanager
def index_probes(cur, *, rows: int) -> Iterator[None]:
    """For the statements inside, within the caller's transaction: no hash or merge joins,
    when the records they start from are few (below :data:`HASH_MIN_ROWS`).

    A re-run's 1% joins ten thousand records to the district's million hub rows by primary
    key. The planner, pricing each probe as a random read from disk, hashed the whole hub table
    instead: 0.4 s where the probes take 0.05 s, a hub table being in memory while a district
    syncs (docs/benchmarks.md, B2 session 12). Only for statements that have an index for
    every join."""
    if rows >= HASH_MIN_ROWS:
        yield
        return
    with local_settings(cur, {"enable_hashjoin": "off", "enable_mergejoin": "off"}):
        yield


def staging_columns(table: str) -> list[str]:
    """A staging table's columns, in order (one staged by an earlier version, for a held run,
    may lack some)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            [table],
        )
        return [r[0] for r in cur.fetchall()]


def fingerprint_mark(definition, entity: str) -> int | None:
    """The definition's FingerprintMark of ``entity``, if a complete read has set one."""
    return (
        FingerprintMark.objects.filter(definition=definition, entity=entity)
        .values_list("change_version", flat=True)
        .first()
    )


def _retry_key(read: EntityRead) -> str:
    """Where a record's source id is in the raw rows its errors keep: the CSV column holding
    it, or ``_sid`` for records handed over by an API (and files a zip left out)."""
    return "_sid" if read.csv is None else read.id_field


class Held(Exception):
    """Raised inside the merge transaction to undo it and hold the run."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: Any) -> str:
    """A quoted SQL literal."""
    return psql.Literal(value).as_string(None)


def _codec(name: str) -> str:
    return codecs.lookup(name).name


# --- progress, written on a side connection so it is visible while the merge runs ------------


class Progress:
    """Updates the run's progress columns from a separate autocommit connection, at most
    twice a second: the run's own transaction is invisible to the admin's progress bar."""

    def __init__(self, run: SyncRun) -> None:
        self.run = run
        self._conn: psycopg.Connection | None = None
        self._last = 0.0

    def _connection(self) -> psycopg.Connection | None:
        if self._conn is None:
            try:
                name = f"bxos progress of sync run #{self.run.pk}"
                self._conn = own_connection(application_name=name)
            except Exception:  # progress is a courtesy; a failure must not fail the run
                logger.exception("progress connection failed")
                return None
        return self._conn

    def update(self, *, force: bool = False, **values: Any) -> None:
        for name, value in values.items():
            setattr(self.run, name, value)
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        conn = self._connection()
        if conn is None:
            return
        try:
            conn.execute(
                "UPDATE integrations_syncrun SET processed = %s, total = %s, phase = %s "
                "WHERE id = %s",
                [self.run.processed, self.run.total, self.run.phase[:80], self.run.pk],
            )
        except Exception:
            logger.exception("progress update failed")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- staging -----------------------------------------------------------------------------------


@dataclass
class Staged:
    """What the staging step left for one entity."""

    entity: str
    raw: str  # qualified raw table
    table: str  # qualified mapped table
    complete: bool
    rows: int
    key_changes: list[tuple[str, str]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    # An incomplete read that explodes a list (a guardian's agentSourcedIds): the table of the
    # parents it carried, whose lists are complete, so their dropped items are removals.
    parents: str | None = None
    # Records skipped as unchanged since the last run (see Stager._keep_unchanged): the table
    # of their lines, source ids and hub rows, and the table of every row's fingerprint.
    kept: str | None = None
    fingerprints: str | None = None
    defaults: str | None = None  # hub_defaults() as staging saw them
    # Staging saw every hub change up to this version (a held run is merged later: the rows
    # may have changed since).
    kept_seen: int | None = None
    kept_rows: int = 0
    # A CSV read's joined files: (staging table, key, from_field, file name). The merge keeps
    # a failed record's joined rows with its error too (see attach_raw).
    joins: list[tuple[str, str, str, str]] = field(default_factory=list)
    # The key of a record's source id in the raw rows its errors keep, as this read has them
    # (a CSV column, or ``_sid`` for API records and files the zip left out): only errors
    # keeping it could be retried by this run (see errors_superseded).
    retry_key: str | None = None

    def to_json(self) -> dict:
        """Every field, for ``SyncRun.staging``: a held run is merged later from this, so it
        is derived from the dataclass (a field listed by hand was once forgotten, and held runs
        then merged without their ``parents`` table)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Staged:
        """The inverse of :meth:`to_json`. JSON turns the key changes' pairs into lists; they
        are made pairs again. Fields a run stored before they existed take their defaults."""
        known = {f.name for f in fields(cls)}
        item = {k: v for k, v in data.items() if k in known}
        item["key_changes"] = [tuple(pair) for pair in item.get("key_changes") or ()]
        item["joins"] = [tuple(join) for join in item.get("joins") or ()]
        return cls(**item)


class Stager:
    """Loads one run's source records into staging tables and checks them set-wise."""

    def __init__(self, run: SyncRun, *, progress: Progress, log) -> None:
        self.run = run
        self.definition = run.definition
        self.integration = self.definition.integration
        self.progress = progress
        self.log = log
        self.warnings: list[str] = []
        self._joins: list[tuple[str, set[str], object]] = []
        self._warned: set[str] = set()
        # Each CSV file is loaded once per run (users.csv feeds five entities, roles.csv is
        # joined to four): (path, header, encoding) -> (table, rows, the file's row errors).
        self._files: dict[tuple, tuple[str, int, list[RecordError]]] = {}
        # And each joined file is grouped (or de-duplicated) by its key once per run:
        # (table, key, aggregates) -> the table of one row per key (_joined_table).
        self._joined_tables: dict[tuple, str] = {}
        # Rows in each staging table of records, as loading counted them (a count(*) of the
        # enrollments' million rows is 0.1 s of a re-run).
        self._rows: dict[str, int] = {}

    def table_name(self, entity: str, suffix: str = "") -> str:
        return f"{SCHEMA}.{q(f'r{self.run.pk}_{entity}{suffix}')}"

    # -- entry point

    def stage(self, read: EntityRead, *, rules: list[dict], crosswalks: dict[str, dict]) -> Staged:
        entity = read.entity
        spec = ent.spec(entity)
        raw = self.table_name(entity, "_raw")
        with connection.cursor() as cur:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            cur.execute(f"DROP TABLE IF EXISTS {raw}")
        self._joins = []
        needed = self._needed_fields(read, rules)
        if read.csv is not None:
            raw, columns, file_sql, sid_sql, deleted_sql = self._stage_csv(read, needed, rules)
        else:
            columns, file_sql, sid_sql, deleted_sql = self._stage_records(read, raw, needed)
        raw = self._inject_retries(entity, raw, columns, read)
        kept, kept_rows = self._keep_unchanged(
            spec, read, raw, columns, rules, crosswalks, sid_sql, deleted_sql
        )
        mapped = self.table_name(entity)
        parents = None
        if read.explode and not read.complete:
            parents = self.table_name(entity, "_parents")
        targets = self._map(
            spec,
            read,
            raw,
            mapped,
            columns,
            rules,
            crosswalks,
            file_sql,
            sid_sql,
            deleted_sql,
            parents=parents,
            kept=kept,
        )
        if not read.complete:
            self._fall_back_to_current(spec, mapped, targets)
        rows = self._validate(spec, raw, mapped, targets, read)
        return Staged(
            entity=entity,
            raw=raw,
            table=mapped,
            complete=read.complete,
            rows=rows,
            key_changes=list(read.key_changes),
            targets=targets,
            parents=parents,
            kept=kept[0],
            fingerprints=kept[1],
            defaults=kept[2],
            kept_seen=kept[3],
            kept_rows=kept_rows,
            joins=self._join_refs(read),
            retry_key=_retry_key(read),
        )

    # -- skipping records unchanged since the last run

    def _signature(
        self, spec: ent.EntitySpec, read: EntityRead, raw: str, rules, crosswalks
    ) -> str:
        """md5 of everything besides the record's own text that decides its mapped values:
        the rules, the crosswalks they name, how the read selects, derives and joins, and
        the staged columns. (The hub's defaults are added by :func:`hub_defaults`.)"""
        used: set[str] = set()
        for rule in rules:
            for op in rule.get("transforms") or ():
                if isinstance(op, dict) and op.get("op") == "crosswalk" and op.get("table"):
                    used.add(op["table"])
        signature = {
            "version": FINGERPRINT_VERSION,
            "entity": spec.name,
            "targets": [repr(t) for t in spec.targets],
            "rules": rules,
            "crosswalks": {name: crosswalks.get(name) for name in sorted(used)},
            "where": read.where,
            "derived": read.derived,
            "explode": read.explode,
            "id_field": read.id_field,
            "deleted_when": read.deleted_when,
            "columns": self._raw_columns(raw),
            "joins": [
                [join.key, join.from_field, join.aggregates, self._raw_columns(table)]
                for table, _provides, join in (self._joins if read.csv is not None else [])
            ],
        }
        return hashlib.md5(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()

    def _keep_unchanged(
        self, spec, read, raw, columns, rules, crosswalks, sid_sql, deleted_sql
    ) -> tuple[tuple[str, str, str, int], int]:
        """Fingerprint every staged row and find those this definition's last merge left
        exactly so: same fingerprint, and the hub row it left still at the same change
        version (a hub-side edit, a rollback or a removal changes or removes it). Those are
        *kept*: not mapped, validated or merged (benchmark B2: a re-run with 1% changed maps
        1% of the rows).

        Never kept: records retried from earlier errors, rows the read marks deleted, and a
        source id the read has more than once (the duplicate must still fail validation).

        Every entity is fingerprinted. A read that explodes a list into records (a user's orgs,
        a guardian's students) per item: the item's record is its parent row with the item,
        under the item's own source id (``parent:item``), as the hub row is. An effective-dated
        entity against its *current* period's row (the one without an end): what depends on
        today in its merge (a change's new period starts today when the source gives no date;
        a date after today is refused) concerns only changed or failed records, never kept.

        Returns ((kept table, fingerprint table, hub defaults as seen now, the change version
        every hub row the statement saw is at or below), kept rows).
        """
        fps = self.table_name(spec.name, "_fp")
        defaults = hub_defaults(spec, self.run.district_id)
        kept = self.table_name(spec.name, "_kept")
        column = self._column_sql(read, columns)
        joined, filtered = self._joined_sql(read, column)
        explode, item_sid = self._explode_sql(read, column, sid_sql)
        row = ", ".join(f"r.{q(c)}" for c in self._raw_columns(raw))
        # The parts are separated by a control character, and a missing joined row is a
        # marker no row's text can be (a row's text starts with "(").
        parts = [lit(self._signature(spec, read, raw, rules, crosswalks)), f"ROW({row})::text"]
        for n in range(len(self._joins if read.csv is not None else [])):
            parts.append(f"coalesce(j{n}._t, E'\\x01')")
        if read.explode:
            parts.append("x._item")  # an exploded record is its parent row and its item
        fp = FINGERPRINT_HASH.format(f"concat_ws(E'\\x1e', {', '.join(parts)})")
        with connection.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {fps} CASCADE")  # and the view of its kept rows
            # An upper bound of the records (the read's filter is not applied): enough to
            # decide whether the statement below hashes.
            rows = self._rows.get(raw)
            if rows is None:
                cur.execute(f"SELECT count(*) FROM {raw}")
                rows = cur.fetchone()[0]
        # Every change at or below this version is committed, so the statement below sees it;
        # any later change has a higher version, which lets the merge check cheaply whether a
        # kept record's hub row changed in between (Merger._recheck_kept).
        # A short wait: past it (another district's long merge in flight), an older safe
        # version is as correct, and at worst sends the merge to its full check.
        seen = safe_change_version(wait_seconds=1.0)
        mark = fingerprint_mark(self.definition, spec.name)
        if mark is None:
            # Each staged row probes the fingerprints, then the district's hub rows.
            hub = (
                f"LEFT JOIN {q(spec.table)} t ON t.id = s.hub_id "
                "AND t.change_version = s.hub_change_version AND t.district_id = %(district)s"
            )
            unchanged = " AND t.id IS NOT NULL"
        else:
            # Only hub rows written (or deleted) above the mark can differ from their
            # fingerprints (FingerprintMark): those few are read, not the district's million.
            # A table with statistics, so that the planner hashes them when they are many.
            hub = ""
            changed = self.table_name(spec.name, "_changed")
            with connection.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {changed}")
                cur.execute(
                    f"""
                    CREATE UNLOGGED TABLE {changed} {STAGING_OPTIONS} AS
                    SELECT t.id, t.change_version AS cv FROM {q(spec.table)} t
                    WHERE t.change_version > %(mark)s AND t.district_id = %(district)s
                    UNION ALL
                    SELECT b.object_id, b.change_version FROM common_tombstone b
                    WHERE b.table_name = %(table)s AND b.change_version > %(mark)s
                      AND b.district_id = %(district)s
                    """,
                    {"mark": mark, "district": self.run.district_id, "table": spec.table},
                )
                written = cur.rowcount
                cur.execute(f"ANALYZE {changed}")
            if written:
                # Joined, not a NOT EXISTS: in the select list that would run once per row.
                hub = (
                    f"LEFT JOIN (SELECT c.id, array_agg(c.cv) AS cvs FROM {changed} c "
                    "GROUP BY c.id) ch ON ch.id = s.hub_id"
                )
                unchanged = " AND (ch.id IS NULL OR s.hub_change_version = ALL(ch.cvs))"
            else:
                unchanged = ""
        # One pass: every staged row's fingerprint, and whether it is kept. The table holds
        # every row (the merge finds removals against it) and the kept ones are a view of it
        # (the merge rechecks them); mapping reads the few that are not kept.
        # The row's ctid lets mapping fetch the few rows not kept without reading the rest.
        # The source id's 64-bit hash finds the ids staged twice: grouping a million of them
        # as text was about 0.3 s more, and a collision only leaves a record not kept.
        sid_hash = FINGERPRINT_HASH.format(f"({item_sid})")
        staged = (
            f"SELECT r._line AS _line, r.ctid AS _ctid, ({item_sid}) AS _sid, "
            f"{sid_hash} AS _sh, ({deleted_sql}) AS _deleted, "
            f"{fp} AS _fp FROM {raw} r{joined}{explode}{filtered}"
        ).replace("%", "%%")  # source text (a column's name) inside a statement with parameters
        # Without joined files, the ids staged twice are grouped straight from the staged rows:
        # reading the statement's materialized rows a second time to group them was slower
        # (2.6 to 3.6 s against 2.3 to 2.8 s for a million enrollments, B2 session 12). With
        # them the read's filter may need the joins, which are not worth making twice.
        if joined:
            dups = "SELECT d._sh FROM f d GROUP BY d._sh HAVING count(*) > 1"
        else:
            dups = (
                f"SELECT {sid_hash} AS _sh "
                f"FROM {raw} r{explode}{filtered} GROUP BY 1 HAVING count(*) > 1"
            ).replace("%", "%%")
        with transaction.atomic(), connection.cursor() as cur, hash_joins(cur, rows=rows):
            cur.execute(
                f"""
                CREATE UNLOGGED TABLE {fps} {STAGING_OPTIONS} AS
                WITH f AS MATERIALIZED ({staged}), dups AS MATERIALIZED ({dups})
                SELECT f._line, f._ctid, f._sid, f._deleted, f._fp, s.hub_id AS _hub_id,
                       s.hub_change_version AS _cv,
                       coalesce(s.hub_id IS NOT NULL AND f._line < 2000000000 AND NOT f._deleted
                                AND dups._sh IS NULL{unchanged}, false) AS _kept
                FROM f
                LEFT JOIN dups ON dups._sh = f._sh
                LEFT JOIN integrations_recordfingerprint s ON s.definition_id = %(definition)s
                  AND s.entity = %(entity)s AND s.source_id = f._sid
                  AND s.fingerprint = f._fp # %(defaults)s::bigint
                {hub}
                """,
                {**self._params(spec.name), "defaults": defaults_key(defaults)},
            )
            cur.execute(
                f"CREATE VIEW {kept} AS SELECT _line, _sid, _hub_id, _cv FROM {fps} WHERE _kept"
            )
            # How many are kept, for the planner: unanalyzed, it took the 1% a re-run maps
            # for a sixth of the table and hashed every staged row to find them.
            cur.execute(f"ANALYZE {fps} (_kept)")
            cur.execute(f"SELECT count(*) FILTER (WHERE _kept) FROM {fps}")
            count = cur.fetchone()[0]
        if count:
            self.log(f"{spec.name}: {count} record(s) unchanged since the last run; not mapped")
        return (kept, fps, defaults, seen), count

    def _needed_fields(self, read: EntityRead, rules: list[dict]) -> set[str]:
        needed = set(transforms.source_fields(rules)) - {"_item"}
        needed.update(read.where)
        if read.explode:
            needed.add(read.explode)
        return needed

    # -- CSV: native COPY, Python fallback for malformed files

    def _stage_csv(self, read: EntityRead, needed: set[str], rules: list[dict]):
        source: CsvFile = read.csv
        encoding = _codec(source.encoding)
        header = self._csv_header(source, encoding)
        join_headers: list[list[str]] = []
        for join in read.joins:
            jh = self._csv_header(join.csv, _codec(join.csv.encoding))
            if join.key not in jh:
                raise ConnectorError(f"{join.csv.name} lacks the column {join.key}", kind="input")
            if join.from_field not in header:
                raise ConnectorError(
                    f"{source.name} lacks the column {join.from_field}", kind="input"
                )
            join_headers.append(jh)
        joined = [
            c
            for join, jh in zip(read.joins, join_headers, strict=True)
            for c in (list(join.aggregates) if join.aggregates else jh)
        ]
        available = set(header) | set(joined) | set(read.derived)
        missing = sorted(f for f in self._required_columns(read, rules) if f not in available)
        if missing and not read.complete and read.known_fields is not None:
            # A delta may leave out the file a required field comes from (demographics.csv,
            # with a student's birthDate): records the hub has keep their value, new ones fail
            # as records (_fall_back_to_current). The file's own columns and the fields that
            # select and identify its rows are still required.
            structural = {read.id_field, *read.where, read.explode}
            missing = [f for f in missing if f in read.known_fields or f in structural]
        if missing:
            raise ConnectorError(
                f"{source.name} lacks the required column(s) {', '.join(missing)}; "
                f"its header has: {', '.join(header)}",
                kind="input",
            )
        for name, sql in read.derived.items():
            refs = set(re.findall(r'r\."([^"]+)"', sql))
            absent = sorted(refs - set(header) - set(joined))
            if absent and name in needed:
                raise ConnectorError(
                    f"{source.name} lacks the column(s) {', '.join(absent)} needed for {name}",
                    kind="input",
                )
        self._warn_unknown(source.name, header, read)
        if len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            raise ConnectorError(
                f"{source.name} repeats the column(s) {', '.join(dupes)} in its header",
                kind="input",
            )
        raw, loaded = self._file_table(source, header, encoding, read.entity)
        self.log(f"{read.entity}: staged {loaded} rows from {source.name}")
        self._joins = []
        for join, jh in zip(read.joins, join_headers, strict=True):
            join_raw, _ = self._file_table(join.csv, jh, _codec(join.csv.encoding), read.entity)
            provides = set(join.aggregates) if join.aggregates else set(jh) - set(header)
            self._joins.append((join_raw, provides, join))
        file_sql = f"coalesce(r._file, {lit(source.name)})"
        sid_sql = f"r.{q(read.id_field)}"
        if read.deleted_when and read.deleted_when[0] in header:
            fld, value = read.deleted_when
            deleted_sql = f"coalesce(r.{q(fld)} = {lit(value)}, false)"
        else:
            deleted_sql = "false"
        return raw, set(header), file_sql, sid_sql, deleted_sql

    def _file_table(
        self, source: CsvFile, header: list[str], encoding: str, entity: str
    ) -> tuple[str, int]:
        """The staging table of one CSV file, loaded the first time an entity asks for it and
        shared after: entities only read it (a record retried from an earlier run goes into a
        copy, see _inject_retries). A malformed row's error is still recorded for each entity
        that reads the file, as when each loaded its own."""
        key = (str(source.path), tuple(header), encoding)
        if key in self._files:
            table, loaded, errors = self._files[key]
            RecordError.objects.bulk_create(
                [self._error(entity, **_error_fields(e)) for e in errors if e.entity != entity]
            )
            return table, loaded
        table = self.table_name(f"file{len(self._files)}")
        cols = ", ".join(f"{q(h)} text" for h in header)
        with connection.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(
                # A cached sequence: one COPY takes consecutive lines all the same, and a
                # million nextval() calls without a cache cost about 0.2 s.
                f"CREATE UNLOGGED TABLE {table} (_line bigint GENERATED BY DEFAULT AS IDENTITY "
                f"(START WITH 2 CACHE 10000), _file text, {cols}) {STAGING_OPTIONS}"
            )
        errors: list[RecordError] = []
        loaded = self._load_csv(source, table, header, encoding, entity, errors)
        self._files[key] = (table, loaded, errors)
        self._rows[table] = loaded
        return table, loaded

    def _warn_unknown(self, where: str, fields, read: EntityRead) -> None:
        """Fields the protocol does not define are ignored, with one warning per file."""
        if read.known_fields is None or where in self._warned:
            return
        unknown = [f for f in fields if f not in read.known_fields and not f.startswith("_")]
        if unknown:
            self._warned.add(where)
            more = " ..." if len(unknown) > 12 else ""
            self.warnings.append(
                f"{where}: unknown field(s) ignored: {', '.join(unknown[:12])}{more}"
            )

    def _load_csv(
        self,
        source: CsvFile,
        raw: str,
        header: list[str],
        encoding: str,
        entity: str,
        errors: list[RecordError],
    ) -> int:
        pg_encoding = PG_ENCODINGS.get(encoding)
        loaded = None
        if pg_encoding:
            loaded = self._copy_native(source, raw, header, pg_encoding, encoding)
        if loaded is None:
            loaded = self._copy_parsed(source, raw, header, encoding, entity, errors)
        return loaded

    def _required_columns(self, read: EntityRead, rules: list[dict]) -> set[str]:
        spec = ent.spec(read.entity)
        required = {read.id_field, *read.where}
        if read.explode:
            required.add(read.explode)
        for rule in rules:
            try:
                target = spec.target(rule.get("target", ""))
            except KeyError:
                continue
            ops = {t.get("op") for t in rule.get("transforms", [])}
            if not target.required or target.default_sql or ops & {"default", "constant"}:
                continue
            source = rule.get("source")
            fields = source if isinstance(source, list) else [source] if source else []
            required.update(f for f in fields if f != "_item")
        return required

    def _csv_header(self, source: CsvFile, encoding: str) -> list[str]:
        with open(source.path, encoding=encoding, newline="") as fh:
            try:
                header = next(csv.reader(fh), None)
            except UnicodeDecodeError as exc:
                raise ConnectorError(
                    f"{source.name} is not {encoding}: {exc.reason} at byte {exc.start}",
                    kind="input",
                ) from exc
        if not header:
            raise ConnectorError(f"{source.name} is empty: no header row", kind="input")
        return [h.strip().lstrip("\ufeff") for h in header]

    def _copy_native(
        self, source: CsvFile, raw: str, header: list[str], pg_encoding: str, encoding: str
    ) -> int | None:
        cols = ", ".join(q(h) for h in header)
        statement = (
            f"COPY {raw} ({cols}) FROM STDIN WITH (FORMAT csv, HEADER true, "
            f"ENCODING {lit(pg_encoding)})"
        )
        size = source.path.stat().st_size
        done = 0
        try:
            with transaction.atomic(), connection.cursor() as cur:
                with open(source.path, "rb") as fh, cur.copy(statement) as copy:
                    # COPY does not skip a byte-order mark: it would become part of the first
                    # column's name.
                    if pg_encoding != "UTF8" or fh.read(3) != codecs.BOM_UTF8:
                        fh.seek(0)
                    while chunk := fh.read(1 << 20):
                        copy.write(chunk)
                        done += len(chunk)
                        self.progress.update(
                            phase=f"Loading {source.name} ({done * 100 // max(size, 1)}%)"
                        )
                return cur.rowcount  # COPY's own count: the rows it loaded
        except (DatabaseError, psycopg.Error) as exc:
            # A malformed row (a missing or extra field, a stray quote) fails the whole COPY.
            # Re-read with Python's parser, which reports every such row and loads the rest.
            self.log(
                f"{source.name}: COPY refused the file ({_first_line(exc)}); re-reading row by row"
            )
            return None

    def _copy_parsed(
        self,
        source: CsvFile,
        raw: str,
        header: list[str],
        encoding: str,
        entity: str,
        errors: list[RecordError],
    ) -> int:
        count = 0
        cols = ", ".join(["_line", *(q(h) for h in header)])
        width = len(header)
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(f"TRUNCATE {raw}")
            with (
                open(source.path, encoding=encoding, newline="") as fh,
                cur.copy(f"COPY {raw} ({cols}) FROM STDIN") as copy,
            ):
                reader = csv.reader(fh)
                try:
                    next(reader)
                    for row in reader:
                        line = reader.line_num
                        if len(row) != width:
                            if not any(cell.strip() for cell in row):
                                continue  # blank line
                            errors.append(
                                self._error(
                                    entity,
                                    file=source.name,
                                    line=line,
                                    field="",
                                    reason=f"the row has {len(row)} fields; the header has {width}",
                                    raw={"_row": row[:50]},
                                )
                            )
                            continue
                        copy.write_row([line, *row])
                        count += 1
                except (csv.Error, UnicodeDecodeError) as exc:
                    raise ConnectorError(
                        f"{source.name} line {reader.line_num}: {exc}", kind="input"
                    ) from exc
        RecordError.objects.bulk_create(errors)
        return count

    # -- records from an API

    def _stage_records(self, read: EntityRead, raw: str, needed: set[str]):
        columns = sorted(needed)
        unknown: set[str] = set()
        count = 0

        def rows(records: Iterable[SourceRecord]) -> Iterator[list]:
            nonlocal count
            for position, record in enumerate(records, start=1):
                if len(unknown) < 50 and read.known_fields is not None:
                    unknown.update(k for k in record.fields if k not in read.known_fields)
                count += 1
                yield [
                    record.line if record.line is not None else position,
                    record.file,
                    record.source_id,
                    record.deleted,
                    *(_text(record.fields.get(c)) for c in columns),
                ]

        cols = ", ".join(f"{q(c)} text" for c in columns)
        with connection.cursor() as cur:
            cur.execute(
                f"CREATE UNLOGGED TABLE {raw} (_line bigint, _file text, _sid text, "
                f"_deleted boolean{', ' if cols else ''}{cols}) {STAGING_OPTIONS}"
            )
        names = ", ".join(["_line", "_file", "_sid", "_deleted", *(q(c) for c in columns)])
        statement = f"COPY {raw} ({names}) FROM STDIN"
        with transaction.atomic(), connection.cursor() as cur, cur.copy(statement) as copy:
            for row in rows(read.records or ()):
                copy.write_row(row)
                if count % 1000 == 0:
                    self.progress.update(phase=f"Reading {read.entity} ({count} records)")
        self._warn_unknown(read.entity, sorted(unknown), read)
        self.log(f"{read.entity}: staged {count} records")
        self._rows[raw] = count
        return set(columns) | {"_file", "_sid", "_deleted"}, "r._file", "r._sid", "r._deleted"

    # -- retries of records that failed in earlier runs

    def _inject_retries(self, entity: str, raw: str, columns: set[str], read: EntityRead) -> str:
        """Add back the records that failed in earlier runs of this definition; returns the
        staging table to read from (a CSV file's shared table is first copied to one of the
        entity's own: the others reading the file must not see this entity's retries).

        A record the source sent again in this run is not re-added: the newer data wins.
        Re-added rows get line numbers above 2,000,000,000 and a file name saying where they
        came from, so their errors cannot be confused with this run's rows. A row that could
        not be parsed has no source id and is not re-added (see errors_superseded).

        Not into a complete read (a bulk file, a full pull): it holds every record the source
        has, so a failed record is in it again or was removed in the source, and re-adding it
        would bring back what the source deleted.
        """
        if read.complete:
            return raw
        id_col = _retry_key(read)
        pending = RecordError.objects.filter(
            definition=self.definition,
            entity=entity,
            status=ErrorStatus.OPEN,
            raw__has_key=id_col,
        ).exclude(run=self.run)
        if not pending.exists():
            return raw
        staged = self._rows.get(raw)
        if read.csv is not None:
            own = self.table_name(entity, "_raw")
            with connection.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {own}")
                cur.execute(f"CREATE UNLOGGED TABLE {own} {STAGING_OPTIONS} AS SELECT * FROM {raw}")
            raw = own
        # The latest error of each record, with what was kept of it.
        errors = """
            SELECT DISTINCT ON (raw ->> %(id_col)s) id, run_id, file, line, raw,
                   raw ->> %(id_col)s AS record_id
            FROM integrations_recorderror
            WHERE definition_id = %(definition)s AND entity = %(entity)s
              AND status = 'open' AND run_id <> %(run)s AND raw ->> %(id_col)s IS NOT NULL
            ORDER BY raw ->> %(id_col)s, id DESC
        """
        params = {**self._params(entity), "id_col": id_col}
        cols = self._raw_columns(raw)
        with connection.cursor() as cur:
            has_file = read.csv is None
            if not has_file:
                cur.execute(f"ALTER TABLE {raw} ADD COLUMN IF NOT EXISTS _file text")
            names = ", ".join(["_line", "_file", *(q(c) for c in cols)])
            picks = ", ".join(f"(p).{q(c)}" for c in cols)
            cur.execute(
                f"""
                INSERT INTO {raw} ({names})
                SELECT 2000000000 + row_number() OVER (ORDER BY e.id),
                       'retry of ' || coalesce(nullif(e.file, ''), %(entity)s) || ' line '
                         || coalesce(e.line::text, '?') || ' (run #' || e.run_id || ')',
                       {picks}
                FROM (SELECT e.*, jsonb_populate_record(NULL::{raw}, e.raw) AS p
                      FROM ({errors}) e) e
                WHERE NOT EXISTS (SELECT 1 FROM {raw} x WHERE x.{q(id_col)} = e.record_id)
                """,
                params,
            )
            retried = cur.rowcount
        if staged is not None:
            self._rows[raw] = staged + retried
        if retried:
            self.log(f"{entity}: retrying {retried} record(s) that failed before")
            if read.csv is not None:
                self._retry_joined(entity, raw, errors, params)
        return raw

    def _retry_joined(self, entity: str, raw: str, errors: str, params: dict) -> None:
        """Give the retried records the joined rows kept with their errors (attach_raw), where
        this run's joined file has none for them: a delta's roles.csv leaves out users it does
        not change, and a student without its role would be filtered out unseen. This run's
        rows win when there are some (the newer data). The additions go into a copy of the
        joined file's table that is this entity's own."""
        for n, (table, provides, join) in enumerate(self._joins):
            key, left = q(join.key), q(join.from_field)
            adds = f"""
                SELECT e.id, e.run_id, a.n, jsonb_populate_record(NULL::{table}, a.j) AS p
                FROM ({errors}) e
                JOIN {raw} r ON r.{q(params["id_col"])} = e.record_id AND r._line >= 2000000000
                CROSS JOIN LATERAL jsonb_array_elements(
                    CASE jsonb_typeof(e.raw -> '_joined' -> %(joined)s)
                    WHEN 'array' THEN e.raw -> '_joined' -> %(joined)s END
                ) WITH ORDINALITY AS a(j, n)
                WHERE NOT EXISTS (SELECT 1 FROM {table} x WHERE x.{key} = r.{left})
            """
            p = {**params, "joined": join.csv.name}
            with connection.cursor() as cur:
                cur.execute(f"SELECT EXISTS ({adds})", p)
                if not cur.fetchone()[0]:
                    continue
                own = self.table_name(entity, f"_join{n}")
                cols = self._raw_columns(table)
                names = ", ".join(["_line", "_file", *(q(c) for c in cols)])
                picks = ", ".join(f"(p).{q(c)}" for c in cols)
                cur.execute(f"DROP TABLE IF EXISTS {own}")
                cur.execute(
                    f"CREATE UNLOGGED TABLE {own} {STAGING_OPTIONS} AS SELECT * FROM {table}"
                )
                cur.execute(
                    f"""
                    INSERT INTO {own} ({names})
                    SELECT 2000000000 + row_number() OVER (ORDER BY id, n),
                           'retry of ' || %(joined)s || ' (run #' || run_id || ')', {picks}
                    FROM ({adds}) adds
                    """,
                    p,
                )
                self.log(
                    f"{entity}: {cur.rowcount} row(s) of {join.csv.name} kept with the retried "
                    "records' errors"
                )
            self._joins[n] = (own, provides, join)

    # -- mapping and validation

    def _fall_back_to_current(self, spec: ent.EntitySpec, mapped: str, targets: list[str]) -> None:
        """In a delta or incremental read, a required field a record leaves empty takes the
        value of the row the hub already has for that record (same source id), set-wise.

        A delta carries what changed: OneRoster keeps a student's birth date in
        demographics.csv, so a student whose name changed arrives without one. A record the hub
        does not have yet gets nothing here and fails validation as it would in a bulk file;
        a value the transform refused (its own error) is not papered over.
        """
        fill = [
            t
            for t in (spec.target(name) for name in targets)
            if t.required and t.default_sql is None and t.kind != "ref"
        ]
        if not fill:
            return

        def current(target: ent.Target) -> str:
            value = f"t.{q(target.column)}"
            if target.kind == "date":
                return f"to_char({value}, 'YYYY-MM-DD')"
            if target.kind == "time":
                return f"to_char({value}, 'HH24:MI:SS')"
            return f"{value}::text"

        def empty(target: ent.Target) -> str:
            v, e = q("v_" + target.name), q("e_" + target.name)
            return f"(NULLIF(m.{v}, '') IS NULL AND m.{e} IS NULL)"

        sets = ", ".join(
            f"{q('v_' + t.name)} = CASE WHEN {empty(t)} THEN {current(t)} "
            f"ELSE m.{q('v_' + t.name)} END"
            for t in fill
        )
        # Effective-dated rows: the current period is the hub's value.
        period = " AND t.valid_to IS NULL" if spec.effective_dated else ""
        with connection.cursor() as cur:
            cur.execute(
                f"UPDATE {mapped} m SET {sets} FROM {q(spec.table)} t "
                f"WHERE t.district_id = %(district)s AND t.source_system = %(source)s "
                f"AND t.source_id = m._sid AND t.source_id <> '' AND NOT m._deleted{period} "
                f"AND ({' OR '.join(empty(t) for t in fill)})",
                {**self._params(spec.name), "source": self.integration.source_system},
            )
            if cur.rowcount:
                self.log(
                    f"{spec.name}: {cur.rowcount} record(s) without "
                    f"{', '.join(t.name for t in fill)} keep the hub's current value(s)"
                )

    def _map(
        self,
        spec,
        read,
        raw,
        mapped,
        columns,
        rules,
        crosswalks,
        file_sql,
        sid_sql,
        deleted_sql,
        *,
        parents: str | None = None,
        kept: tuple[str, ...] | None = None,
    ) -> list[str]:
        column = self._column_sql(read, columns)

        missing = sorted(
            f for f in transforms.source_fields(rules) if f != "_item" and column(f) == "NULL::text"
        )
        if missing and read.csv is not None:
            self.warnings.append(
                f"{read.entity}: the mapping uses field(s) the source does not have: "
                f"{', '.join(missing)} (left empty)"
            )
        compiled = transforms.compile_rules(rules, column=column, crosswalks=crosswalks)
        explode, item_sid = self._explode_sql(read, column, sid_sql)
        selects = [
            "r._line AS _line",
            f"{file_sql} AS _file",
            f"{item_sid} AS _sid",
            f"{deleted_sql} AS _deleted",
        ]
        targets = []
        for c in compiled:
            if c.target not in {t.name for t in spec.targets}:
                continue
            targets.append(c.target)
            selects.append(f"({c.value_sql})::text AS {q('v_' + c.target)}")
            selects.append(f"({c.error_sql or 'NULL'})::text AS {q('e_' + c.target)}")
        joined, filtered = self._joined_sql(read, column)
        parents_from = f"{raw} r{joined}{filtered}"
        if kept is not None:
            # Records the fingerprints showed unchanged are neither mapped nor merged; their
            # fingerprint is carried along so the merge can store it for the rest. A row (an
            # exploded item: its ctid and source id) is one record of the fingerprint table.
            selects.append("f._fp AS _fp")
            if read.explode:
                _, filtered = self._joined_sql(read, column, also=[f"f._sid = {item_sid}"])
            # The rows not kept, fetched by their ctid (a tid scan each): a join by line
            # read all the staged rows to find the 1% a re-run maps.
            source = (
                f"(SELECT _ctid, _sid, _fp FROM {kept[1]} WHERE NOT _kept) f "
                f"JOIN {raw} r ON r.ctid = f._ctid{joined}{explode}"
            )
        else:
            source = f"{raw} r{joined}{explode}"
        with connection.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {mapped}")
            cur.execute(
                f"CREATE UNLOGGED TABLE {mapped} {STAGING_OPTIONS} AS "
                f"SELECT {', '.join(selects)}, false AS _bad FROM {source}{filtered}"
            )
            if parents is not None:
                # Every parent row read, including those whose list is now empty (they explode
                # into no rows at all, yet say "none any more").
                cur.execute(f"DROP TABLE IF EXISTS {parents}")
                cur.execute(
                    f"CREATE UNLOGGED TABLE {parents} {STAGING_OPTIONS} AS "
                    f"SELECT DISTINCT ({sid_sql}) AS _parent FROM {parents_from}"
                )
        return targets

    def _column_sql(self, read: EntityRead, columns: set[str]):
        """A function from a source field's name to its SQL over the staged row ``r``, the
        joined rows ``j0``, ``j1``... and the exploded item ``x``."""
        joins = self._joins if read.csv is not None else []

        def column(name: str) -> str:
            if name == "_item":
                return "btrim(x._item)" if read.explode else "NULL::text"
            if name in read.derived:
                return f"NULLIF(({read.derived[name]}), '')"
            if name in columns:
                return f"NULLIF(r.{q(name)}, '')"
            for n, (_table, provides, _join) in enumerate(joins):
                if name in provides:
                    return f"NULLIF(j{n}.{q(name)}, '')"
            return "NULL::text"

        return column

    def _joined_sql(self, read: EntityRead, column, *, also: Sequence[str] = ()) -> tuple[str, str]:
        """The joins of the staged row to its joined files' rows (``j0``, ``j1``...: see
        _joined_table), and the read's ``where`` filter with the conditions ``also``."""
        joins = self._joins if read.csv is not None else []
        where = [
            f"{column(k)} IN ({', '.join(lit(v) for v in values)})"
            for k, values in read.where.items()
        ]
        where.extend(also)
        joined = ""
        for n, (table, _provides, join) in enumerate(joins):
            key, left = q(join.key), q(join.from_field)
            joined += f" LEFT JOIN {self._joined_table(table, join)} j{n} ON j{n}.{key} = r.{left}"
        filtered = f" WHERE {' AND '.join(where)}" if where else ""
        return joined, filtered

    def _joined_table(self, table: str, join) -> str:
        """The rows of the joined file ``table`` that a staged row meets, one per key: its
        aggregates (OneRoster's roles.csv: a user's primary role and orgs), or the key's first
        row. Each row also carries its text as ``_t`` (without line and file) for the
        fingerprints. Built once per run and file, and analyzed: roles.csv is joined to five
        entities, each by two statements (fingerprints and mapping), and grouping it again
        for each was about a second of a re-run (docs/benchmarks.md, B2 session 10)."""
        cache_key = (table, join.key, tuple(sorted(join.aggregates.items())))
        found = self._joined_tables.get(cache_key)
        if found is not None:
            return found
        key = q(join.key)
        if join.aggregates:
            aggs = ", ".join(f"{sql} AS {q(alias)}" for alias, sql in join.aggregates.items())
            text = "ROW(" + ", ".join(join.aggregates.values()) + ")::text"
            select = f"SELECT {key}, {aggs}, {text} AS _t FROM {table} x GROUP BY {key}"
        else:
            cols = ", ".join(f"x.{q(c)}" for c in self._raw_columns(table))
            select = (
                f"SELECT DISTINCT ON ({key}) *, ROW({cols})::text AS _t "
                f"FROM {table} x ORDER BY {key}, _line"
            )
        name = self.table_name(f"joined{len(self._joined_tables)}")
        with connection.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
            cur.execute(f"CREATE UNLOGGED TABLE {name} {STAGING_OPTIONS} AS {select}")
            # Statistics of the key alone: the joins are by it, and the others cost as much.
            cur.execute(f"ANALYZE {name} ({key})")
        self._joined_tables[cache_key] = name
        return name

    def _explode_sql(self, read: EntityRead, column, sid_sql: str) -> tuple[str, str]:
        """For a read that explodes a list: the join making one row per item (``x._item``),
        and the item's source id (``parent:item``); else nothing, and the row's own id."""
        if not read.explode:
            return "", sid_sql
        explode = (
            f" CROSS JOIN LATERAL unnest(string_to_array({column(read.explode)}, ',')) AS x(_item)"
        )
        return explode, f"{sid_sql} || ':' || btrim(x._item)"

    def _raw_columns(self, table: str) -> list[str]:
        """A staging table's columns other than its line and file, in order."""
        return [c for c in staging_columns(table) if c not in ("_line", "_file")]

    def _validate(
        self, spec: ent.EntitySpec, raw: str, mapped: str, targets: list[str], read
    ) -> int:
        checks: list[tuple[str, str]] = [
            (
                "",
                "CASE WHEN m._sid IS NULL OR m._sid = '' THEN "
                f"{lit('the record has no source id (' + read.id_field + ')')} END",
            ),
        ]
        for name in targets:
            target = spec.target(name)
            v = f"m.{q('v_' + name)}"
            # The transform's own error first; then (only without one) type and requiredness.
            checks.append(
                (name, f"coalesce(m.{q('e_' + name)}, {self._type_check(spec, target, v)})")
            )
        for target in spec.targets:
            if target.required and target.default_sql is None and target.name not in targets:
                raise ConnectorError(
                    f"the {spec.name} mapping does not fill the required field {target.name}",
                    kind="input",
                )
        values = ", ".join(f"({lit(f)}, {expr})" for f, expr in checks)
        with connection.cursor() as cur:
            cur.execute(
                f"""
                INSERT INTO integrations_recorderror
                    (run_id, definition_id, district_id, entity, file, line, field, reason,
                     source_id, status, created_at)
                SELECT %(run)s, %(definition)s, %(district)s, %(entity)s, m._file, m._line,
                       e.field, e.reason, coalesce(m._sid, ''), 'open', now()
                FROM {mapped} m CROSS JOIN LATERAL (VALUES {values}) AS e(field, reason)
                WHERE e.reason IS NOT NULL AND NOT (m._deleted AND e.field <> '')
                """,
                self._params(spec.name),
            )
            # The same source id twice: the later rows fail, naming the first line.
            cur.execute(
                f"""
                INSERT INTO integrations_recorderror
                    (run_id, definition_id, district_id, entity, file, line, field, reason,
                     source_id, status, created_at)
                SELECT %(run)s, %(definition)s, %(district)s, %(entity)s, d._file, d._line, '',
                       'source id ' || quote_literal(d._sid)
                         || ' appears more than once; first on line '
                       || d.first_line, d._sid, 'open', now()
                FROM (
                    SELECT _file, _line, _sid,
                           row_number() OVER w AS n, first_value(_line) OVER w AS first_line
                    FROM {mapped} WHERE _sid IS NOT NULL AND _sid <> ''
                    WINDOW w AS (PARTITION BY _sid ORDER BY _line)
                ) d WHERE d.n > 1
                """,
                self._params(spec.name),
            )
            cur.execute(
                f"""
                UPDATE {mapped} m SET _bad = true
                FROM (SELECT DISTINCT line FROM integrations_recorderror
                      WHERE run_id = %(run)s AND entity = %(entity)s AND line IS NOT NULL) e
                WHERE m._line = e.line
                """,
                self._params(spec.name),
            )
            attach_raw(cur, raw=raw, joins=self._join_refs(read), params=self._params(spec.name))
            cur.execute(f"SELECT count(*) FROM {mapped}")
            return cur.fetchone()[0]

    def _join_refs(self, read: EntityRead) -> list[tuple[str, str, str, str]]:
        """The read's joined files as (staging table, key, from_field, file name)."""
        joins = self._joins if read.csv is not None else []
        return [(table, join.key, join.from_field, join.csv.name) for table, _p, join in joins]

    def _type_check(self, spec: ent.EntitySpec, target: ent.Target, v: str) -> str:
        name = target.name
        shown = f"quote_literal({v})"
        checks = []
        if target.required and target.default_sql is None:
            checks.append(f"WHEN {v} IS NULL OR {v} = '' THEN {lit(name + ' is required')}")
        nonempty = f"{v} IS NOT NULL AND {v} <> ''"
        if target.kind == "date":
            checks.append(
                f"WHEN {nonempty} AND NOT pg_input_is_valid({v}, 'date') THEN "
                f"{shown} || {lit(' is not a date (YYYY-MM-DD)')}"
            )
        elif target.kind == "time":
            checks.append(
                f"WHEN {nonempty} AND NOT pg_input_is_valid({v}, 'time') THEN "
                f"{shown} || {lit(' is not a time of day (HH:MM)')}"
            )
        elif target.kind == "int":
            checks.append(
                f"WHEN {nonempty} AND NOT pg_input_is_valid({v}, 'integer') THEN "
                f"{shown} || {lit(' is not a whole number')}"
            )
        elif target.kind == "decimal":
            checks.append(
                f"WHEN {nonempty} AND NOT pg_input_is_valid({v}, 'numeric') THEN "
                f"{shown} || {lit(' is not a number')}"
            )
        elif target.kind == "bool":
            words = ", ".join(lit(w) for w in TRUE_WORDS + FALSE_WORDS)
            checks.append(
                f"WHEN {nonempty} AND lower({v}) NOT IN ({words}) THEN "
                f"{shown} || {lit(' is not true or false')}"
            )
        elif target.kind == "code":
            codes = ", ".join(lit(c) for c in target.codes)
            checks.append(
                f"WHEN {nonempty} AND {v} NOT IN ({codes}) THEN {shown} || "
                f"{lit(f' is not a valid {name}; expected one of: ' + ', '.join(target.codes))}"
            )
        if name == spec.effective_from:
            # A period cannot start in the future: the hub's current row is the one in
            # effect now. The record is retried each run until the day comes.
            checks.append(
                f"WHEN {nonempty} AND {v}::date > CURRENT_DATE THEN {shown} || "
                f"{lit(' is after today: a change is synced once it has taken effect')}"
            )
        max_length = spec.max_length(target)
        if max_length:
            checks.append(
                f"WHEN length({v}) > {max_length} THEN "
                f"{lit(name + ' is longer than ' + str(max_length) + ' characters')}"
            )
        if not checks:
            return "NULL"
        return "CASE " + " ".join(checks) + " END"

    def _params(self, entity: str) -> dict[str, Any]:
        return {
            "run": self.run.pk,
            "definition": self.definition.pk,
            "district": self.run.district_id,
            "entity": entity,
        }

    def _error(self, entity: str, **kwargs) -> RecordError:
        return RecordError(
            run=self.run,
            definition=self.definition,
            district_id=self.run.district_id,
            entity=entity,
            **kwargs,
        )


def _error_fields(error: RecordError) -> dict[str, Any]:
    """A file's row error, to record again for another entity reading the same file."""
    return {
        "file": error.file,
        "line": error.line,
        "field": error.field,
        "reason": error.reason,
        "raw": error.raw,
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --- merging -------------------------------------------------------------------------------------


@dataclass
class EntityResult:
    entity: str
    read: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    skipped: int = 0
    existing: int = 0
    #: of ``unchanged``, the records skipped at staging (fingerprint and hub row unchanged)
    kept: int = 0
    samples: dict[str, list] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("read", "created", "updated", "unchanged", "deleted", "failed", "skipped")
        } | {"existing": self.existing, "kept": self.kept, "samples": self.samples}


class Merger:
    """Merges one run's staged entities into the hub, inside the caller's transaction."""

    def __init__(self, run: SyncRun, *, actor, progress: Progress, log, approved: bool) -> None:
        self.run = run
        self.definition = run.definition
        self.integration = self.definition.integration
        self.source = self.integration.source_system
        self.actor = actor
        self.progress = progress
        self.log = log
        self.approved = approved
        self.results: dict[str, EntityResult] = {}
        self.hold_reasons: list[str] = []

    def params(self, entity: str) -> dict[str, Any]:
        return {
            "run": self.run.pk,
            "definition": self.definition.pk,
            "district": self.run.district_id,
            "entity": entity,
            "source": self.source,
        }

    def merge(self, staged: list[Staged]) -> dict[str, EntityResult]:
        for item in sorted(staged, key=lambda s: ent.ORDER[s.entity]):
            self.progress.update(phase=f"Merging {item.entity}", force=True)
            self.results[item.entity] = self._merge_entity(item)
            self.progress.update(processed=self.run.processed + item.rows)
        if self.hold_reasons and not self.approved:
            raise Held(self.hold_reasons)
        return self.results

    # -- one entity

    def _merge_entity(self, st: Staged) -> EntityResult:
        spec = ent.spec(st.entity)
        result = EntityResult(st.entity)
        p = self.params(st.entity)
        table = q(spec.table)
        res = q(f"res_{st.entity}")
        with connection.cursor() as cur:
            self._apply_key_changes(cur, spec, st, result)
            cur.execute(
                "SELECT count(*) FILTER (WHERE NOT _bad), count(*) FILTER (WHERE _bad) "
                f"FROM {st.table}"
            )
            good, bad = cur.fetchone()
            result.read = good + bad
            result.failed = bad
            result.read += st.kept_rows
            self._build_resolved(cur, spec, st, res, p)
            result.failed += self._unresolved_refs(cur, spec, st, res, p)
            if spec.natural_key:
                self._adopt_natural(cur, spec, res, p)
            if spec.person:
                result.skipped += self._match_people(cur, spec, st, res, p)
            if spec.effective_dated:
                self._match_current(cur, spec, res, p)
            self._classify(cur, spec, res, p, rows=good)
            active = " AND is_active" if spec.removal == "deactivate" else ""
            cur.execute(
                f"SELECT count(*) FROM {table} WHERE district_id = %(district)s "
                f"AND source_system = %(source)s AND source_id <> ''{active}",
                p,
            )
            result.existing = cur.fetchone()[0]
            removal_ids = self._removals(
                cur, spec, st, res, p, existing=result.existing, resolved=good
            )
            cur.execute(f"SELECT _op, count(*) FROM {res} GROUP BY _op")
            ops = dict(cur.fetchall())
            result.unchanged += ops.get("unchanged", 0)
            self._check_thresholds(spec, result, ops.get("update", 0), len(removal_ids))
            result.samples = self._samples(cur, spec, res, removal_ids)
            if self.hold_reasons and not self.approved:
                # Keep computing the other entities' previews; nothing is applied: the caller
                # rolls the transaction back.
                result.kept = self._recheck_kept(cur, spec, st, p)
                result.unchanged += result.kept
                result.created = ops.get("insert", 0)
                result.updated = ops.get("update", 0)
                result.deleted = len(removal_ids) + ops.get("delete", 0)
                return result
            self._before_images(cur, spec, res, removal_ids)
            result.updated, failed_u = self._apply_updates(cur, spec, res, p)
            result.created, failed_i = self._apply_inserts(cur, spec, res, p)
            self._link_self_references(cur, spec, res, p)
            result.deleted, failed_d = self._apply_removals(cur, spec, res, removal_ids, p)
            result.failed += failed_u + failed_i + failed_d
            mark = None
            if st.fingerprints and st.complete:
                # Taken after this merge's writes and before the kept records' check and the
                # fingerprints: every change at or below it is this transaction's or committed,
                # so both statements below see it (the mark, see _advance_mark). Not remembered
                # as the horizon: that row would stay locked until this merge commits.
                mark = safe_change_version(wait_seconds=1.0, remember=False)
            result.kept = self._recheck_kept(cur, spec, st, p, removal_ids=removal_ids)
            result.unchanged += result.kept
            if st.fingerprints:
                # Rows this transaction inserted are in no statistics yet: the planner would
                # take the district for empty and walk it once per record, so hash always.
                stored = (
                    None
                    if result.created >= ANALYZE_MIN_ROWS
                    else sum(ops.get(op, 0) for op in ("insert", "update", "unchanged"))
                )
                self._store_fingerprints(cur, spec, res, removal_ids, p, rows=stored)
                if mark is not None:
                    self._advance_mark(cur, spec, p, mark)
            attach_raw(cur, raw=st.raw, joins=st.joins, params=p)
            self._audit(spec, result)
            self._emit(cur, spec, res, result)
            cur.execute(f"DROP TABLE IF EXISTS {res}")
        if st.fingerprints:
            self.log(
                f"{st.entity}: {result.kept} record(s) skipped as unchanged since the last run"
            )
        self.log(
            f"{st.entity}: read {result.read}, created {result.created}, updated "
            f"{result.updated}, unchanged {result.unchanged}, removed {result.deleted}, failed "
            f"{result.failed}, skipped {result.skipped}"
        )
        return result

    def _apply_key_changes(self, cur, spec, st: Staged, result: EntityResult) -> None:
        if not st.key_changes:
            return
        table = q(spec.table)
        for old, new in st.key_changes:
            cur.execute(
                f"INSERT INTO integrations_runchange (run_id, table_name, object_id, op, before) "
                f"SELECT %s, %s, t.id, 'update', to_jsonb(t) FROM {table} t "
                f"WHERE t.district_id = %s AND t.source_system = %s AND t.source_id = %s",
                [self.run.pk, spec.table, self.run.district_id, self.source, old],
            )
            cur.execute(
                f"UPDATE {table} SET source_id = %s, last_run_id = %s, updated_at = now() "
                f"WHERE district_id = %s AND source_system = %s AND source_id = %s",
                [new, self.run.pk, self.run.district_id, self.source, old],
            )
        self.log(f"{st.entity}: applied {len(st.key_changes)} key change(s)")

    def _cast(self, target: ent.Target, v: str) -> str:
        value = f"NULLIF({v}, '')"
        if target.default_sql:
            value = f"coalesce({value}, ({target.default_sql})::text)"
        kind = target.kind
        if kind == "date":
            return f"({value})::date"
        if kind == "time":
            return f"({value})::time"
        if kind == "int":
            return f"({value})::integer"
        if kind == "decimal":
            return f"({value})::numeric"
        if kind == "bool":
            trues = ", ".join(lit(w) for w in TRUE_WORDS)
            return f"(lower({value}) IN ({trues}))"
        if kind == "ref":
            return value
        return f"coalesce({value}, '')"

    def _build_resolved(self, cur, spec: ent.EntitySpec, st: Staged, res: str, p) -> None:
        selects = ["m._line", "m._file", "m._sid", "m._deleted"]
        if st.fingerprints:
            selects.append("m._fp")
        joins = []
        for i, target in enumerate(spec.targets):
            v = f"m.{q('v_' + target.name)}" if target.name in st.targets else "NULL::text"
            if target.kind == "ref":
                ref_spec = ent.spec(target.ref)
                alias = f"ref{i}"
                raw_ref = f"NULLIF({v}, '')"
                selects.append(f"{raw_ref} AS {q('ref_' + target.name)}")
                if target.default_sql and target.name not in st.targets:
                    selects.append(f"({target.default_sql}) AS {q(target.column)}")
                    continue
                default = f", ({target.default_sql})" if target.default_sql else ""
                selects.append(f"coalesce({alias}.id{default}) AS {q(target.column)}")
                joins.append(
                    f"LEFT JOIN {q(ref_spec.table)} {alias} ON {alias}.district_id = %(district)s "
                    f"AND {alias}.source_system = %(source)s AND {alias}.source_id = {raw_ref} "
                    f"AND {alias}.source_id <> ''"
                )
            else:
                selects.append(f"{self._cast(target, v)} AS {q(target.column)}")
        cur.execute(f"DROP TABLE IF EXISTS {res}")
        # "source_id <> ''" (true of every good record) lets the planner use the lineage
        # index, which is partial: with records kept at staging, few are left to resolve, and
        # a nested loop over the district index instead read the whole district per record.
        cur.execute(
            f"CREATE TEMP TABLE {res} ON COMMIT DROP AS SELECT {', '.join(selects)}, "
            f"t.id AS _hub_id, false AS _adopt, NULL::text AS _op, "
            f"row_number() OVER () AS _rid "
            f"FROM {st.table} m {' '.join(joins)} "
            f"LEFT JOIN {q(spec.table)} t ON t.district_id = %(district)s "
            f"AND t.source_system = %(source)s AND t.source_id = m._sid "
            f"AND t.source_id <> '' AND %(effective)s = false "
            f"WHERE NOT m._bad",
            {**p, "effective": spec.effective_dated},
        )
        cur.execute(f"CREATE INDEX ON {res} (_rid)")
        cur.execute(f"ANALYZE {res}")

    def _unresolved_refs(self, cur, spec, st, res, p) -> int:
        failed = 0
        for target in spec.targets:
            if target.kind != "ref":
                continue
            ref_col = q("ref_" + target.name)
            col = q(target.column)
            if target.default_sql and target.name not in st.targets:
                reason = lit(
                    f"{target.name}: no default found (the district has no current school year)"
                )
                condition = f"{col} IS NULL AND NOT _deleted"
            else:
                reason = (
                    f"{lit(target.name + ' ')} || quote_literal({ref_col}) || "
                    f"{lit(' is not known from this source (not synced, or it failed)')}"
                )
                condition = f"{ref_col} IS NOT NULL AND {col} IS NULL AND NOT _deleted"
                if target.ref == spec.name:
                    # A parent created by this same run is linked after the insert.
                    condition += (
                        f" AND {ref_col} NOT IN (SELECT _sid FROM {res} WHERE NOT _deleted)"
                    )
            failed += self._fail_rows(cur, spec.name, res, condition, target.name, reason, p)
        return failed

    def _fail_rows(self, cur, entity, res, condition, field_name, reason_sql, p) -> int:
        cur.execute(
            f"""
            WITH gone AS (DELETE FROM {res} WHERE {condition} RETURNING _file, _line, _sid,
                          {reason_sql} AS reason)
            INSERT INTO integrations_recorderror
                (run_id, definition_id, district_id, entity, file, line, field, reason,
                 source_id, status, created_at)
            SELECT %(run)s, %(definition)s, %(district)s, %(entity)s, _file, _line,
                   {lit(field_name)}, reason, _sid, 'open', now()
            FROM gone
            """,
            p,
        )
        return cur.rowcount

    def _adopt_natural(self, cur, spec, res, p) -> None:
        """A row the district made by hand (no source yet) with the same natural key is the
        same thing: link it instead of failing on the unique constraint."""
        cols = [q(spec.target(k).column) for k in spec.natural_key]
        same = " AND ".join(f"t.{c} = r.{c}" for c in cols)
        cur.execute(
            f"UPDATE {res} r SET _hub_id = t.id, _adopt = true FROM {q(spec.table)} t "
            f"WHERE r._hub_id IS NULL AND NOT r._deleted AND t.district_id = %(district)s "
            f"AND {same} AND (t.source_system <> %(source)s OR t.source_id = '')",
            p,
        )
        if cur.rowcount:
            self.log(
                f"{spec.name}: linked {cur.rowcount} existing row(s) by "
                f"{', '.join(spec.natural_key)}"
            )

    def _match_people(self, cur, spec, st, res, p) -> int:
        """Identity matching for people not yet linked to this source: adopt a sure match,
        queue an ambiguous one for review, and leave the rest to be inserted."""
        table = q(spec.table)
        unbound = "(t.source_system <> %(source)s OR t.source_id = '')"
        number = "student_number" if spec.name == "student" else "staff_number"
        if spec.name == "student":
            cur.execute(
                f"UPDATE {res} r SET _hub_id = t.id, _adopt = true FROM {table} t "
                f"WHERE r._hub_id IS NULL AND NOT r._deleted AND r.state_id <> '' "
                f"AND t.district_id = %(district)s AND t.state_id = r.state_id AND {unbound}",
                p,
            )
        same_person = (
            "lower(t.first_name) = lower(r.first_name) AND lower(t.last_name) = lower(r.last_name)"
        )
        if spec.name == "student":
            same_person += " AND t.birth_date = r.birth_date"
        cur.execute(
            f"UPDATE {res} r SET _hub_id = t.id, _adopt = true FROM {table} t "
            f"WHERE r._hub_id IS NULL AND NOT r._deleted AND t.district_id = %(district)s "
            f"AND t.{number} = r.{number} AND {same_person} AND {unbound}",
            p,
        )
        if spec.name != "student":
            return 0
        # Same name and birth date, different identifiers: a person decides. A source record an
        # admin already judged distinct is inserted.
        cur.execute(
            f"""
            WITH candidates AS (
                SELECT DISTINCT ON (r._rid) r._rid, r._sid, t.id AS candidate,
                       jsonb_build_object('student_number', r.student_number, 'state_id',
                         r.state_id, 'first_name', r.first_name, 'last_name', r.last_name,
                         'birth_date', r.birth_date, 'grade_level', r.grade_level) AS incoming,
                       'same name and birth date as student #' || t.id || ' (number '
                         || t.student_number || '), different identifiers' AS reason
                FROM {res} r JOIN {table} t ON t.district_id = %(district)s AND {same_person}
                WHERE r._hub_id IS NULL AND NOT r._deleted
                  AND NOT EXISTS (
                    SELECT 1 FROM integrations_identityreview d
                    WHERE d.integration_id = %(integration)s AND d.entity = 'student'
                      AND d.source_id = r._sid AND d.status = 'distinct')
                ORDER BY r._rid, t.id
            ), queued AS (
                INSERT INTO integrations_identityreview
                    (district_id, integration_id, run_id, entity, source_id, incoming,
                     candidate_id, reason, status, created_at)
                SELECT %(district)s, %(integration)s, %(run)s, 'student', _sid, incoming,
                       candidate, reason, 'open', now()
                FROM candidates
                ON CONFLICT (integration_id, entity, source_id) WHERE status = 'open'
                DO NOTHING
            )
            DELETE FROM {res} r USING candidates c WHERE r._rid = c._rid
            """,
            {**p, "integration": self.integration.pk},
        )
        skipped = cur.rowcount
        if skipped:
            self.log(f"student: {skipped} possible duplicate(s) sent to identity review")
        return skipped

    def _match_current(self, cur, spec, res, p) -> None:
        key = q(spec.target(spec.current_key).column)
        cur.execute(
            f"UPDATE {res} r SET _hub_id = t.id FROM {q(spec.table)} t "
            f"WHERE t.{key} = r.{key} AND t.valid_to IS NULL AND t.district_id = %(district)s",
            p,
        )

    def _compared_columns(self, spec) -> list[str]:
        return [t.column for t in spec.targets if t.name != spec.effective_from]

    def _effective_sql(self, spec) -> str:
        """The day a changed effective-dated row's new period starts: the source's effective
        date when it sent one, else the run date (PostgreSQL's CURRENT_DATE)."""
        if spec.effective_from:
            return f"coalesce(r.{q(spec.target(spec.effective_from).column)}, CURRENT_DATE)"
        return "CURRENT_DATE"

    def _classify(self, cur, spec, res, p, *, rows: int) -> None:
        """Each resolved record's operation. ``rows``: how many there are; when few, their
        hub rows are read by primary key (the table of records has an index on ``_rid``)."""
        cols = self._compared_columns(spec)
        hub = ", ".join(f"t.{q(c)}" for c in cols)
        new = ", ".join(f"r.{q(c)}" for c in cols)
        with index_probes(cur, rows=rows):
            cur.execute(
                f"""
                UPDATE {res} r SET _op = CASE
                    WHEN r._deleted AND r._hub_id IS NULL THEN 'gone'
                    WHEN r._deleted THEN 'delete'
                    WHEN r._hub_id IS NULL THEN 'insert'
                    WHEN r._adopt OR ({hub}) IS DISTINCT FROM ({new}) THEN 'update'
                    ELSE 'unchanged' END
                FROM (SELECT r2._rid, t.* FROM {res} r2
                      LEFT JOIN {q(spec.table)} t ON t.id = r2._hub_id) t
                WHERE t._rid = r._rid
                """,
                p,
            )

    def _removals(
        self, cur, spec, st: Staged, res, p, *, existing: int, resolved: int
    ) -> list[int]:
        """Rows of this source that a complete read no longer has (plus explicit deletes).
        ``existing``: how many rows of this source the hub has (in use, for an entity whose
        removal deactivates); ``resolved``: how many records the merge resolved."""
        active = " AND t.is_active" if spec.removal == "deactivate" else ""
        if not st.complete or spec.effective_dated:
            cur.execute(f"SELECT _hub_id FROM {res} WHERE _op = 'delete'")
            ids = {r[0] for r in cur.fetchall()}
            if st.parents and not spec.effective_dated:
                ids |= self._dropped_items(cur, spec, st, active, p)
            return sorted(ids)
        # With fingerprints, the table of every staged row (mapped or kept at staging as
        # unchanged: both are in the source) says the same as the mapped table says alone.
        present = st.fingerprints or st.table
        if st.fingerprints and "_kept" in staging_columns(st.fingerprints):
            if not active and self._every_row_seen(
                cur, spec, st, res, p, existing=existing, resolved=resolved
            ):
                return []
            # A kept record's hub row is the one its fingerprint names (stored by source id,
            # and unchanged since): the 99% are matched by that id, a hash of integers, and
            # only the rest by source id, a hash of text.
            seen = (
                f"NOT EXISTS (SELECT 1 FROM {present} k WHERE k._kept AND k._hub_id = t.id) "
                f"AND NOT EXISTS (SELECT 1 FROM {present} m "
                "WHERE NOT m._kept AND m._sid = t.source_id AND NOT m._deleted)"
            )
        else:
            seen = (
                f"NOT EXISTS (SELECT 1 FROM {present} m "
                "WHERE m._sid = t.source_id AND NOT m._deleted)"
            )
        # With the default work_mem the million hub rows are hashed in batches (16): faster
        # than one 57 MB hash with the fingerprint statements' work_mem, whose probes miss
        # the CPU's caches (0.74 s against 0.87 s alone; docs/benchmarks.md, B2 session 11).
        cur.execute(
            f"""
            SELECT t.id FROM {q(spec.table)} t
            WHERE t.district_id = %(district)s AND t.source_system = %(source)s
              AND t.source_id <> ''{active} AND {seen}
            """,
            p,
        )
        return [r[0] for r in cur.fetchall()]

    def _every_row_seen(
        self, cur, spec, st: Staged, res, p, *, existing: int, resolved: int
    ) -> bool:
        """Whether the source still has every one of the hub's ``existing`` rows, counted
        instead of matched one by one (a re-run's removals check read a million hub rows
        against the staged ones: 0.6 to 1.6 s, docs/benchmarks.md, B2 session 12).

        The hub's rows the records cover are counted in two parts that cannot overlap:
        - the kept records: each names the hub row the last merge left for its source id.
          When nothing of the table in the district was written or deleted since staging,
          that row is still there, of this source and under that id, so it is one of the
          existing rows; two kept records never share one (a source id staged twice is
          never kept, and the rows have different source ids);
        - the rows whose source id a mapped, not deleted record carries, by primary key
          from the records the merge resolved (no kept record has such an id: it would
          have been staged twice).
        If the two add up to ``existing``, no row is left over to remove. Otherwise (or if
        the hub changed since staging, or a record failed and is not among the resolved
        ones) the caller matches the rows one by one, as without fingerprints. Not for an
        entity whose removal deactivates: a kept record's row may be inactive, outside
        the count; nor when this run changed keys in the table first."""
        if not st.kept_rows or st.kept_seen is None or st.key_changes:
            return False
        if self._hub_changed_since(cur, spec, p, seen=st.kept_seen, mine_too=True):
            return False
        with index_probes(cur, rows=resolved):
            cur.execute(
                f"""
                SELECT count(DISTINCT t.id) FROM {res} r JOIN {q(spec.table)} t
                  ON t.id = r._hub_id AND t.source_id = r._sid
                WHERE NOT r._deleted AND t.district_id = %(district)s
                  AND t.source_system = %(source)s AND t.source_id <> ''
                """,
                p,
            )
            mapped = cur.fetchone()[0]
        return existing == st.kept_rows + mapped

    def _hub_changed_since(
        self, cur, spec, p, *, seen: int, removed: Sequence[int] = (), mine_too: bool = False
    ) -> bool:
        """Whether anything of ``spec``'s table in this district was written (by another
        run, or by hand; ``mine_too``: by this run as well) or deleted (but ``removed``)
        after change version ``seen``, by the change-version indexes."""
        others = "" if mine_too else " AND last_run_id IS DISTINCT FROM %(run)s"
        cur.execute(
            f"SELECT EXISTS (SELECT 1 FROM {q(spec.table)} WHERE change_version > %(seen)s "
            f"AND district_id = %(district)s{others}) "
            "OR EXISTS (SELECT 1 FROM common_tombstone "
            "WHERE table_name = %(table)s AND change_version > %(seen)s "
            "AND district_id = %(district)s AND object_id <> ALL(%(removed)s))",
            {**p, "seen": seen, "table": spec.table, "removed": list(removed)},
        )
        return cur.fetchone()[0]

    def _dropped_items(self, cur, spec, st: Staged, active: str, p) -> set[int]:
        """Rows exploded from a parent this incomplete read carried (its list is complete) that
        the list no longer has: a guardian's agentSourcedIds without a student it had. Their
        source ids are ``parent:item``; parents without a colon (OneRoster's GUIDs) are matched
        by a hash join on the part before the first colon, the others by prefix."""
        found: set[int] = set()
        # Items kept at staging as unchanged are in the list too (see _removals).
        present = st.fingerprints or st.table
        for match, which in (
            ("split_part(t.source_id, ':', 1) = pa._parent", "strpos(pa._parent, ':') = 0"),
            (
                "left(t.source_id, length(pa._parent) + 1) = pa._parent || ':'",
                "strpos(pa._parent, ':') > 0",
            ),
        ):
            cur.execute(
                f"""
                SELECT t.id FROM {q(spec.table)} t JOIN {st.parents} pa ON {match}
                WHERE {which} AND t.district_id = %(district)s
                  AND t.source_system = %(source)s{active}
                  AND NOT EXISTS (SELECT 1 FROM {present} m
                                  WHERE m._sid = t.source_id AND NOT m._deleted)
                """,
                p,
            )
            found |= {r[0] for r in cur.fetchall()}
        return found

    def _recheck_kept(self, cur, spec, st: Staged, p, *, removal_ids: Sequence[int] = ()) -> int:
        """Of the records staging kept as unchanged, those whose hub row is still as the last
        merge left it (same change version). A hub row edited or removed since staging (while
        the run was held, or by a run in between) is not trusted: its fingerprint is dropped
        so the next run maps the record; this run leaves the row alone (and does not remove
        it: the source still has the record). Returns the rows still unchanged.

        Called after this merge's own writes (``removal_ids``: its removals), which touch no
        kept record and are left out of the "did anything change" check."""
        if not st.kept or not st.kept_rows:
            return 0
        table = q(spec.table)
        # The hub's defaults changed since staging (this run merged a new school year): any
        # kept record may map differently now.
        moved = hub_defaults(spec, self.run.district_id) != st.defaults
        # Nothing of this table in this district written or deleted since staging looked: no
        # kept record's hub row can have changed.
        if (
            not moved
            and st.kept_seen is not None
            and not self._hub_changed_since(cur, spec, p, seen=st.kept_seen, removed=removal_ids)
        ):
            return st.kept_rows
        # By hash over the district's rows: a million probes of the hub's indexes, one per
        # kept record, took longer than reading the district's rows once.
        with hash_joins(cur, rows=st.kept_rows):
            cur.execute(
                f"""
                WITH stale AS MATERIALIZED (
                    SELECT k._sid FROM {st.kept} k
                    LEFT JOIN {table} t ON t.id = k._hub_id AND t.change_version = k._cv
                      AND t.district_id = %(district)s
                    WHERE %(moved)s OR t.id IS NULL
                ), dropped AS (
                    DELETE FROM integrations_recordfingerprint f USING stale s
                    WHERE f.definition_id = %(definition)s AND f.entity = %(entity)s
                      AND f.source_id = s._sid
                )
                SELECT count(*) FROM stale
                """,
                {**p, "moved": moved},
            )
            stale = cur.fetchone()[0]
        if stale:
            self.log(
                f"{spec.name}: {stale} record(s) skipped as unchanged at staging were changed "
                "in the hub before the merge"
                + (" (the hub's defaults for empty fields changed)" if moved else "")
                + "; left as they are by this run, and mapped again by the next"
            )
        return st.kept_rows - stale

    def _store_fingerprints(
        self, cur, spec, res, removal_ids: list[int], p, *, rows: int | None
    ) -> None:
        """Remember what this merge left for each record it inserted, updated or found
        unchanged (its fingerprint, hub row and that row's change version now), in one
        statement from the resolved table; forget the records it removed or that failed.
        Inside the merge's transaction: a held or failed run stores nothing.

        An effective-dated record's hub row is its current period (its earlier ones share
        its source id).

        The fingerprint stored is the record's combined with the hub's defaults as this
        merge sees them (it may have merged a new school year: the next run compares against
        those)."""
        current = " AND t.valid_to IS NULL" if spec.effective_dated else ""
        with hash_joins(cur, rows=rows):
            cur.execute(
                f"""
                INSERT INTO integrations_recordfingerprint
                    (definition_id, entity, source_id, fingerprint, hub_id, hub_change_version)
                SELECT %(definition)s, %(entity)s, r._sid, r._fp # %(defaults)s::bigint,
                       t.id, t.change_version
                FROM {res} r JOIN {q(spec.table)} t ON t.district_id = %(district)s
                  AND t.source_system = %(source)s AND t.source_id = r._sid
                  AND t.source_id <> ''{current}
                WHERE r._op IN ('insert', 'update', 'unchanged') AND r._fp IS NOT NULL
                ON CONFLICT (definition_id, entity, source_id) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, hub_id = EXCLUDED.hub_id,
                    hub_change_version = EXCLUDED.hub_change_version
                WHERE (integrations_recordfingerprint.fingerprint,
                       integrations_recordfingerprint.hub_id,
                       integrations_recordfingerprint.hub_change_version)
                      IS DISTINCT FROM
                      (EXCLUDED.fingerprint, EXCLUDED.hub_id, EXCLUDED.hub_change_version)
                """,
                {**p, "defaults": defaults_key(hub_defaults(spec, self.run.district_id))},
            )
        # By source id, through the primary key: one "OR" over all three made PostgreSQL read
        # every fingerprint of the entity (a million) to forget a few.
        cur.execute(
            f"""
            DELETE FROM integrations_recordfingerprint f
            USING (SELECT _sid FROM {res} WHERE _op IN ('failed', 'delete', 'gone')
                   UNION SELECT source_id FROM integrations_recorderror
                         WHERE run_id = %(run)s AND entity = %(entity)s) gone
            WHERE f.definition_id = %(definition)s AND f.entity = %(entity)s
              AND f.source_id = gone._sid
            """,
            p,
        )
        if removal_ids:
            cur.execute(
                "DELETE FROM integrations_recordfingerprint f "
                "WHERE f.definition_id = %(definition)s AND f.entity = %(entity)s "
                "AND f.hub_id = ANY(%(removed)s)",
                {**p, "removed": removal_ids},
            )

    def _advance_mark(self, cur, spec, p, mark: int) -> None:
        """After a complete read's merge, every fingerprint of the entity was kept (and
        checked), stored again or forgotten against the hub as of ``mark``: the next run
        needs to check only the hub rows written above it (FingerprintMark).

        Except fingerprints of hub rows deleted since the old mark whose record was not in
        the file either (the district deleted the row by hand; nothing of this run touched
        its fingerprint): once the mark passes their tombstones, nothing would show them
        gone, so they are forgotten now, by the tombstones' lineage."""
        old = fingerprint_mark(self.definition, spec.name)
        cur.execute(
            """
            DELETE FROM integrations_recordfingerprint f USING common_tombstone b
            WHERE b.table_name = %(table)s AND b.change_version > %(old)s
              AND b.district_id = %(district)s AND b.source_id <> ''
              AND f.definition_id = %(definition)s AND f.entity = %(entity)s
              AND f.source_id = b.source_id AND f.hub_id = b.object_id
            """,
            {**p, "table": spec.table, "old": old if old is not None else -1},
        )
        FingerprintMark.objects.update_or_create(
            definition=self.definition, entity=spec.name, defaults={"change_version": mark}
        )

    def _check_thresholds(self, spec, result: EntityResult, updates: int, removals: int) -> None:
        d = self.definition
        existing = result.existing
        if existing < max(d.hold_min_rows, 1):
            return
        removal_pct = removals * 100 / existing
        if removal_pct > d.hold_removal_pct:
            self.hold_reasons.append(
                f"{spec.label}: would remove {removals} of {existing} rows "
                f"({removal_pct:.0f}%, threshold {d.hold_removal_pct}%)"
            )
        change_pct = (updates + removals) * 100 / existing
        if d.hold_change_pct < 100 and change_pct > d.hold_change_pct:
            self.hold_reasons.append(
                f"{spec.label}: would change {updates + removals} of {existing} rows "
                f"({change_pct:.0f}%, threshold {d.hold_change_pct}%)"
            )

    def _samples(self, cur, spec, res, removal_ids: list[int], limit: int = 25) -> dict:
        """A few rows per kind of change, for the run's diff and a held run's preview."""
        cols = self._compared_columns(spec)
        out: dict[str, list] = {}
        staged = ", ".join(f"r.{q(c)}" for c in cols)
        current = ", ".join(f"t.{q(c)}" for c in cols)
        for op in ("insert", "update"):
            # The current row comes along in the same query (NULLs for inserts).
            cur.execute(
                f"SELECT r._sid, r._hub_id, {staged}, {current} FROM {res} r "
                f"LEFT JOIN {q(spec.table)} t ON t.id = r._hub_id AND r._op = 'update' "
                f"WHERE r._op = %s ORDER BY r._rid LIMIT {limit}",
                [op],
            )
            samples = []
            for row in cur.fetchall():
                values = [_jsonable(v) for v in row[2:]]
                after = dict(zip(cols, values[: len(cols)], strict=True))
                if op == "update" and row[1]:
                    before = dict(zip(cols, values[len(cols) :], strict=True))
                    changes = {c: [before[c], after[c]] for c in cols if before[c] != after[c]}
                    samples.append({"source_id": row[0], "id": row[1], "changes": changes})
                else:
                    samples.append({"source_id": row[0], "after": after})
            if samples:
                out[op] = samples
        if removal_ids:
            cur.execute(
                f"SELECT id, source_id FROM {q(spec.table)} WHERE id = ANY(%s) "
                f"ORDER BY id LIMIT {limit}",
                [removal_ids],
            )
            out["remove"] = [{"id": i, "source_id": s} for i, s in cur.fetchall()]
        return out

    # -- applying

    def _before_images(self, cur, spec, res, removal_ids: list[int]) -> None:
        cur.execute(
            f"""
            INSERT INTO integrations_runchange (run_id, table_name, object_id, op, before)
            SELECT %s, %s, t.id, 'update', to_jsonb(t)
            FROM {q(spec.table)} t JOIN {res} r ON r._hub_id = t.id AND r._op = 'update'
            """,
            [self.run.pk, spec.table],
        )
        if removal_ids:
            op = "update" if spec.removal == "deactivate" else "delete"
            cur.execute(
                f"INSERT INTO integrations_runchange (run_id, table_name, object_id, op, before) "
                f"SELECT %s, %s, t.id, %s, to_jsonb(t) FROM {q(spec.table)} t WHERE t.id = ANY(%s)",
                [self.run.pk, spec.table, op, removal_ids],
            )

    def _apply_updates(self, cur, spec, res, p) -> tuple[int, int]:
        table = q(spec.table)
        cols = self._compared_columns(spec)
        if spec.effective_dated:
            # Close the current row and open a new one from the day the change took effect
            # (the source's effective date, else today). A current row that began on or
            # after that day is corrected in place: periods are never rewritten backwards
            # (an earlier, closed period keeps what the hub recorded for it).
            effective = self._effective_sql(spec)
            cur.execute(
                f"UPDATE {table} t SET valid_to = {effective}, updated_at = now(), "
                f"last_run_id = %(run)s FROM {res} r "
                f"WHERE r._op = 'update' AND t.id = r._hub_id AND t.valid_from < {effective}",
                p,
            )
            closed = cur.rowcount
            cur.execute(
                f"UPDATE {res} r SET _op = 'insert', _hub_id = NULL FROM {table} t "
                f"WHERE r._op = 'update' AND t.id = r._hub_id AND t.valid_to IS NOT NULL"
            )
            if closed:
                self.log(
                    f"{spec.name}: closed {closed} row(s) as of the day the change took effect "
                    "(the source's effective date, else today); new rows follow"
                )
        assignments = ", ".join(f"{q(c)} = r.{q(c)}" for c in cols)
        statement = (
            f"UPDATE {table} t SET {assignments}, source_system = %(source)s, "
            f"source_id = r._sid, last_run_id = %(run)s, updated_at = now() "
            f"FROM {res} r WHERE r._op = 'update' AND t.id = r._hub_id"
        )
        return self._bisected(cur, spec, res, statement, "update", p)

    def _insert_defaults(self, spec) -> dict[str, str]:
        """SQL for the model's other columns: Django defaults are not database defaults."""
        covered = set(self._compared_columns(spec)) | {
            "id",
            "district_id",
            "created_at",
            "updated_at",
            "change_version",
            "source_system",
            "source_id",
            "last_run_id",
        }
        out = {}
        for f in spec.model._meta.concrete_fields:
            if f.column in covered:
                continue
            if f.has_default():
                value = f.get_default()
                out[f.column] = lit(f.get_db_prep_value(value, connection))
            elif f.null:
                out[f.column] = "NULL"
            elif f.column == "valid_from":
                out[f.column] = self._effective_sql(spec)
            else:
                out[f.column] = "''"
        return out

    def _apply_inserts(self, cur, spec, res, p) -> tuple[int, int]:
        cols = self._compared_columns(spec)
        defaults = self._insert_defaults(spec)
        names = [*cols, *defaults]
        values = [f"r.{q(c)}" for c in cols] + list(defaults.values())
        statement = (
            f"INSERT INTO {q(spec.table)} (district_id, source_system, source_id, last_run_id, "
            f"created_at, updated_at, change_version, {', '.join(q(n) for n in names)}) "
            f"SELECT %(district)s, %(source)s, r._sid, %(run)s, now(), now(), 0, "
            f"{', '.join(values)} FROM {res} r WHERE r._op = 'insert'"
        )
        return self._bisected(cur, spec, res, statement, "insert", p)

    def _link_self_references(self, cur, spec, res, p) -> None:
        for target in spec.targets:
            if target.kind != "ref" or target.ref != spec.name:
                continue
            col, ref_col = q(target.column), q("ref_" + target.name)
            cur.execute(
                f"UPDATE {q(spec.table)} t SET {col} = parent.id FROM {res} r "
                f"JOIN {q(spec.table)} parent ON parent.district_id = %(district)s "
                f"AND parent.source_system = %(source)s AND parent.source_id = r.{ref_col} "
                f"WHERE r.{col} IS NULL AND r.{ref_col} IS NOT NULL "
                "AND r._op IN ('insert', 'update') "
                f"AND t.district_id = %(district)s AND t.source_system = %(source)s "
                f"AND t.source_id = r._sid AND t.{col} IS DISTINCT FROM parent.id",
                p,
            )

    def _apply_removals(self, cur, spec, res, removal_ids: list[int], p) -> tuple[int, int]:
        if not removal_ids:
            return 0, 0
        table = q(spec.table)
        if spec.removal == "deactivate":
            cur.execute(
                f"UPDATE {table} SET is_active = false, last_run_id = %s, updated_at = now() "
                f"WHERE id = ANY(%s)",
                [self.run.pk, removal_ids],
            )
            return cur.rowcount, 0
        done, failed = 0, 0
        for chunk in _halves(removal_ids):
            n, f = self._delete_chunk(cur, spec, chunk, p)
            done += n
            failed += f
        return done, failed

    def _delete_chunk(self, cur, spec, ids: list[int], p) -> tuple[int, int]:
        try:
            with transaction.atomic():
                cur.execute(f"DELETE FROM {q(spec.table)} WHERE id = ANY(%s)", [ids])
                return cur.rowcount, 0
        except DatabaseError as exc:
            if len(ids) == 1:
                cur.execute(f"SELECT source_id FROM {q(spec.table)} WHERE id = %s", [ids[0]])
                row = cur.fetchone()
                RecordError.objects.create(
                    run=self.run,
                    definition=self.definition,
                    district_id=self.run.district_id,
                    entity=spec.name,
                    file="",
                    line=None,
                    field="",
                    reason=f"cannot remove {spec.model._meta.verbose_name} #{ids[0]}: "
                    f"{_constraint_message(spec, exc)}",
                    source_id=row[0] if row else "",
                )
                cur.execute(
                    "DELETE FROM integrations_runchange WHERE run_id = %s AND table_name = %s "
                    "AND object_id = %s",
                    [self.run.pk, spec.table, ids[0]],
                )
                return 0, 1
            mid = len(ids) // 2
            a = self._delete_chunk(cur, spec, ids[:mid], p)
            b = self._delete_chunk(cur, spec, ids[mid:], p)
            return a[0] + b[0], a[1] + b[1]

    def _bisected(self, cur, spec, res, statement: str, op: str, p) -> tuple[int, int]:
        """Run a set-wise statement; if the database rejects a row, find it by halving the
        set under savepoints, record it as an error, and apply the rest."""
        cur.execute(f"SELECT min(_rid), max(_rid), count(*) FROM {res} WHERE _op = %s", [op])
        low, high, count = cur.fetchone()
        if not count:
            return 0, 0
        return self._bisect(cur, spec, res, statement, op, low, high, p)

    def _bisect(self, cur, spec, res, statement, op, low, high, p) -> tuple[int, int]:
        ranged = statement + f" AND r._rid BETWEEN {int(low)} AND {int(high)}"
        try:
            with transaction.atomic():
                cur.execute(ranged, p)
                return cur.rowcount, 0
        except DatabaseError as exc:
            if low == high:
                cur.execute(f"SELECT _file, _line, _sid FROM {res} WHERE _rid = %s", [low])
                row = cur.fetchone()
                if row is None:
                    return 0, 0
                RecordError.objects.create(
                    run=self.run,
                    definition=self.definition,
                    district_id=self.run.district_id,
                    entity=spec.name,
                    file=row[0] or "",
                    line=row[1],
                    field=_constraint_field(spec, exc),
                    reason=_constraint_message(spec, exc),
                    source_id=row[2] or "",
                )
                if op == "update":
                    cur.execute(
                        "DELETE FROM integrations_runchange WHERE run_id = %s AND table_name = %s"
                        " AND object_id = (SELECT _hub_id FROM " + res + " WHERE _rid = %s)",
                        [self.run.pk, spec.table, low],
                    )
                cur.execute(f"UPDATE {res} SET _op = 'failed' WHERE _rid = %s", [low])
                return 0, 1
            cur.execute(
                f"SELECT count(*) FROM {res} WHERE _op = %s AND _rid BETWEEN %s AND %s",
                [op, low, high],
            )
            if cur.fetchone()[0] == 0:
                return 0, 0
            mid = (low + high) // 2
            a = self._bisect(cur, spec, res, statement, op, low, mid, p)
            b = self._bisect(cur, spec, res, statement, op, mid + 1, high, p)
            return a[0] + b[0], a[1] + b[1]

    def _audit(self, spec, result: EntityResult) -> None:
        note = f"sync run #{self.run.pk} ({self.definition})"
        for action, count in (
            (LogEntry.Action.CREATE, result.created),
            (LogEntry.Action.UPDATE, result.updated),
            (
                LogEntry.Action.UPDATE if spec.removal == "deactivate" else LogEntry.Action.DELETE,
                result.deleted,
            ),
        ):
            if count:
                audit_bulk(
                    model=spec.model,
                    action=action,
                    object_ids=[],
                    count=count,
                    actor=self.actor,
                    note=note,
                )

    def _emit(self, cur, spec, res, result: EntityResult) -> None:
        """Per-row domain events for modest changes; large loads announce only the run."""
        prefix = getattr(spec.model, "event_prefix", None)
        if not prefix:
            return
        if (
            result.created + result.updated + result.deleted
            > settings.INTEGRATIONS["ROW_EVENTS_MAX"]
        ):
            self.log(
                f"{spec.name}: {result.created + result.updated + result.deleted} changes; "
                "announced by the run's event only"
            )
            return
        # The rows this run wrote are those with a before-image (updated, deactivated, closed,
        # renamed by a key change) and those it inserted, found from the resolved table by their
        # lineage: both by index, where "last_run_id = this run" alone reads the whole table (it
        # has no index: nothing else looks rows up by it). The LATERAL ... OFFSET 0 subqueries
        # fix that access path: left to itself, the planner may read the district's rows and
        # filter them on last_run_id, as cheap as it looks when it expects one row.
        table = q(spec.table)
        cur.execute(
            f"""
            /* sync: rows this run changed */
            WITH touched AS MATERIALIZED (
                -- imaged: the run kept a before-image of the row (it was there before)
                SELECT id, bool_or(imaged) AS imaged FROM (
                    SELECT c.object_id AS id, true AS imaged FROM integrations_runchange c
                    WHERE c.run_id = %(run)s AND c.table_name = %(table)s AND c.op = 'update'
                    UNION ALL
                    SELECT inserted.id, false FROM {res} r CROSS JOIN LATERAL (
                        SELECT t.id FROM {table} t
                        WHERE t.district_id = %(district)s AND t.source_system = %(source)s
                          AND t.source_id = r._sid AND t.source_id <> ''
                          AND t.last_run_id = %(run)s
                        OFFSET 0
                    ) inserted
                    WHERE r._op = 'insert'
                ) found GROUP BY id
            )
            SELECT t.id, t.change_version,
                   CASE WHEN x.imaged THEN 'updated' ELSE 'created' END
            FROM touched x CROSS JOIN LATERAL (
                SELECT t.id, t.change_version, t.last_run_id, t.district_id
                FROM {table} t WHERE t.id = x.id OFFSET 0
            ) t
            WHERE t.last_run_id = %(run)s AND t.district_id = %(district)s
            ORDER BY t.id
            """,
            {**self.params(spec.name), "table": spec.table},
        )
        for pk, version, verb in cur.fetchall():
            obj = spec.model(pk=pk, district_id=self.run.district_id, change_version=version)
            events.emit(f"{prefix}.{verb}", obj)
        cur.execute(
            "SELECT object_id, before FROM integrations_runchange WHERE run_id = %s "
            "AND table_name = %s AND op = 'delete'",
            [self.run.pk, spec.table],
        )
        for pk, _before in cur.fetchall():
            obj = spec.model(pk=pk, district_id=self.run.district_id)
            events.emit(f"{prefix}.deleted", obj)


def _halves(ids: list[int], size: int = 50000) -> Iterator[list[int]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _constraint_field(spec, exc: Exception) -> str:
    name = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)
    for c in spec.model._meta.constraints:
        if c.name == name:
            fields = getattr(c, "fields", None) or ()
            return fields[-1] if fields else getattr(c, "violation_error_code", "") or ""
    column = getattr(getattr(exc.__cause__, "diag", None), "column_name", None)
    return column or ""


def _constraint_message(spec, exc: Exception) -> str:
    diag = getattr(exc.__cause__, "diag", None)
    name = getattr(diag, "constraint_name", None)
    for c in spec.model._meta.constraints:
        if c.name == name and getattr(c, "violation_error_message", None):
            return str(c.violation_error_message)
    primary = getattr(diag, "message_primary", None) or _first_line(exc)
    return f"the database refused the row: {primary}"


def analyze_written(results: dict[str, EntityResult]) -> None:
    """ANALYZE the hub tables (and the fingerprints) a committed merge changed by more than a
    tenth: a district's first run adds a million rows the statistics do not know yet, and
    until autovacuum gets to them the planner takes the district for empty. The next run's
    small statements (a re-run's 1%) then walk the district's rows once per record instead of
    using the lineage index. Outside the merge's transaction: ANALYZE holds its lock to the
    end of the transaction, and two districts' merges must not queue behind each other.

    Outside any transaction (a worker's run) it is ``VACUUM (ANALYZE)``, as PostgreSQL's
    advice for bulk loads has it: the next statement to read a million freshly inserted rows
    otherwise sets each one's hint bits, and autovacuum, woken by the inserts, would do the
    same work in the middle of the next run."""
    written: dict[str, int] = {}
    for name, result in results.items():
        table = ent.spec(name).table
        changed = result.created + result.updated + result.deleted
        written[table] = written.get(table, 0) + changed
        written["integrations_recordfingerprint"] = (
            written.get("integrations_recordfingerprint", 0) + changed
        )
    with connection.cursor() as cur:
        cur.execute(
            "SELECT relname, reltuples FROM pg_class WHERE relname = ANY(%s) "
            "AND relnamespace = 'public'::regnamespace",
            [list(written)],
        )
        for table, tuples in cur.fetchall():
            if written[table] >= ANALYZE_MIN_ROWS and written[table] > 0.1 * max(tuples, 0):
                vacuum = "ANALYZE" if connection.in_atomic_block else "VACUUM (ANALYZE)"
                cur.execute(f"{vacuum} {q(table)}")


def drop_staging(run: SyncRun) -> None:
    """Drop a run's staging tables (after it merged, or was discarded)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = %s "
            "AND tablename LIKE %s",
            [SCHEMA, f"r{run.pk}\\_%"],
        )
        for (name,) in cur.fetchall():
            # CASCADE: the view of a fingerprint table's kept rows goes with it.
            cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{name} CASCADE")


def attach_raw(cur, *, raw: str, joins: list[tuple[str, str, str, str]], params: dict) -> None:
    """Keep the source record with each of the run's errors of the entity that has none yet, so
    it can be downloaded and retried by the next run.

    With the rows of the files it was joined to, under ``_joined`` (file name -> rows): the
    next file may be a delta that leaves them out (a student's role is in roles.csv), and the
    record is retried with them (Stager._inject_retries). Called by validation and again by
    the merge, whose failures (an unknown parent) are retried the same way.
    """
    where = "run_id = %(run)s AND entity = %(entity)s AND raw IS NULL AND line IS NOT NULL"
    cur.execute(f"SELECT EXISTS (SELECT 1 FROM integrations_recorderror WHERE {where})", params)
    if not cur.fetchone()[0]:
        return
    ctes = [
        f"bad AS MATERIALIZED (SELECT r.* FROM {raw} r WHERE r._line IN "
        f"(SELECT line FROM integrations_recorderror WHERE {where}))"
    ]
    joined, pairs = "", []
    for n, (table, key, from_field, name) in enumerate(joins):
        ctes.append(
            f"j{n} AS (SELECT x.{q(key)} AS k, jsonb_agg(to_jsonb(x) - '_line' - '_file' "
            f"ORDER BY x._line) AS rows FROM {table} x "
            f"WHERE x.{q(key)} IN (SELECT {q(from_field)} FROM bad) GROUP BY x.{q(key)})"
        )
        joined += f" LEFT JOIN j{n} ON j{n}.k = b.{q(from_field)}"
        pairs.append(f"{lit(name)}, j{n}.rows")
    value = "to_jsonb(b) - '_line' - '_file'"
    if pairs:
        value += (
            " || jsonb_build_object('_joined', "
            f"jsonb_strip_nulls(jsonb_build_object({', '.join(pairs)})))"
        )
    # A few errors against a million staged rows: hash them rather than walk the table per error.
    with transaction.atomic(), hash_joins(cur):
        cur.execute(
            f"""
            WITH {", ".join(ctes)}
            UPDATE integrations_recorderror e SET raw = {value}
            FROM bad b{joined}
            WHERE e.run_id = %(run)s AND e.entity = %(entity)s AND e.raw IS NULL
              AND e.line = b._line
            """,
            params,
        )


def errors_superseded(run: SyncRun, staged: list[Staged]) -> None:
    """Open errors of earlier runs of this definition that this run retried, or whose record
    it read again, are closed as retried: a record that failed again has a new open error
    from this run.

    Only errors this run could retry: those keeping the record's source id under the key its
    read of the entity has (a student that failed from users.csv cannot be retried by a zip
    that leaves users.csv out, and stays open for the next one that has it). A row that could
    not be parsed (``_row``: a wrong number of fields) or had no source id was not retried
    either; its error stays open until a complete read of its entity reads the whole file
    again, since a delta may never send the row again.
    """
    with connection.cursor() as cur:
        for item in staged:
            retryable = "raw ->> %(key)s IS NOT NULL" if item.retry_key else "true"
            cur.execute(
                f"""
                UPDATE integrations_recorderror SET status = %(retried)s
                WHERE definition_id = %(definition)s AND entity = %(entity)s
                  AND status = %(open)s AND run_id <> %(run)s AND raw IS NOT NULL
                  AND ({retryable} OR %(complete)s)
                """,
                {
                    "retried": ErrorStatus.RETRIED,
                    "open": ErrorStatus.OPEN,
                    "definition": run.definition_id,
                    "entity": item.entity,
                    "run": run.pk,
                    "key": item.retry_key,
                    "complete": item.complete,
                },
            )


def forget_older_images(run: SyncRun) -> None:
    """Before-images are kept until the next run of the same definition succeeds."""
    RunChange.objects.filter(run__definition_id=run.definition_id).exclude(run=run).delete()
