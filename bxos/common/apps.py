from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _after_migrate(sender, using="default", **kwargs):
    # Runs once per app after `migrate`; only the last app's call matters, and both steps are
    # idempotent, so running them for every app is harmless and keeps new models covered.
    from django.apps import apps

    from bxos.behavior.defaults import load_defaults
    from bxos.common import db, roles, schedules

    db.install_triggers(using=using)
    # Also after a test flush, which empties tables without re-running data migrations.
    load_defaults(apps.get_model("behavior", "Descriptor"))
    roles.sync_role_groups()
    schedules.ensure_periodic_tasks()
    if apps.is_installed("bxos.api"):
        from bxos.api.catalogue import sync_catalogue

        sync_catalogue()


class CommonConfig(AppConfig):
    name = "bxos.common"
    label = "common"
    verbose_name = "Platform"

    def ready(self) -> None:
        post_migrate.connect(_after_migrate, dispatch_uid="bxos_common_after_migrate")
