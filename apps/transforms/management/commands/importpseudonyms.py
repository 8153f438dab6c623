from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.transforms.models import TransformProfile
from apps.transforms.services import pseudonyms_import


class Command(BaseCommand):
    help = "Import a transform profile's pseudonym table from a CSV file of patient_id,pseudonym rows."

    def add_arguments(self, parser) -> None:
        parser.add_argument("profile", help="the transform profile's name")
        parser.add_argument("file", type=Path)
        parser.add_argument("--replace", action="store_true", help="remove the rows the file does not list")

    def handle(self, *args, profile: str, file: Path, replace: bool, **options) -> None:
        found = TransformProfile.objects.filter(name=profile).first()
        if found is None:
            raise CommandError(f"no transform profile named {profile!r}")
        try:
            created, updated = pseudonyms_import(profile=found, text=file.read_text(), replace=replace)
        except (OSError, ValueError) as exc:
            raise CommandError(f"{file}: {exc}") from exc
        self.stdout.write(f"{profile}: {created} pseudonyms added, {updated} changed")
