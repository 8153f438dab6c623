import json
from datetime import timedelta

from django.core.management.base import BaseCommand

from apps.core import clock
from apps.reading.selectors import GROUPS, sla_compliance


class Command(BaseCommand):
    help = "SLA compliance of the assignments made in the last N days, by priority, institution or radiologist."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--days", type=int, default=7)
        parser.add_argument("--by", choices=sorted(GROUPS), default="priority")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, days: int, by: str, json: bool = False, **options) -> None:
        end = clock.now()
        rows = sla_compliance(start=end - timedelta(days=days), end=end, by=by)
        if json:
            self.stdout.write(_dumps(rows))
            return
        self.stdout.write(f"{by:<24} assignments  acknowledged in time  reported in time")
        for row in rows:
            ack, report = row["ack_compliance"], row["report_compliance"]
            self.stdout.write(f"{row[by]:<24} {row['assignments']:>11}  {ack:>20.1%}  {report:>16.1%}")


def _dumps(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)
