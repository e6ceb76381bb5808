"""Compare two checkpoints variable by variable, inline, and store the result.

    python manage.py compare A_ID B_ID [--json]

Same code path as the compare job (``comparing.compute``), so the dashboard shows the result too.
With ``--json`` stdout holds exactly one JSON object: the comparison, or ``{"error": ...}`` with
exit status 1 (an unknown id, a checkpoint whose files are gone or cannot be read). Never a
traceback: this is meant for scripts.
"""

from __future__ import annotations

import json
import logging

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard import comparing
from dashboard.models import Checkpoint, Comparison

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Compare checkpoint A with checkpoint B (database ids), variable by variable; store the result."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("a", help="Id of checkpoint A (before).")
        parser.add_argument("b", help="Id of checkpoint B (after).")
        parser.add_argument("--json", action="store_true", help="Print one JSON object to stdout.")

    def handle(self, *args, **options) -> None:
        as_json = options["json"]
        try:
            a, b = self._load(options["a"]), self._load(options["b"])
            comparison = comparing.compute(a, b)
        except (Comparison.CannotCompare, LookupError) as exc:
            self._fail(str(exc), as_json)
        except Exception as exc:  # a script gets a message and a status, never a traceback
            log.exception("compare %s %s failed", options["a"], options["b"])
            self._fail(f"unexpected error: {type(exc).__name__}: {exc}", as_json)
        if as_json:
            self.stdout.write(json.dumps(comparison.as_json()))
        else:
            self._print_table(comparison)

    @staticmethod
    def _load(raw: str) -> Checkpoint:
        try:
            pk = int(raw)
        except ValueError:
            raise LookupError(f"checkpoint id must be a whole number, not {raw!r}") from None
        checkpoint = Checkpoint.objects.select_related("run").filter(pk=pk).first()
        if checkpoint is None:
            raise LookupError(f"no checkpoint with id {pk}")
        return checkpoint

    def _fail(self, message: str, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps({"error": message}))
        raise CommandError(message, returncode=1)

    def _print_table(self, comparison: Comparison) -> None:
        s = comparison.summary
        self.stdout.write(f"A: {comparison.a}\nB: {comparison.b}")
        self.stdout.write(
            f"{s['variables']} variables, {s['compared']} compared, {s['changed']} changed, "
            f"{s['only_a']} only in A, {s['only_b']} only in B, {s['shape_changed']} shape changed"
        )
        width = max([len(v["name"]) for v in comparison.variables] + [8])
        self.stdout.write(f"{'variable':<{width}}  {'relative':>12}  {'l2_diff':>12}  {'cosine':>10}  note")
        for row in comparison.rows():
            cells = [_fmt(row["relative_change"]), _fmt(row["l2_diff"]), _fmt(row["cosine"])]
            self.stdout.write(
                f"{row['name']:<{width}}  {cells[0]:>12}  {cells[1]:>12}  {cells[2]:>10}  {row.get('note') or ''}"
            )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
