"""Delete trash batches of prunes older than ``TRASH_DAYS`` (or ``--days``), as the scheduler does.

    python manage.py empty_trash [RUN ...] [--days N] [--json]
"""

from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard import trash
from dashboard.models import Run


class Command(BaseCommand):
    help = ("Delete the trash batches of prunes that are at least --days old (default TRASH_DAYS; "
            "0 empties every batch), each run's audited with the bytes freed.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("runs", nargs="*", help="run names (default: every run)")
        parser.add_argument("--days", type=float, default=None,
                            help=f"minimum age in days (default TRASH_DAYS, now {settings.TRASH_DAYS})")
        parser.add_argument("--json", action="store_true", help="Print one JSON object to stdout.")

    def handle(self, *args, runs: list[str], days: float | None, **options) -> None:
        if days is not None and not 0 <= days < float("inf"):
            raise CommandError("--days must be 0 or more")
        chosen = None
        if runs:
            chosen = list(Run.objects.filter(name__in=runs))
            unknown = sorted(set(runs) - {r.name for r in chosen})
            if unknown:
                raise CommandError(f"no run named {', '.join(unknown)}")
        summary = trash.empty_all_runs(days=days, runs=chosen)
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            return
        freed = sum(r.get("bytes_freed", 0) for r in summary.values())
        emptied = sum(len(r.get("emptied", [])) for r in summary.values())
        self.stdout.write(f"Emptied {emptied} trash batch{'es' if emptied != 1 else ''}, {freed} bytes freed.")
        for name, result in sorted(summary.items()):
            for key in ("error", "skipped"):
                if key in result:
                    self.stdout.write(f"  {name}: {result[key]}")
            for path, why in result.get("failed", {}).items():
                self.stdout.write(f"  {name}: {path}: {why}")
