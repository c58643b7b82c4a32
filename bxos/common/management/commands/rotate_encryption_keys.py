"""Re-encrypt every encrypted field with the newest key in BXOS_ENCRYPTION_KEYS."""

from __future__ import annotations

from auditlog.models import LogEntry
from django.db import connection, transaction
from tqdm import tqdm

from bxos.common.audit import audit_bulk
from bxos.common.db import keeping_change_versions
from bxos.common.fields import PREFIX, encrypted_fields, rotate
from bxos.common.management.base import ActorCommand

BATCH = 1000


class Command(ActorCommand):
    help = (
        "Re-encrypt all encrypted fields with the first key of BXOS_ENCRYPTION_KEYS. Put the new "
        "key first, keep the old ones, run this, then remove the old keys."
    )

    def add_arguments(self, parser):
        parser.add_argument("--quiet", action="store_true", help="No progress bar.")

    def act(self, *args, actor, quiet=False, **options):
        total = 0
        for model, fields in encrypted_fields():
            table = connection.ops.quote_name(model._meta.db_table)
            columns = [model._meta.get_field(f).column for f in fields]
            count = model._base_manager.count()
            bar = tqdm(total=count, desc=model._meta.label, disable=quiet, unit="rows")
            last_id = 0
            while True:
                # Key-set batches, each in its own transaction: a long run never holds one lock.
                with transaction.atomic(), keeping_change_versions():
                    with connection.cursor() as cursor:
                        cursor.execute(
                            f"SELECT id, {', '.join(columns)} FROM {table} WHERE id > %s "
                            f"ORDER BY id LIMIT %s FOR UPDATE",
                            [last_id, BATCH],
                        )
                        rows = cursor.fetchall()
                        if not rows:
                            break
                        updates = []
                        for row in rows:
                            values = [
                                rotate(v) if v and v.startswith(PREFIX) else v for v in row[1:]
                            ]
                            updates.append([*values, row[0]])
                        assignments = ", ".join(f"{c} = %s" for c in columns)
                        cursor.executemany(
                            f"UPDATE {table} SET {assignments} WHERE id = %s", updates
                        )
                    audit_bulk(
                        model=model,
                        action=LogEntry.Action.UPDATE,
                        object_ids=[r[0] for r in rows],
                        actor=actor,
                        note=f"re-encrypted {', '.join(fields)} with the newest key",
                    )
                last_id = rows[-1][0]
                total += len(rows)
                bar.update(len(rows))
            bar.close()
        self.stdout.write(f"Re-encrypted {total} row(s) with the newest key.")
