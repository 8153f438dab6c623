"""Writing the audit trail: one event per human view of a study, never edited."""

from collections.abc import Iterable

from apps.studies.models import Study

from .models import AuditEvent


def client_address(request) -> str | None:
    # The address of the connection; behind a proxy, the proxy must be configured to pass the real one.
    return request.META.get("REMOTE_ADDR") or None


def audit_views(*, request, action: str, studies: Iterable[Study]) -> int:
    """One event per study the user was shown (a list counts each study once)."""
    user = request.user if request.user.is_authenticated else None
    events = [
        AuditEvent(
            user=user,
            username=user.get_username() if user else "",
            action=action,
            study=study,
            study_instance_uid=study.study_instance_uid,
            source_address=client_address(request),
        )
        for study in {s.pk: s for s in studies}.values()
    ]
    AuditEvent.objects.bulk_create(events)
    return len(events)


def audit_action(
    *,
    request,
    action: str,
    study_instance_uid: str,
    detail: str,
    study: Study | None = None,
    username: str | None = None,
) -> None:
    """One event for an action a person took on a study, with what and why (never patient data). A study
    deleted by the action is named by its UID alone. An attempt by someone not logged in (a refused login) is
    on no study, with an empty UID, and `username` is the name they gave; the event has no user then, and
    `request.user` is not read (inside DRF's authentication, reading it would authenticate again)."""
    user = None
    if username is None:
        user = request.user if request.user.is_authenticated else None
        username = user.get_username() if user else ""
    AuditEvent.objects.create(
        user=user,
        username=username,
        action=action,
        study=study,
        study_instance_uid=study_instance_uid,
        source_address=client_address(request),
        detail=detail,
    )
