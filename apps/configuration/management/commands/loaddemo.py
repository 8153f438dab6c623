"""The demo of `make run`: the demo configuration, and logins to try the worklist with (embedded default only)."""

from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.configuration.services import ConfigError
from apps.configuration.versions import config_apply
from apps.reading.models import Radiologist

DEMO_CONFIG = Path(settings.BASE_DIR) / "docs" / "examples" / "demo.yaml"
DEMO_PASSWORD = "demo"
DEMO_PACS_PORT = 11113  # the demo PACS's port in demo.yaml; `make run DEMO_PACS_PORT=N` starts it on N


class Command(BaseCommand):
    help = "Load the demo configuration (docs/examples/demo.yaml) and demo logins. Refused in production."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--pacs-port", type=int, default=DEMO_PACS_PORT, help="the demo PACS's port (11113)")

    def handle(self, *args, **options) -> None:
        if settings.PRODUCTION:
            raise CommandError("loaddemo sets known passwords: it is for the embedded default, not production")
        document = DEMO_CONFIG.read_text().replace(f"port: {DEMO_PACS_PORT},", f"port: {options['pacs_port']},")
        try:
            report = config_apply(document, author="loaddemo").report
        except ConfigError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"demo configuration: {report}")
        # Known passwords, set only where nobody chose one: the admin, and each demo radiologist.
        User = get_user_model()
        admin, _ = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        usernames = ["admin", *Radiologist.objects.values_list("user__username", flat=True)]
        for user in User.objects.filter(username__in=usernames):
            # get_or_create leaves an empty password, which Django counts as usable (and no password matches).
            if not user.password or not user.has_usable_password():
                user.set_password(DEMO_PASSWORD)
                user.save(update_fields=["password"])
        self.stdout.write(f"demo logins: {', '.join(sorted(usernames))} (password {DEMO_PASSWORD!r})")
