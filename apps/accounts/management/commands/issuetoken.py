from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.services import token_issue


class Command(BaseCommand):
    help = "Issue a named API token for a user and print it once (only its digest is stored)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", required=True, help="What will use the token, e.g. 'RIS status feed'.")
        parser.add_argument("--days", type=int, help="Days until it expires (default: API_TOKEN_DAYS).")

    def handle(self, *args, username: str, name: str, days: int | None, **options) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist as exc:
            raise CommandError(f"No user {username!r}.") from exc
        if days is not None and days < 1:
            raise CommandError("--days must be 1 or more.")
        token, raw = token_issue(user=user, name=name, days=days)
        self.stderr.write(f"Token {token.name!r} for {username}, expires {token.expiry:%Y-%m-%d %H:%M} UTC.")
        self.stderr.write("It is shown this once and cannot be shown again:")
        self.stdout.write(raw)
