"""The change stamp of a run: what the run page polls to know it must refresh (see ``views/live.py``)."""

from __future__ import annotations

import datetime as dt
import hashlib

from .models import Run, RunSummary

RECENT_JOBS = 5


def change_stamp(run: Run, last_recorded: dt.datetime | None, jobs: list[tuple[int, str]]) -> str:
    """An opaque token that changes whenever what the run page shows may have changed.

    From what the page reads anyway (the run, its cached summary's newest ``recorded_at``, its
    recent jobs), so that rendering the page costs no query for it.
    """
    parts = [
        run.last_scanned_at.isoformat() if run.last_scanned_at else "",
        last_recorded.isoformat() if last_recorded else "",
        ",".join(f"{pk}:{status}" for pk, status in sorted(jobs)),
    ]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


def current_stamp(run: Run) -> str:
    last_recorded = RunSummary.objects.filter(run=run).values_list("last_recorded", flat=True).first()
    jobs = list(run.jobs.order_by("-created_at").values_list("id", "status")[:RECENT_JOBS])
    return change_stamp(run, last_recorded, jobs)
