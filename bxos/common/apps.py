from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _after_migrate(sender, using="default", **kwargs):
    # post_migrate is sent once per app; act on the last one only, when every app's tables
    # and permissions (created by auth's own handler for each app) exist.
    from django.apps import apps

    last = [config for config in apps.get_app_configs() if config.models_module][-1]
    if sender.label != last.label:
        return

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
