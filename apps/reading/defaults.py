"""What the reading workflow ships with; data, installed by a migration and edited in admin."""

# SLA targets in minutes from the study's receipt: acknowledge, report.
DEFAULT_SLA_POLICIES = [
    {"priority": "STAT", "institution": "", "acknowledge_minutes": 5, "report_minutes": 60},
    {"priority": "URGENT", "institution": "", "acknowledge_minutes": 30, "report_minutes": 240},
    {"priority": "ROUTINE", "institution": "", "acknowledge_minutes": 240, "report_minutes": 1440},
]

# The escalation ladder a new database starts with (installed by a migration; the document's `escalation`).
DEFAULT_ESCALATION_POLICIES = [
    {"priority": "STAT", "window_minutes": 5, "steps": "remind,reassign,supervisors"},
]
SUPERVISORS_GROUP = "supervisors"


def install_escalation_defaults(get_model) -> None:
    """The shipped escalation ladder, into an empty table (the migration and the tests use it)."""
    policy = get_model("reading", "EscalationPolicy")
    if not policy.objects.exists():
        policy.objects.bulk_create(policy(**row) for row in DEFAULT_ESCALATION_POLICIES)
