"""django-axes' lockout signal, turned into an audit event."""

from apps.audit.services import audit_action

USERNAME_MAX = 150  # AuditEvent.username


def login_locked_out(sender, *, request, username: str | None, **kwargs) -> None:
    """One event per attempt refused or locked by too many failures, on any login (worklist, admin, API).
    The name typed is kept; the password never reaches here (axes passes the username alone)."""
    audit_action(
        request=request,
        action="login.locked_out",
        study_instance_uid="",
        username=(username or "")[:USERNAME_MAX],
        detail=f"login at {request.path} locked after too many failed attempts (by username or by address)",
    )
