from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "bxos.api"
    label = "api"
    verbose_name = "Vendor API"

    def ready(self) -> None:
        from bxos.api import signals  # noqa: F401  (registers events and audit)
