"""Comparing checkpoints as jobs: a pair variable by variable, or step over step through a run."""

from __future__ import annotations

from collections.abc import Callable

from dashboard import comparing
from dashboard.models import Checkpoint, Comparison, Job, Run

from .context import JobCanceled, JobContext


def _compare_progress(ctx: JobContext) -> Callable[[int, int, str], None]:
    def on_progress(done: int, total: int, name: str) -> None:
        if ctx.should_stop():
            raise JobCanceled
        ctx.progress(100 * done / max(total, 1), f"{done} of {total} variables · {name}", force=done == total)

    return on_progress


def compare_job(job: Job, ctx: JobContext) -> dict:
    """Compare checkpoints ``params["a"]`` and ``params["b"]`` and store the ``Comparison``."""
    sides = []
    for key in ("a", "b"):
        checkpoint = Checkpoint.objects.select_related("run").filter(pk=job.params.get(key)).first()
        if checkpoint is None:
            raise Comparison.CannotCompare(f"checkpoint #{job.params.get(key)} no longer exists")
        sides.append(checkpoint)
    a, b = sides
    ctx.progress(1, f"Reading {a.prefix} and {b.prefix}", force=True)
    comparison = comparing.compute(a, b, job=job, on_progress=_compare_progress(ctx))
    summary = comparison.summary
    return {
        "comparison": comparison.pk,
        "a": a.pk,
        "b": b.pk,
        **{k: summary.get(k) for k in ("variables", "changed", "max_relative_change", "max_relative_change_variable")},
    }


def step_over_step_job(job: Job, ctx: JobContext) -> dict:
    """Relative change per variable between a run's consecutive checkpoints; the heatmap is the result."""
    run = Run.objects.get(pk=job.run_id)
    last = int(job.params.get("last", 50))
    ctx.progress(1, f"Reading the newest {last} checkpoints of {run.name}", force=True)
    return comparing.step_over_step(run, last=last, on_progress=_compare_progress(ctx))
