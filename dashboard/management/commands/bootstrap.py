"""First start on a new machine: a local admin account and a demo run with real history.

Does nothing that was done before, so ``make run`` can call it every time.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from dashboard import recording, scanning
from dashboard.models import Run

DEMO_RUN = "antispam-demo"
DEMO_RECIPE = "persistence.recipes.antispam.AntiSpamRecipe"  # what make_demo_run trains


class Command(BaseCommand):
    help = "Create a local admin account and the demo run, if there are none yet."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-demo", action="store_true", help="Skip the demo run.")
        parser.add_argument("--demo-steps", type=int, default=300)

    def handle(self, *args, **options) -> None:
        self._admin()
        if not options["no_demo"] and not Run.objects.exists():
            self._demo(options["demo_steps"])

    def _admin(self) -> None:
        users = get_user_model().objects
        if users.exists():
            return
        password = secrets.token_urlsafe(12)
        users.create_superuser("admin", email="", password=password)
        credentials = settings.VAR_DIR / "initial-admin-password.txt"
        credentials.write_text(f"admin {password}\n")
        credentials.chmod(0o600)
        self.stdout.write(self.style.SUCCESS(
            f"Created the local admin account. Log in as  admin / {password}\n"
            f"(also saved in {credentials}; change it under Admin → Users)"
        ))

    def _demo(self, steps: int) -> None:
        from persistence.training import make_demo_run

        directory = settings.CHECKPOINT_ROOTS[0] / DEMO_RUN
        directory.mkdir(parents=True, exist_ok=True)
        self.stdout.write(f"Training the demo anti-spam classifier for {steps} steps in {directory} …")
        result = make_demo_run(str(directory), steps=steps)
        run = Run.objects.create(
            name=DEMO_RUN, directory=str(directory.resolve()), recipe=DEMO_RECIPE,
        )
        scanning.scan(run)
        recording.record_metrics(run, {c.prefix: c.metrics for c in result.checkpoints})
        self.stdout.write(self.style.SUCCESS(
            f"Demo run “{DEMO_RUN}”: {len(result.checkpoints)} checkpoints, "
            f"held-out accuracy {result.initial_metrics.get('accuracy', 0):.2f} → "
            f"{result.final_metrics.get('accuracy', 0):.2f}"
        ))
