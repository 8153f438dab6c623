import sys
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.configuration.services import ConfigError
from apps.configuration.versions import config_apply, config_preview, config_restore


class Command(BaseCommand):
    help = (
        "Import the configuration document (YAML), all or nothing, recording a version of the configuration "
        "after it. --diff shows what it would change and writes nothing; --version N rolls back to version N."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        # Our --version (a configuration version) replaces Django's (its own version number).
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", nargs="?", help="Path to the YAML document, or - for standard input.")
        parser.add_argument("--diff", action="store_true", help="Show what would change; write nothing.")
        parser.add_argument(
            "--prune", action="store_true", help="Also remove entries of the document's sections it does not name."
        )
        parser.add_argument("--version", type=int, dest="number", help="Restore version N (a rollback).")
        parser.add_argument("--by", help="Whose change this is, for the version (default: the system user).")

    def handle(self, *args, file: str | None, diff: bool, prune: bool, number: int | None, by: str | None, **_):
        user = get_user_model().objects.filter(username=by).first() if by else None
        if number is not None:
            if file or diff:
                raise CommandError("--version N takes no file and no --diff (see the version's summary in the admin)")
            try:
                applied = config_restore(number, user=user, author=by)
            except ConfigError as exc:
                raise CommandError(f"{exc} (nothing was changed)") from exc
            self._changes(applied.diff)
            made = f"as version {applied.version.pk}" if applied.version else "(it is the configuration already)"
            self.stdout.write(f"Restored version {number} {made}")
            return
        if not file:
            raise CommandError("a file (or -) to import, or --version N")
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc}") from exc
        try:
            if diff:
                _, changes = config_preview(text, prune=prune)
                self._changes(changes)
                self.stdout.write("Nothing was written (--diff).")
                return
            applied = config_apply(text, user=user, author=by, prune=prune)
        except ConfigError as exc:
            raise CommandError(f"{file}: {exc} (nothing was imported)") from exc
        self._changes(applied.diff)
        version = f"; version {applied.version.pk}" if applied.version else "; no change, no version"
        self.stdout.write(f"Imported {file}: {applied.report}{version}")

    def _changes(self, diff) -> None:
        for change in diff.changes:
            self.stdout.write(str(change))
        self.stdout.write(diff.summary())
