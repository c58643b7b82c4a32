"""The shared store of API rate-limit counters (see bxos.api.throttling).

A plain table, not a model: only bxos.api.throttling reads or writes it, with raw SQL.
UNLOGGED because counters are disposable: skipping the WAL makes the per-request upsert cheap,
and losing the counts in a server crash only gives clients a fresh window.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0002_throttles_and_idempotency"),
    ]

    operations = [
        migrations.RunSQL(
            sql="""
                CREATE UNLOGGED TABLE api_rate_counter (
                    key text NOT NULL,
                    window_start timestamptz NOT NULL,
                    count integer NOT NULL,
                    PRIMARY KEY (key, window_start)
                );
                CREATE INDEX api_rate_counter_window_start ON api_rate_counter (window_start);
            """,
            reverse_sql="DROP TABLE api_rate_counter;",
        ),
    ]
