from django.apps import AppConfig


class PipelineConfig(AppConfig):
    name = "apps.pipeline"
    label = "pipeline"

    def ready(self) -> None:
        from apps.core import signals

        from . import receivers

        signals.study_step_due.connect(receivers.study_step_due, dispatch_uid="pipeline.study_step_due")
        signals.assignment_made.connect(receivers.assignment_made, dispatch_uid="pipeline.assignment_made")
        signals.destination_paused.connect(receivers.destination_paused, dispatch_uid="pipeline.destination_paused")
