"""Fingerprints become PostgreSQL's 64-bit hashtextextended instead of md5 (about half the
cost of fingerprinting a million rows). The stored ones cannot be converted: they are
forgotten, with the marks, and the next run of each definition maps every record once."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0008_fingerprint_mark"),
    ]

    operations = [
        migrations.RunSQL(
            "DELETE FROM integrations_fingerprintmark; DELETE FROM integrations_recordfingerprint",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.RemoveField(model_name="recordfingerprint", name="fingerprint"),
        migrations.AddField(
            model_name="recordfingerprint",
            name="fingerprint",
            field=models.BigIntegerField(
                default=0,
                help_text="64-bit hash of the signature, row and joined rows (see pipeline).",
            ),
            preserve_default=False,
        ),
    ]
