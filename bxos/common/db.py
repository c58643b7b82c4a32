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
from collections.abc import Iterator

from django.apps import apps
from django.db import connection

SEQUENCE = "bxos_change_version"

CREATE_FUNCTIONS = f"""
CREATE SEQUENCE IF NOT EXISTS {SEQUENCE};

CREATE OR REPLACE FUNCTION bxos_stamp_change_version() RETURNS trigger AS $$
BEGIN
    -- Maintenance that changes no data a consumer sees (key rotation) sets this for its
    -- transaction, so feeds and syncs do not see every row as changed.
    IF TG_OP = 'UPDATE' AND current_setting('bxos.keep_change_version', true) = 'on' THEN
        NEW.change_version := OLD.change_version;
        RETURN NEW;
    END IF;
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


def current_change_version() -> int:
    """The newest change version handed out so far (0 when none)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT last_value, is_called FROM {SEQUENCE}")
        last_value, is_called = cursor.fetchone()
    return last_value if is_called else 0
