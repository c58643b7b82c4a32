from django.apps import AppConfig


class SchoolsConfig(AppConfig):
    name = "bxos.schools"
    label = "schools"
    verbose_name = "School data"

    def ready(self) -> None:
        from bxos.schools import signals  # noqa: F401  (registers events and audit)
