"""Database-side change tracking: one sequence, a stamping trigger and a tombstone trigger.

Why triggers: every write path (ORM save, queryset.update(), bulk_create, COPY merges written
by later issues, raw SQL) gets a change version and every delete a tombstone, with no code path
able to forget it. The stamping trigger is row-level (it must set NEW.change_version); the
tombstone trigger is statement-level with a transition table, so a bulk delete writes its
tombstones in one INSERT ... SELECT.

The sequence and functions are created by the common app's migration; the per-table triggers
are (re)installed after every `migrate` for every concrete TenantModel, so a new model cannot
miss them (see docs/development/adding-a-model.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connection, connections

logger = logging.getLogger(__name__)

SEQUENCE = "bxos_change_version"

CREATE_FUNCTIONS = f"""
CREATE SEQUENCE IF NOT EXISTS {SEQUENCE};

CREATE TABLE IF NOT EXISTS bxos_change_horizon (
    id integer PRIMARY KEY CHECK (id = 1),
    safe_version bigint NOT NULL
);

CREATE OR REPLACE FUNCTION bxos_stamp_change_version() RETURNS trigger AS $$
BEGIN
    -- Maintenance that changes no data a consumer sees (key rotation) sets this for its
    -- transaction, so feeds and syncs do not see every row as changed.
    IF TG_OP = 'UPDATE' AND current_setting('bxos.keep_change_version', true) = 'on' THEN
        NEW.change_version := OLD.change_version;
        RETURN NEW;
    END IF;
    -- Take a transaction id before the version, so that a reader fixing an upper bound sees
    -- this transaction as in flight whenever its version is at or below the bound
    -- (see safe_change_version()).
    PERFORM pg_current_xact_id();
    NEW.change_version := nextval('{SEQUENCE}');
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION bxos_write_tombstones() RETURNS trigger AS $$
BEGIN
    INSERT INTO common_tombstone
        (table_name, object_id, district_id, source_system, source_id, change_version, deleted_at)
    SELECT TG_TABLE_NAME, o.id, o.district_id, o.source_system, o.source_id,
           nextval('{SEQUENCE}'), now()
    FROM old_rows o;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
"""

DROP_FUNCTIONS = f"""
DROP TABLE IF EXISTS bxos_change_horizon;
DROP FUNCTION IF EXISTS bxos_write_tombstones() CASCADE;
DROP FUNCTION IF EXISTS bxos_stamp_change_version() CASCADE;
DROP SEQUENCE IF EXISTS {SEQUENCE};
"""


def tracked_models() -> list[type]:
    from bxos.common.models import TenantModel

    return [
        m
        for m in apps.get_models()
        if issubclass(m, TenantModel) and not m._meta.abstract and not m._meta.proxy
    ]


def install_triggers(using: str = "default") -> int:
    """Create or replace the triggers on every TenantModel table. Idempotent."""
    from django.db import connections

    conn = connections[using]
    existing = set(conn.introspection.table_names())
    count = 0
    with conn.cursor() as cursor:
        for model in tracked_models():
            table = model._meta.db_table
            if table not in existing:
                continue
            q = conn.ops.quote_name(table)
            cursor.execute(
                f"CREATE OR REPLACE TRIGGER bxos_stamp_cv BEFORE INSERT OR UPDATE ON {q} "
                f"FOR EACH ROW EXECUTE FUNCTION bxos_stamp_change_version()"
            )
            cursor.execute(
                f"CREATE OR REPLACE TRIGGER bxos_tombstones AFTER DELETE ON {q} "
                f"REFERENCING OLD TABLE AS old_rows "
                f"FOR EACH STATEMENT EXECUTE FUNCTION bxos_write_tombstones()"
            )
            count += 1
    return count


@contextlib.contextmanager
def keeping_change_versions() -> Iterator[None]:
    """Inside a transaction: updates keep their change version (maintenance only)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('bxos.keep_change_version', 'on', true)")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('bxos.keep_change_version', 'off', true)")


