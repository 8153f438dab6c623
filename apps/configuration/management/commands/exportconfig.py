from django.core.management.base import BaseCommand, CommandError

from apps.configuration.models import ConfigVersion
from apps.configuration.services import config_export


class Command(BaseCommand):
    help = "Write the configuration document (YAML) to standard output: today's, or version N's."

    def create_parser(self, prog_name, subcommand, **kwargs):
        # Our --version (a configuration version) replaces Django's (its own version number).
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser) -> None:
        parser.add_argument("--version", type=int, dest="number", help="The document of version N.")

    def handle(self, *args, number: int | None, **options) -> None:
        if number is None:
            self.stdout.write(config_export(), ending="")
            return
        version = ConfigVersion.objects.filter(pk=number).first()
        if version is None:
            raise CommandError(f"there is no version {number}")
        self.stdout.write(version.document, ending="")
