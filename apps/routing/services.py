"""Routing's public functions, from the three rooms that hold them: deciding (decide.py), delivering
(deliver.py) and destination health (health.py). Callers import from here."""

from .commitment import (
    CommitmentReports,
    Reported,
    Sent,
    commitment_report,
    commitment_send,
    commitments_due,
    delivery_committed,
)
from .decide import (
    destinations_through,
    dry_run,
    dry_run_study,
    facts_from_dataset,
    on_receipt_rules_exist,
    rules_engine,
    rules_load,
    rules_replay,
    study_facts,
    study_reroute,
    study_route,
    study_stream_decide,
)
from .deliver import (
    CLOSED_WAIT,
    PAUSED_WAIT,
    deliveries_due,
    delivery_give_up,
    delivery_retry,
    delivery_send,
    retry_delay,
)
from .health import (
    destination_config_error_set,
    destination_echo,
    destination_health_set,
    destination_resume,
    destinations_check,
)
from .stream import delivery_stream

__all__ = [
    "CLOSED_WAIT",
    "PAUSED_WAIT",
    "CommitmentReports",
    "Reported",
    "Sent",
    "commitment_report",
    "commitment_send",
    "commitments_due",
    "delivery_committed",
    "deliveries_due",
    "delivery_give_up",
    "delivery_retry",
    "delivery_send",
    "delivery_stream",
    "destination_config_error_set",
    "destination_echo",
    "destination_health_set",
    "destination_resume",
    "destinations_through",
    "destinations_check",
    "dry_run",
    "dry_run_study",
    "facts_from_dataset",
    "on_receipt_rules_exist",
    "retry_delay",
    "rules_engine",
    "rules_load",
    "rules_replay",
    "study_facts",
    "study_reroute",
    "study_route",
    "study_stream_decide",
]