#: ``pg_stat_activity`` rows of the *other client sessions* of this database that are inside a
#: writing transaction (they hold a transaction id). Only client sessions stamp change versions
#: and write events: an autovacuum worker's ANALYZE also holds a transaction id (it writes
#: statistics), and it can hold it for as long as a long transaction it waits behind, so
#: counting it would hold every bound back for nothing.
OTHER_WRITERS_SQL = (
    "datname = current_database() AND backend_xid IS NOT NULL "
    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)


def other_writers(cursor) -> list[tuple]:
    """The other client sessions inside a writing transaction, to name in a message:
    (pid, application, state, transaction start, the start of its query)."""
    cursor.execute("SELECT pg_stat_clear_snapshot()")  # statistics are cached per transaction
    cursor.execute(
        "SELECT pid, application_name, state, xact_start, left(query, 200) "
        f"FROM pg_stat_activity WHERE {OTHER_WRITERS_SQL} ORDER BY xact_start"
    )
    return cursor.fetchall()


def safe_change_version(wait_seconds: float = 5.0, *, remember: bool = True) -> int:
    """The newest change version below which every change is committed and visible.

    ``current_change_version()`` is not safe as a change feed's upper bound: a writer may have
    stamped a version and not committed yet, and a reader paging past it would skip the row
    for good. The stamping trigger gives its transaction an id *before* taking a version, so:
    read the current version first, then the client sessions of this database that hold an
    id, and wait for just those to end. Writers that start later get higher versions and need
    no wait. If those transactions outlast ``wait_seconds`` (a long sync merge), the last safe
    version any process found is returned: older, never wrong, and logged with the sessions
    that held it back.

    ``remember=False`` inside a long transaction (a sync merge): the version found is not
    recorded as that last safe version, whose row would stay locked until the transaction
    ends and make every other caller wait for it.
    """
    import time as _time

    in_flight_sql = (
        "SELECT coalesce(array_agg(backend_xid::text), '{}') FROM pg_stat_activity "
        f"WHERE {OTHER_WRITERS_SQL}"
    )
    deadline = _time.monotonic() + wait_seconds
    with connection.cursor() as cursor:
        version = current_change_version()
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(in_flight_sql)
        waiting = cursor.fetchone()[0]
        while waiting:
            if _time.monotonic() >= deadline:
                cursor.execute("SELECT safe_version FROM bxos_change_horizon WHERE id = 1")
                row = cursor.fetchone()
                safe = min(row[0], version) if row else 0
                logger.warning(
                    "change version %s is not safe yet after %.1f s: sessions still writing "
                    "(pid, application, state, since, query): %s; using %s",
                    version,
                    wait_seconds,
                    other_writers(cursor),
                    safe,
                )
                return safe
            _time.sleep(0.005)
            # Statistics views are snapshotted per transaction: clear it to see live values.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(in_flight_sql + " AND backend_xid = ANY(%s::xid[])", [waiting])
            waiting = cursor.fetchone()[0]
        if not remember:
            return version
        cursor.execute(
            "INSERT INTO bxos_change_horizon (id, safe_version) VALUES (1, %s) "
            "ON CONFLICT (id) DO UPDATE SET safe_version = "
            "GREATEST(bxos_change_horizon.safe_version, EXCLUDED.safe_version)",
            [version],
        )
    return version


