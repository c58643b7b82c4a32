from django.apps import AppConfig


class BehaviorConfig(AppConfig):
    name = "bxos.behavior"
    label = "behavior"
    verbose_name = "Behavior"

    def ready(self) -> None:
        from bxos.behavior import signals  # noqa: F401  (registers events and audit)
