"""Record checkpoints the moment trainers write them: watch every tracked run directory.

    python manage.py watch [--polling | --inotify] [-v 2]

Runs until Ctrl-C or SIGTERM. Runs registered later are picked up within a couple of seconds;
a run directory that is deleted is watched again once it is re-created. Run one per host that
sees the checkpoint directories; without any, the periodic rescan still catches up (minus the
checkpoints a trainer's max_to_keep deleted in between).
"""

from __future__ import annotations

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from dashboard.watching import Watcher
from persistence.watching import WatchSettings


class Command(BaseCommand):
    help = "Watch every tracked run directory and record new checkpoints as soon as they are written."

    def add_arguments(self, parser: CommandParser) -> None:
        how = parser.add_mutually_exclusive_group()
        how.add_argument("--polling", dest="polling", action="store_const", const=True,
                         help="List the directories every WATCH_POLL_INTERVAL_MS instead of using inotify "
                              "(for NFS and other network file systems).")
        how.add_argument("--inotify", dest="polling", action="store_const", const=False,
                         help="Use inotify even for directories on network file systems.")
        parser.set_defaults(polling=settings.WATCH_POLLING)

    def handle(self, *args, **options) -> None:
        from dashboard.worker import preload_tensorflow

        # The first new checkpoint's index is read at once, not after TensorFlow's 4 s import.
        preload_tensorflow()
        # watchfiles logs every batch of file events; the lines below say what each one led to.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        stop = threading.Event()

        def request_stop(signum, frame):
            stop.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        verbosity = options["verbosity"]

        def report(line: str) -> None:
            # Scans that found nothing new are only worth a line when asked for (-v 2).
            if verbosity >= 2 or (verbosity >= 1 and not line.endswith(": no change")):
                self.stdout.write(line)
                self.stdout.flush()

        watcher = Watcher(
            settings=WatchSettings(polling=options["polling"], poll_interval_ms=settings.WATCH_POLL_INTERVAL_MS),
            report=report,
        )
        mode = {True: "polling", False: "inotify"}.get(options["polling"], "inotify, polling where needed")
        self.stdout.write(f"Watching every tracked run directory ({mode}); Ctrl-C stops.")
        self.stdout.flush()
        watcher.watch(stop)
        self.stdout.write(f"Stopped after {watcher.stats.scans} scans.")
