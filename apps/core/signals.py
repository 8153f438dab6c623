"""What a domain's admin action (or a domain event) tells orchestration, without knowing it (apps/pipeline
connects to these): the pipeline knows the domains, never the other way round."""

from django.dispatch import Signal

# A study may go on from `step` (a chain step name: route, assign, ...): an operator released, rerouted or
# freed it. Sent with study_id and step.
study_step_due = Signal()

# A person's action made an assignment (a reassignment): its reader is to be told. Sent with assignment_id.
assignment_made = Signal()

# A destination was paused for a configuration error no retry mends (a TLS certificate that does not verify):
# staff are to be told. Sent with destination_id.
destination_paused = Signal()
