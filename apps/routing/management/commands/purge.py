import json

from django.core.management.base import BaseCommand

from apps.routing.retention import storage_purge


class Command(BaseCommand):
    help = (
        "Remove the files nothing more is to be done with, once their retention passed; below the emergency "
        "threshold, oldest first until space is back (docs/storage.md). Rows are kept."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Say what would be purged; remove nothing.")
        parser.add_argument("--json", action="store_true", help="Print JSON instead of text.")

    def handle(self, *args, dry_run: bool = False, json: bool = False, **options) -> None:
        report = storage_purge(dry_run=dry_run).as_dict()
        self.stdout.write(_dump(report) if json else render(report))


def _dump(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def render(r: dict) -> str:
    verb = "Would purge" if r["dry_run"] else "Purged"
    lines = [f"{verb} {r['files']} files ({_mib(r['bytes'])}) of {len(r['studies'])} studies"]
    lines += [f"  {reason:<10} {_mib(size)}" for reason, size in r["bytes_by_reason"].items()]
    if r["emergency"]:
        lines.append("Emergency: free space was below the emergency threshold; oldest purgeable studies went first")
    lines.append(f"Free now {_mib(r['free_bytes'])}; an emergency could still purge {_mib(r['purgeable_bytes_left'])}")
    return "\n".join(lines)
