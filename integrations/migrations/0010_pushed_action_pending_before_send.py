"""A pushed action is recorded before the POST that sends it, pending (``sent_at`` empty) until
the source accepted it (integrations/push.py, ``incident_send``). Every existing record was
written after a send, with ``sent_at``, so the new constraint holds for them all."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0009_fingerprint_as_int8"),
        ("schools", "0002_student_search_and_gate_indexes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="pushedaction",
            name="sent_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the source accepted the action; empty while its send is pending.",
                null=True,
            ),
        ),
        migrations.AddConstraint(
            model_name="pushedaction",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("sent_at__isnull", False), ("resource_id", ""), _connector="OR"
                ),
                name="pushed_action_pending_has_no_resource_id",
                violation_error_message="An action whose send is pending has no resource id yet: the source's answer gives it.",
            ),
        ),
    ]
