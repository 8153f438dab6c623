from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "apps.ops"
    label = "ops"

    def ready(self) -> None:
        from . import heartbeats  # noqa: F401  (connects the worker's heartbeat to Celery's signals)
