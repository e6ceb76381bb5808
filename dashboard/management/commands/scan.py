"""Register a run directory if new and scan it inline; or rescan every tracked run.

    python manage.py scan DIR --name NAME [--json]
    python manage.py scan --all [--json]
"""

from __future__ import annotations

import json
import os

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.text import slugify

from dashboard import scanning
from dashboard.models import Checkpoint, Run
from dashboard.roots import checkpoint_directory, on_object_storage


class Command(BaseCommand):
    help = "Scan a checkpoint directory (registering it as a run if new), or every tracked run with --all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", nargs="?", help="Run directory (must be inside CHECKPOINT_ROOTS).")
        parser.add_argument("--name", help="Run name for a new directory (default: the directory's name).")
        parser.add_argument("--all", action="store_true", help="Rescan every tracked run.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object to stdout.")
        parser.add_argument(
            "--full", action="store_true", help="Re-read every checkpoint, even if the directory looks unchanged."
        )

    def handle(self, *args, **options) -> None:
        if options["all"]:
            if options["directory"]:
                raise CommandError("Give either a directory or --all, not both.")
            self._scan_all(as_json=options["json"], full=options["full"])
            return
        if not options["directory"]:
            raise CommandError("Give a directory to scan, or --all.")
        run = self._get_or_register(options["directory"], options["name"])
        counts = scanning.scan(run, full=options["full"])
        if options["json"]:
            self.stdout.write(json.dumps(self._report(run, counts["problems"])))
        else:
            self.stdout.write(f"{run.name}: {counts['checkpoints']} checkpoints in {run.directory}")
            for problem in counts["problems"]:
                self.stdout.write(f"  problem: {problem}")

    def _get_or_register(self, directory: str, name: str | None) -> Run:
        in_bucket = on_object_storage(directory)
        try:
            real = str(checkpoint_directory(directory if in_bucket else os.path.abspath(directory), objects=True))
        except ValueError as exc:
            raise CommandError(f"{directory}: {exc}") from None
        run = Run.objects.filter(directory=real).first()
        if run is not None:
            if name and name != run.name:
                raise CommandError(f"{real} is already tracked as run “{run.name}”.")
            return run
        run = Run(name=name or slugify(real.rstrip("/").rsplit("/", 1)[-1]), directory=real)
        try:
            run.full_clean()
        except ValidationError as exc:
            messages = "; ".join(f"{field}: {' '.join(errs)}" for field, errs in exc.message_dict.items())
            raise CommandError(messages) from None
        run.save()
        return run

    def _scan_all(self, *, as_json: bool, full: bool) -> None:
        report = {}
        for run in Run.objects.all():
            try:
                report[run.name] = scanning.scan(run, full=full)
            except (ValueError, OSError) as exc:  # directory no longer inside the roots, gone, bucket unreachable
                report[run.name] = {"error": str(exc)}
        if as_json:
            self.stdout.write(json.dumps({"runs": report}))
        else:
            for name, counts in report.items():
                self.stdout.write(f"{name}: {counts}")

    @staticmethod
    def _report(run: Run, problems: list[str]) -> dict:
        rows = (
            Checkpoint.objects.filter(run=run)
            .select_related("meta_source")
            .order_by("step", "saved_at", "prefix")
        )
        state_problems = [f"state file {s['name']}: {s['problem']}" for s in run.state_files if s.get("problem")]
        return {
            "run": {"id": run.pk, "name": run.name, "directory": run.directory},
            "checkpoints": [c.as_json() for c in rows],
            "problems": list(dict.fromkeys([*problems, *state_problems])),
        }
