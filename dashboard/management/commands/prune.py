"""Plan, and unless ``--dry-run`` execute, a prune of one run by its retention policy.

    python manage.py prune RUN_NAME [--max-to-keep N] [--keep-checkpoint-every-n-hours H]
        [--keep-every-n-steps K] [--keep-best-n B --metric NAME --mode min|max]
        [--min-age SECONDS] [--dry-run] [--json]

Flags override the run's stored policy for this invocation only. Without ``--dry-run`` the plan
is executed inline as a prune job (``jobs.run_inline``: a ``Job`` row claimed, run by the prune
body, ``pruning.prune``, and recorded exactly as a worker does): the same lock, the same checks, the
same audit event. ``--json`` prints one object::

    {"run": NAME, "plan": [{"prefix", "step", "keep", "reasons", "bytes"}], "bytes_freed": N, ...}

``plan`` lists every recorded checkpoint that is on disk; ``leftovers`` the files of pruned or
missing checkpoints still on disk (a ``.meta`` kept for later checkpoints), which count in
``bytes_freed`` when they go.
"""

from __future__ import annotations

import argparse
import json
import math

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard import jobs, retention
from dashboard.models import Job, Run


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text!r}")
    return value


class Command(BaseCommand):
    help = "Preview (--dry-run) or execute a prune of one run by its retention policy; flags override the policy."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run", metavar="RUN_NAME", help="Name of a tracked run.")
        parser.add_argument("--max-to-keep", type=_count, metavar="N", help="Keep the newest N (0 keeps all).")
        parser.add_argument("--keep-checkpoint-every-n-hours", type=_amount, metavar="H",
                            help="Also keep one every H hours among older ones (TensorFlow's rule; 0 turns it off).")
        parser.add_argument("--keep-every-n-steps", type=_count, metavar="K", help="Keep steps that are multiples of K.")
        parser.add_argument("--keep-best-n", type=_count, metavar="B", help="Keep the best B by --metric.")
        parser.add_argument("--metric", metavar="NAME", help="Metric ranking checkpoints for --keep-best-n.")
        parser.add_argument("--mode", choices=["min", "max"], help="Whether the lowest or highest --metric is best.")
        parser.add_argument("--min-age", type=_amount, metavar="SECONDS", help="Never delete younger checkpoints.")
        parser.add_argument("--dry-run", action="store_true", help="Only show the plan; delete nothing.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object to stdout.")

    def handle(self, *args, **options) -> None:
        run = Run.objects.filter(name=options["run"]).first()
        if run is None:
            known = ", ".join(Run.objects.order_by("name").values_list("name", flat=True)[:20]) or "none yet"
            raise CommandError(f"No run named {options['run']!r} (runs: {known}).")
        overrides = self._overrides(options)
        facts = retention.retention_facts(run)
        try:
            plan = retention.plan_retention(run, policy=retention.retention_policy(run, **overrides), facts=facts)
        except ValueError as exc:
            raise CommandError(f"Cannot plan a prune of {run.name}: {exc}") from None

        outcome = None
        if not options["dry_run"]:
            outcome = self._execute(run, plan, overrides)
        if options["json"]:
            self.stdout.write(json.dumps(self._report(run, plan, facts, outcome)))
        else:
            self._print(run, plan, outcome)

    @staticmethod
    def _overrides(options: dict) -> dict:
        names = {
            "max_to_keep": "max_to_keep", "keep_checkpoint_every_n_hours": "keep_checkpoint_every_n_hours",
            "keep_every_n_steps": "keep_every_n_steps", "keep_best_n": "keep_best_n", "metric": "best_metric",
            "mode": "best_mode", "min_age": "min_age_seconds",
        }
        overrides = {rule: options[flag] for flag, rule in names.items() if options.get(flag) is not None}
        if overrides.get("keep_best_n") and not (overrides.get("best_metric") or None):
            raise CommandError("--keep-best-n needs --metric NAME (and --mode min|max): the metric that ranks checkpoints.")
        return overrides

    def _execute(self, run: Run, plan, overrides: dict) -> dict:
        # A Job row like the web's prune jobs (the lock and the record live there), run here by the
        # worker's own entry point: the prune body re-plans and refuses unless it arrives at this plan.
        job = Job.objects.create(
            kind=Job.PRUNE, run=run,
            params={"fingerprint": plan.fingerprint, "overrides": overrides, "source": "manage.py prune"},
        )
        try:
            return jobs.run_inline(job)
        except (Run.PruneRefused, ValueError) as exc:  # ValueError: the engine refusing a path
            raise CommandError(f"Prune of {run.name} refused: {exc}") from None

    @staticmethod
    def _report(run: Run, plan, facts: list, outcome: dict | None) -> dict:
        report = {**retention.plan_report(run, plan, facts), "executed": outcome is not None}
        if outcome is not None:
            report["execution"] = {k: outcome.get(k) for k in (
                "checkpoints_deleted", "bytes_freed", "execution", "audit_event", "trash_batch")}
        return report

    def _print(self, run: Run, plan, outcome: dict | None) -> None:
        for d in plan.decisions:
            verdict = "keep  " if d.keep else ("delete" if d.delete_files else "stays ")
            self.stdout.write(f"{verdict} {d.prefix:<40} {'; '.join(d.reasons)}")
        done = "Deleted" if outcome is not None else "Would delete"
        batch = (outcome or {}).get("trash_batch")
        if batch:
            done = f"Moved to the trash (.trash/{batch}/)"
        self.stdout.write(
            f"{done} {plan.deleted_count} checkpoint(s) of {run.name}, {len(plan.files_to_delete)} file(s), "
            f"{plan.bytes_freed} bytes; {plan.kept_count} kept."
        )
