from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _after_migrate(sender, using="default", **kwargs):
    # Runs once per app after `migrate`; only the last app's call matters, and both steps are
    # idempotent, so running them for every app is harmless and keeps new models covered.
    from bxos.common import db, roles

    db.install_triggers(using=using)
    roles.sync_role_groups()


class CommonConfig(AppConfig):
    name = "bxos.common"
    label = "common"
    verbose_name = "Platform"

    def ready(self) -> None:
        post_migrate.connect(_after_migrate, dispatch_uid="bxos_common_after_migrate")
