"""Create a personal access token for the REST API and print it (alone) on stdout.

    python manage.py createtoken USER --scope viewer|operator|maintainer [--name NAME] [--expires-days N]

The token is shown this once; only its hash is stored. Its scope cannot exceed the user's role.
    TOKEN=$(python manage.py createtoken deploy-bot --scope viewer --name "deploy pipeline" --expires-days 90)
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard import tokens
from dashboard.access import ROLES


class Command(BaseCommand):
    help = "Create an API token for USER and print it alone on stdout (shown once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", metavar="USER")
        parser.add_argument("--scope", required=True, choices=ROLES, help="Never above the user's role.")
        parser.add_argument("--name", default="", help="What uses the token (default: “created on the command line”).")
        parser.add_argument("--expires-days", type=int, metavar="N", help="Expire after N days (default: never).")

    def handle(self, *args, **options) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user named {options['username']!r}.")
        try:
            token, secret = tokens.create_token(user, options["scope"], options["name"] or "created on the command line",
                                                expires_days=options["expires_days"])
        except (ValueError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from None
        expiry = f"expires {token.expires_at:%Y-%m-%d}" if token.expires_at else "does not expire"
        self.stderr.write(f"Created {token.scope} token “{token.name}” for {user.get_username()} ({expiry}).")
        self.stdout.write(secret)
