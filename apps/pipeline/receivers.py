"""What the domains' admin actions say (apps.core.signals), turned into work: a chain step, a notification."""

from apps.reading.models import Assignment

from .chains import chain_start, task_start
from .services import assignment_notify, destination_paused_notify


def study_step_due(sender, *, study_id: int, step: str, **kwargs) -> None:
    chain_start(study_id, step)


def assignment_made(sender, *, assignment_id: int, **kwargs) -> None:
    assignment = Assignment.objects.select_related("radiologist__user", "study").get(pk=assignment_id)
    for notification_id in assignment_notify(assignment=assignment):
        task_start("notification_send", notification_id)


def destination_paused(sender, *, destination_id: int, **kwargs) -> None:
    for notification_id in destination_paused_notify(destination_id=destination_id):
        task_start("notification_send", notification_id)
