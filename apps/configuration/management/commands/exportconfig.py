from django.core.management.base import BaseCommand

from apps.configuration.services import config_export


class Command(BaseCommand):
    help = "Write the configuration document (YAML) to standard output."

    def handle(self, *args, **options) -> None:
        self.stdout.write(config_export(), ending="")
