"""Stamping takes a shared advisory lock, and a horizon table records the last safe version.

Replaces the trigger functions of 0001 (CREATE OR REPLACE) so that existing databases get the
change-feed-safe versions; see bxos.common.db.safe_change_version.
"""

from django.db import migrations

from bxos.common.db import CREATE_FUNCTIONS


class Migration(migrations.Migration):
    dependencies = [("common", "0001_initial")]

    operations = [
        migrations.RunSQL(CREATE_FUNCTIONS, "DROP TABLE IF EXISTS bxos_change_horizon;"),
    ]
