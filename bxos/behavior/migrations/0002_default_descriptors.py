from django.db import migrations


def load(apps, schema_editor):
    from bxos.behavior.defaults import load_defaults

    load_defaults(apps.get_model("behavior", "Descriptor"))


class Migration(migrations.Migration):
    dependencies = [("behavior", "0001_initial")]

    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
