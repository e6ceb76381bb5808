"""Comparing: two checkpoints variable by variable, and a run's checkpoints step over step.

Both read checkpoints through TensorFlow (the engine imports it lazily): they run in a worker or
a management command, never in a view. The jobs helpers here are plain queries, safe anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.db import models
from django.utils import timezone

from .models import Checkpoint, Comparison, Job, Run
from .roots import run_location
from .staging import readable_many

if TYPE_CHECKING:
    Progress = Callable[[float, str], object]


def compute(
    a: Checkpoint, b: Checkpoint, *, job: Job | None = None, on_progress: Progress | None = None
) -> Comparison:
    """Compare A with B now and store the result: the one code path of the compare job and command.

    Reads both checkpoints through TensorFlow (the engine imports it lazily), so call this from a
    worker or a management command, never from a view. Raises ``Comparison.CannotCompare`` with
    a message fit for users; an exception raised by ``on_progress`` (a cancel) propagates as is.
    """
    from persistence import compare as engine

    for side in (a, b):
        if not side.on_disk:
            raise Comparison.CannotCompare(f"checkpoint #{side.pk} ({side}) is {side.status}: its files are gone")
    # Recorded before reading: a rescan that changes a fingerprint meanwhile makes this stale.
    fingerprint_a, fingerprint_b = a.fingerprint, b.fingerprint
    started = timezone.now()
    with contextlib.ExitStack() as stack:
        try:
            # The root list may have changed since; a side in a bucket is staged locally.
            local = stack.enter_context(readable_many([a, b], action="Comparing checkpoints"))
        except ValueError as exc:
            raise Comparison.CannotCompare(str(exc)) from None
        try:
            result = engine.compare_checkpoints(local[0].path, local[1].path, on_progress=on_progress)
        except Exception as exc:
            message = read_error_message(exc)
            if message is None:
                raise
            raise Comparison.CannotCompare(local[1].shown(local[0].shown(message))) from exc
    summary = {
        **result.summary,
        "step_a": a.step,
        "step_b": b.step,
        "step_delta": b.step - a.step if a.step is not None and b.step is not None else None,
        "size_a": a.size_bytes,
        "size_b": b.size_bytes,
        "size_delta": b.size_bytes - a.size_bytes,
        "saved_at_a": a.saved_at.isoformat(),
        "saved_at_b": b.saved_at.isoformat(),
        "seconds_delta": (b.saved_at - a.saved_at).total_seconds(),
        "elapsed_seconds": round((timezone.now() - started).total_seconds(), 3),
    }
    comparison, _ = Comparison.objects.update_or_create(
        a=a,
        b=b,
        defaults={
            "job": job,
            "fingerprint_a": fingerprint_a,
            "fingerprint_b": fingerprint_b,
            "summary": summary,
            "variables": [v.to_dict() for v in result.variables],
            "metrics": engine.metric_deltas(a.metrics or {}, b.metrics or {}),
            "created_at": timezone.now(),
        },
    )
    return comparison


def read_error_message(exc: BaseException) -> str | None:
    """A user-facing message for a checkpoint that could not be read, or None for other errors."""
    from persistence.errors import CheckpointReadError

    # The engine raises this for TensorFlow's read errors too (CorruptCheckpoint for bad bytes).
    if isinstance(exc, CheckpointReadError):
        return str(exc)
    return None


def step_over_step_checkpoints(run: Run, last: int) -> list[Checkpoint]:
    """The newest ``last`` readable checkpoints, oldest first: the columns of the heatmap.

    Incomplete and corrupt checkpoints are left out: one unreadable file would fail the chain.
    """
    newest = run.checkpoints.filter(status__in=[Checkpoint.PRESENT, Checkpoint.VERIFIED]).order_by(
        models.F("step").desc(nulls_last=True), "-saved_at"
    )
    return list(newest.only("id", "run_id", "prefix", "step", "fingerprint", "saved_at", "variables")[:last])[::-1]


def step_over_step(run: Run, *, last: int = 50, on_progress: Progress | None = None) -> dict:
    """Relative change of every variable between consecutive checkpoints (imports TensorFlow).

    The result is what a finished step-over-step job stores as its ``result``.
    Raises ``Comparison.CannotCompare`` when there is nothing to compare or a file is unreadable.
    """
    from persistence import compare as engine

    try:
        run_location(run.directory)
    except ValueError as exc:
        raise Comparison.CannotCompare(f"run {run.name}: {exc}") from None
    chosen = step_over_step_checkpoints(run, last)
    for c in chosen:
        c.run = run  # for c.path without one query per checkpoint
    if len(chosen) < 2:
        raise Comparison.CannotCompare("Step over step needs at least two readable checkpoints on disk.")
    with contextlib.ExitStack() as stack:
        try:
            local = stack.enter_context(readable_many(chosen, action="Comparing checkpoints"))
        except ValueError as exc:
            raise Comparison.CannotCompare(str(exc)) from None
        try:
            data = engine.step_over_step([c.path for c in local], on_progress=on_progress)
        except Exception as exc:
            message = read_error_message(exc)
            if message is None:
                raise
            for side in local:
                message = side.shown(message)
            raise Comparison.CannotCompare(message) from exc
    # The engine leaves both the value and the note empty for a pair whose numbers are not
    # finite and for a variable absent from both checkpoints; the heatmap must tell them apart.
    names = [{v["name"] for v in c.variables} for c in chosen]
    for name, values in data["relative_change"].items():
        notes = data["notes"][name]
        for i, value in enumerate(values):
            if value is None and notes[i] is None:
                both = name in names[i] and name in names[i + 1]
                notes[i] = Comparison.NOTE_NOT_FINITE if both else Comparison.NOTE_ABSENT
    return {
        "mode": "steps",
        "last": last,
        "checkpoints": [
            {"id": c.pk, "step": c.step, "prefix": c.prefix, "fingerprint": c.fingerprint} for c in chosen
        ],
        "variables": data["variables"],
        "relative_change": data["relative_change"],
        "l2_diff": data["l2_diff"],
        "notes": data["notes"],
    }


def step_over_step_jobs(run: Run) -> models.QuerySet[Job]:
    """Step-over-step jobs of this run (compare jobs with ``mode: steps``), newest first."""
    return run.jobs.filter(kind=Job.COMPARE, params__mode="steps").order_by("-created_at")


def latest_step_over_step(run: Run) -> Job | None:
    """The newest finished step-over-step job: its ``result`` holds the heatmap."""
    return step_over_step_jobs(run).filter(status=Job.FINISHED).order_by("-ended_at").first()
