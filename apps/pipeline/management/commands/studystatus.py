import json

from django.core.management.base import BaseCommand, CommandError

from apps.pipeline.selectors import study_status


class Command(BaseCommand):
    help = "Where a study stands: instances, stage, QC, deliveries, assignment, notifications."

    def add_arguments(self, parser) -> None:
        parser.add_argument("study_instance_uid")
        parser.add_argument("--json", action="store_true", help="Print JSON instead of text.")

    def handle(self, *args, study_instance_uid: str, json: bool = False, **options) -> None:
        status = study_status(study_instance_uid=study_instance_uid)
        if status is None:
            raise CommandError(f"No study {study_instance_uid} has been received.")
        self.stdout.write(_json_dump(status) if json else render(status))


def _json_dump(status: dict) -> str:
    return json.dumps(status, indent=2, sort_keys=True)


def render(s: dict) -> str:
    received = s["received"]
    lines = [
        f"Study       {s['study_instance_uid']}",
        f"Received    {received['total']} instances ({received['persisted']} persisted, "
        f"{received['received']} waiting, {received['quarantined']} quarantined)",
        f"Stage       {s['stage']}" + (f" ({s['stage_detail']})" if s.get("stage_detail") else ""),
    ]
    if "study_id" not in s:
        return "\n".join(lines)
    lines += [
        f"Accession   {s['accession_number'] or '-'}   Modality {s['modalities'] or '-'}   "
        f"Body part {s['body_part'] or '-'}",
        f"Class       {s['specialty'] or '-'} / {s['priority'] or '-'}   "
        f"({s['series']} series, {s['instances']} instances)",
    ]
    files = s["files"]
    purged = ", ".join(f"{n} {reason}" for reason, n in sorted(files["purged"].items()))
    lines.append(
        f"Files       {files['stored']} stored"
        + (f", purged: {purged} (last on {files['purged_at']})" if purged else "")
        + (", protected" if files["protected"] else "")
    )
    qc = s["qc"]
    if qc:
        failed = [f"{c['check']}: {c['detail']}" for c in qc["checks"] if not c["passed"]]
        lines.append(f"QC          {qc['verdict']}" + (f" ({'; '.join(failed)})" if failed else ""))
    routing = s["routing"]
    if routing:
        lines.append(f"Routing     {', '.join(routing['matched_rules']) or 'no rule matched (unrouted)'}")
    for d in s["deliveries"]:
        error = f"  last error: {d['last_error']}" if d["last_error"] else ""
        lines.append(
            f"Delivery    {d['destination']}: {d['state']} {d['delivered']}/{d['instances']} "
            f"after {d['attempts']} attempt(s){error}"
        )
    a = s["assignment"]
    lines.append(f"Assignment  {a['radiologist']} ({a['username']}): {a['status']}" if a else "Assignment  none")
    for n in s["notifications"]:
        lines.append(f"Notified    {n['recipient']} by {n['channel']}: {n['state']}")
    return "\n".join(lines)
