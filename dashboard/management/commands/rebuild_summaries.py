"""Recompute the cached run summaries and metric sort rows from the checkpoint rows."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from dashboard import summaries
from dashboard.models import Run


class Command(BaseCommand):
    help = ("Recompute every run's cached summary (counts, size, latest step) and the rows the history "
            "sorts metrics by, from the checkpoint rows. Only needed after rows were written around the "
            "dashboard (a restore from backup, direct SQL). Without run names, on PostgreSQL, sorting "
            "by a metric waits until it is done (seconds per million metric values).")

    def add_arguments(self, parser) -> None:
        parser.add_argument("runs", nargs="*", help="run names (default: every run)")

    def handle(self, *args, runs: list[str], **options) -> None:
        chosen = None
        if runs:
            chosen = list(Run.objects.filter(name__in=runs))
            unknown = sorted(set(runs) - {r.name for r in chosen})
            if unknown:
                raise CommandError(f"no run named {', '.join(unknown)}")
        done = summaries.rebuild(chosen)
        self.stdout.write(f"Rebuilt the summaries of {done} run{'s' if done != 1 else ''}.")
