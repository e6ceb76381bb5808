"""Watching: record checkpoints the moment a trainer writes them (``manage.py watch``).

The periodic rescan finds what trainers outside the dashboard wrote, but only once a minute: a
trainer saving every few seconds with ``max_to_keep`` deletes checkpoints before any rescan sees
them. The watcher rescans a run as soon as its directory changes, through the same incremental
``scanning.scan`` (one implementation of "what is on disk"), writing rows itself rather than
through the queue, so that it keeps up while every worker is busy with a long job.

A checkpoint is recorded once its ``.index`` is there: TensorFlow renames the data shards into
place before it writes the index, and discovery marks one whose shard is still absent
``incomplete`` until a later change completes it. Its files vanishing after the state file dropped
it then makes its row ``rotated`` (see ``scanning._rotated_out``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import close_old_connections

from persistence import watching

from . import scanning
from .models import Run

logger = logging.getLogger("dashboard.watching")

# A run whose scan failed (its directory is gone, the database is unreachable) is tried again
# after RETRY_SECONDS, doubling with each failure up to RETRY_MAX_SECONDS (a run whose directory
# was removed for good is not reported every few seconds), and at once when its directory changes.
RETRY_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0


@dataclass
class WatchStats:
    """What a watcher has done so far (read by ``manage.py watch`` and by tests)."""

    batches: int = 0
    scans: int = 0
    failures: int = 0
    by_run: dict[str, int] = field(default_factory=dict)


def run_directories() -> dict[str, int]:
    """Every tracked run's directory (resolved) -> the run's id."""
    close_old_connections()
    # Runs in buckets have no directory to watch: the periodic rescan (one LIST) covers them.
    return {
        os.path.realpath(directory): pk for pk, directory in Run.objects.values_list("id", "directory")
        if "://" not in directory
    }


class Watcher:
    """Rescans each run whose directory changed; one instance per watching process."""

    def __init__(self, *, settings: watching.WatchSettings | None = None,
                 report: Callable[[str], None] | None = None) -> None:
        self.settings = settings or watching.WatchSettings()
        self.report = report or (lambda line: logger.info("%s", line))
        self.stats = WatchStats()
        self._runs: dict[str, int] = {}
        self._retry: dict[str, float] = {}  # directory -> when to try its scan again
        self._failures: dict[str, int] = {}  # directory -> scans failed in a row

    def directories(self) -> list[str]:
        try:
            self._runs = run_directories()
        except Exception as exc:  # the database is away: keep watching what was known
            self.report(f"cannot read the tracked runs ({exc}); watching the ones known before")
        # Called at every wake-up of the watch loop: the place to retry scans that failed.
        now = time.monotonic()
        due = {d for d, at in self._retry.items() if at <= now}
        if due:
            self.record(due)
        return list(self._runs)

    def record(self, directories: set[str]) -> None:
        """Rescan the runs of these directories (each once, however many files changed)."""
        self.stats.batches += 1
        close_old_connections()
        for directory in sorted(directories):
            pk = self._runs.get(directory)
            if pk is None:
                continue
            name = directory
            try:
                run = Run.objects.filter(pk=pk).first()
                if run is None:
                    continue
                name = run.name
                counts = scanning.scan(run)
            except Exception as exc:  # one run's trouble must not stop the watching of the others
                self.stats.failures += 1
                failures = self._failures[directory] = self._failures.get(directory, 0) + 1
                delay = min(RETRY_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
                self._retry[directory] = time.monotonic() + delay
                gone = not os.path.isdir(directory)
                self.report(f"{name}: {'directory is gone; waiting for it to come back' if gone else exc}")
                close_old_connections()
                continue
            self._retry.pop(directory, None)
            self._failures.pop(directory, None)
            self.stats.scans += 1
            self.stats.by_run[run.name] = self.stats.by_run.get(run.name, 0) + 1
            self.report(describe_counts(run.name, counts))

    def watch(self, stop: threading.Event) -> None:
        watching.watch(self.directories, self.record, stop=stop, settings=self.settings)


def describe_counts(name: str, counts: dict) -> str:
    """One log line for a watcher's scan: ``scanned NAME: 2 new, 1 rotated out``."""
    parts = [
        f"{counts[key]} {label}"
        for key, label in (("created", "new"), ("updated", "changed"), ("rotated", "rotated out"),
                           ("missing", "missing"))
        if counts.get(key)
    ]
    return f"scanned {name}: {', '.join(parts) or 'no change'}"
