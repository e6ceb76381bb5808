"""Verify a checkpoint inline (read every tensor, restore it), the same code path as the verify job.

    python manage.py verify CHECKPOINT_ID [--output probs] [--json]

With ``--json`` one object: ``{"status": "verified"|"corrupt"|"incomplete"|"missing", "error",
"variables", "restore"}``. Exit code 0 when verified, 1 otherwise (and when ``--output`` was
given but could not be run after restoring).
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandParser

from dashboard import artifacts
from dashboard.models import Checkpoint


class Command(BaseCommand):
    help = "Verify a checkpoint (by id): read every tensor, record statistics and the status."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("checkpoint_id", type=int, help="Checkpoint id (see `manage.py scan --json`).")
        parser.add_argument("--output", default="", help="A tensor to run after restoring (e.g. probs).")
        parser.add_argument("--json", action="store_true", help="Print one JSON object to stdout.")

    def handle(self, *args, **options) -> None:
        checkpoint = Checkpoint.objects.select_related("run", "meta_source__run").filter(
            pk=options["checkpoint_id"]
        ).first()
        try:
            if checkpoint is None:
                raise ValueError(f"no checkpoint with id {options['checkpoint_id']}")
            verification = artifacts.verify(checkpoint, output=options["output"].strip())
        except Exception as exc:  # a message and exit code 1, never a traceback
            report = {"status": None, "error": str(exc) or type(exc).__name__, "variables": []}
            self._print(report, options["json"])
            sys.exit(1)
        ok = verification["status"] == Checkpoint.VERIFIED
        report = {
            "status": verification["status"],
            "error": None if ok else verification["message"],
            "variables": verification["variables"],
            "restore": verification.get("restore"),
        }
        self._print(report, options["json"], message=verification["message"])
        # Asking for an output that could not be run is a failure of this command even though the
        # tensors are sound (the report says both).
        if not ok or (options["output"].strip() and not (report["restore"] or {}).get("ok")):
            sys.exit(1)

    def _print(self, report: dict, as_json: bool, message: str = "") -> None:
        if as_json:
            self.stdout.write(json.dumps(report))
            return
        self.stdout.write(f"{report['status'] or 'error'}: {report['error'] or message}")
        restore = report.get("restore") or {}
        if restore.get("ok") is False:
            self.stdout.write(f"restore: {restore.get('error')}")