def own_connection(*, application_name: str, keepalive: bool = False):
    """A new autocommit psycopg connection to the default database that Django does not manage:
    Django closes and reopens its own connections between tasks and after errors, never this
    one, so a session-level lock taken on it lasts exactly as long as the caller keeps it open.
    The caller closes it.

    ``keepalive``: for a connection that stays idle while it holds something (a run's worker
    lock). PostgreSQL sees a client process that died at once (its socket is closed), but a
    client machine that vanished only when TCP keepalives give up (two hours by the operating
    system's default), and a firewall may drop a connection idle for minutes; probes every
    minute, from both ends, answer both.
    """
    import psycopg

    params = {**connections[DEFAULT_DB_ALIAS].get_connection_params()}
    params["application_name"] = application_name[:63]
    if keepalive:
        params.update(keepalives=1, keepalives_idle=60, keepalives_interval=10, keepalives_count=6)
    conn = psycopg.connect(**params, autocommit=True)
    if keepalive:
        # Ignored on a Unix socket. idle_session_timeout: a server-wide setting must not end it.
        conn.execute(
            "SELECT set_config('tcp_keepalives_idle', '60', false), "
            "set_config('tcp_keepalives_interval', '10', false), "
            "set_config('tcp_keepalives_count', '6', false), "
            "set_config('idle_session_timeout', '0', false)"
        )
    return conn


def current_change_version() -> int:
    """The newest change version handed out so far (0 when none)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT last_value, is_called FROM {SEQUENCE}")
        last_value, is_called = cursor.fetchone()
    return last_value if is_called else 0


def prepared_cursor():
    """A cursor that binds parameters on the server, so that psycopg prepares a statement
    once it has run a few times on this connection (``OPTIONS["prepare_threshold"]``).

    For the few fixed statements every API request runs (the token, the rate counters, the
    list page): PostgreSQL then plans each once per connection, not once per request, which
    was a third of their time (docs/benchmarks.md, B3). Every other query keeps Django's
    client-side binding, which never prepares, so the rest of the app is unchanged. The text
    of a statement run here must give each parameter a type PostgreSQL can infer (cast it
    where it cannot, as in a SELECT list). Wrapped like ``connection.cursor()``: the same
    error translation, and the same query log in tests.
    """
    from django.db.backends.postgresql.base import ServerBindingCursor

    db = connections[DEFAULT_DB_ALIAS]  # once: each attribute of the proxy looks it up again
    db.close_if_health_check_failed()
    db.ensure_connection()
    with db.wrap_database_errors:
        db.validate_thread_sharing()
        cursor = ServerBindingCursor(db.connection)
        return db.make_debug_cursor(cursor) if db.queries_logged else db.make_cursor(cursor)


def bulk_insert(model, objs: list, *, ignore_conflicts: bool = False) -> int:
    """Insert ``objs`` (unsaved instances of ``model``) in one statement with one parameter per
    column: ``INSERT ... SELECT * FROM unnest(%s::type[], ...)``. Returns the rows inserted.

    For the webhook outbox and the dispatcher's attempts, which insert hundreds of rows at once:
    ``bulk_create`` writes one placeholder per value (15,000 for 1,000 deliveries), and psycopg
    re-parses a text that long on every call (a tenth of a fan-out's dispatch time,
    docs/benchmarks.md, B4). Values go through each field's ``pre_save`` and
    ``get_db_prep_save`` exactly as ``bulk_create`` does (``auto_now_add``, binary wrapping),
    so defaults and conversions stay Django's. Primary keys are not read back. Not for fields
    stored as arrays (``unnest`` would flatten them).
    """
    if not objs:
        return 0
    fields = [f for f in model._meta.concrete_fields if not getattr(f, "db_returning", False)]
    columns = []
    params = []
    for f in fields:
        db_type = f.db_type(connection)
        if db_type is None or db_type.endswith("]"):
            raise ValueError(f"bulk_insert cannot insert {model.__name__}.{f.name} ({db_type})")
        columns.append((connection.ops.quote_name(f.column), db_type))
        params.append([f.get_db_prep_save(f.pre_save(obj, True), connection) for obj in objs])
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} "
        f"({', '.join(name for name, _ in columns)}) "
        f"SELECT * FROM unnest({', '.join(f'%s::{db_type}[]' for _, db_type in columns)})"
        + (" ON CONFLICT DO NOTHING" if ignore_conflicts else "")
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount
