"""The runs a worker works on (running, rolling back), indexed apart: the sweep for runs whose
worker died (integrations.services.runs_reap_abandoned) reads only these, every few minutes."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("integrations", "0010_pushed_action_pending_before_send")]

    operations = [
        migrations.AddIndex(
            model_name="syncrun",
            index=models.Index(
                condition=models.Q(("status__in", ["running", "rolling_back"])),
                fields=["status"],
                name="syncrun_worked_on",
            ),
        ),
    ]
