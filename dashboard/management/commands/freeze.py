"""Freeze or export a checkpoint inline, verified, the same code path as the freeze job.

    python manage.py freeze CHECKPOINT_ID --outputs probs[,other] [--kind frozen_pb|saved_model|tflite|onnx]
        [--quantize] [--keep-devices] [--allow VAR,...] [--deny VAR,...] [--json]

With ``--json`` one object is printed: ``{"export": {"id", "kind", "path", "sha256", "size_bytes",
"outputs", "max_abs_diff", "verified"}}``, or ``{"error": "..."}`` with exit code 1. An export
that was written but whose outputs differ from the checkpoint's (not verified) is printed too,
with exit code 1: a deployment script must not ship it.
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandParser

from dashboard import artifacts
from dashboard.models import Checkpoint, Export


def _names(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


class Command(BaseCommand):
    help = "Export a checkpoint (by id) into EXPORT_ROOT/<run>/<step>/<outputs>.<kind's suffix> and verify it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("checkpoint_id", type=int, help="Checkpoint id (see `manage.py scan --json`).")
        parser.add_argument("--outputs", default="", help="Output node names, comma-separated (e.g. probs).")
        parser.add_argument("--kind", default=Export.FROZEN_PB, choices=list(Export.SUFFIXES),
                            help="What to export (default: a frozen .pb).")
        parser.add_argument("--quantize", action="store_true", help="TFLite: dynamic-range quantization.")
        parser.add_argument("--keep-devices", action="store_true", help="Keep device placements (default: clear).")
        parser.add_argument("--allow", default="", help="Only freeze these variables (comma-separated).")
        parser.add_argument("--deny", default="", help="Never freeze these variables (comma-separated).")
        parser.add_argument("--json", action="store_true", help="Print one JSON object to stdout.")

    def handle(self, *args, **options) -> None:
        checkpoint = Checkpoint.objects.select_related("run", "meta_source__run").filter(
            pk=options["checkpoint_id"]
        ).first()
        if checkpoint is None:
            self._fail(f"no checkpoint with id {options['checkpoint_id']}", options["json"])
        try:
            export = artifacts.freeze(
                checkpoint,
                outputs=_names(options["outputs"]),
                clear_devices=not options["keep_devices"],
                variables_allowlist=_names(options["allow"]),
                variables_denylist=_names(options["deny"]),
                kind=options["kind"],
                quantize=options["quantize"],
                on_progress=None if options["json"] else self._progress,
            )
        except Exception as exc:  # every failure is a message and exit code 1, never a traceback
            self._fail(str(exc) or type(exc).__name__, options["json"])
        if options["json"]:
            self.stdout.write(json.dumps({"export": export.as_json()}))
        else:
            verdict = "verified" if export.verified else "NOT verified"
            self.stdout.write(f"{export.path}: {export.size_bytes} bytes, sha256 {export.sha256}, {verdict} "
                              f"(max abs diff {export.max_abs_diff})")
        if not export.verified:
            sys.exit(1)

    def _progress(self, percent: float, message: str) -> None:
        self.stderr.write(f"{percent:5.1f}% {message}")

    def _fail(self, message: str, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps({"error": message}))
        else:
            self.stderr.write(f"error: {message}")
        sys.exit(1)
