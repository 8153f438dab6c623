import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.configuration.services import ConfigError, config_import


class Command(BaseCommand):
    help = "Import the configuration document (YAML). All or nothing; importing the same file twice changes nothing."

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", help="Path to the YAML document, or - for standard input.")

    def handle(self, *args, file: str, **options) -> None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc}") from exc
        try:
            report = config_import(text)
        except ConfigError as exc:
            raise CommandError(f"{file}: {exc} (nothing was imported)") from exc
        self.stdout.write(f"Imported {file}: {report}")
