"""Create a user with one of the three roles.

    python manage.py createuser NAME --role viewer|operator|maintainer [--password-stdin]

On a terminal it asks for the password (empty: generate one); otherwise, and without
--password-stdin, a strong password is generated and printed once.
"""

from __future__ import annotations

import getpass
import secrets
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard.access import ROLES, ensure_roles


class Command(BaseCommand):
    help = "Create a user with a role: viewer (read, download), operator (+ start jobs), maintainer (+ prune, pin)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--password-stdin", action="store_true", help="Read the password from standard input."
        )

    def handle(self, *args, **options) -> None:
        users = get_user_model().objects
        username = options["username"].strip()
        if not username:
            raise CommandError("The username must not be empty.")
        if users.filter(username=username).exists():
            raise CommandError(f"A user named {username!r} exists already.")
        password = ""
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\n")
        elif sys.stdin.isatty():
            password = getpass.getpass("Password (empty: generate one): ")
            if password and getpass.getpass("Password again: ") != password:
                raise CommandError("The passwords differ.")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(15)
        user = users.model(username=username, email=options["email"])
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        user.set_password(password)
        user.save()
        user.groups.add(ensure_roles()[options["role"]])
        self.stdout.write(self.style.SUCCESS(f"Created {options['role']} {username!r}."))
        if generated:
            self.stdout.write(f"Password (shown once): {password}")
