"""What the reading workflow ships with; data, installed by a migration and edited in admin."""

# SLA targets in minutes from the study's receipt: acknowledge, report.
DEFAULT_SLA_POLICIES = [
    {"priority": "STAT", "institution": "", "acknowledge_minutes": 5, "report_minutes": 60},
    {"priority": "URGENT", "institution": "", "acknowledge_minutes": 30, "report_minutes": 240},
    {"priority": "ROUTINE", "institution": "", "acknowledge_minutes": 240, "report_minutes": 1440},
]

# After the acknowledge target of a STAT study passes unanswered, one escalation step per window.
ESCALATION_WINDOW_MINUTES = 5
SUPERVISORS_GROUP = "supervisors"
