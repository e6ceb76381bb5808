"""Point a run's alias at the checkpoint of a step (or remove it), audited like the page does.

    python manage.py alias RUN NAME STEP
    python manage.py alias RUN NAME --remove
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard import aliases
from dashboard.models import Run


class Command(BaseCommand):
    help = "Point alias NAME of RUN at the checkpoint of STEP (or --remove it)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run", help="Run name.")
        parser.add_argument("name", help="Alias, e.g. prod.")
        parser.add_argument("step", nargs="?", type=int, help="Step of the checkpoint to point at.")
        parser.add_argument("--remove", action="store_true", help="Remove the alias instead.")

    def handle(self, *args, **options) -> None:
        run = Run.objects.filter(name=options["run"]).first()
        if run is None:
            raise CommandError(f"no run named {options['run']!r}")
        try:
            if options["remove"]:
                aliases.remove_alias(run, options["name"])
                self.stdout.write(f"alias {options['name']} of {run.name} removed")
                return
            if options["step"] is None:
                raise CommandError("give the STEP to point the alias at (or --remove)")
            checkpoint = run.checkpoints.filter(step=options["step"]).order_by("-saved_at").first()
            if checkpoint is None:
                raise CommandError(f"run {run.name} has no checkpoint of step {options['step']}")
            alias = aliases.set_alias(run, options["name"], checkpoint)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"alias {alias.name} of {run.name} -> {checkpoint.prefix} (step {checkpoint.step})")
