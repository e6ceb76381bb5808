"""Pieces every feature's views share."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest

from dashboard import access, jobs
from dashboard.models import Job


def start_job(request: HttpRequest, kind: str, **kwargs) -> Job | None:
    """Start a job for the user; on a Redis outage say so plainly (the job starts later).

    Routes check their own permission first; this is the check cancel and retry share too, so a
    route that forgot one still cannot start a kind its user may not start.
    """
    access.require_job_permission(request.user, kind)
    try:
        return jobs.start(kind, user=request.user, **kwargs)
    except jobs.QueueUnavailable:
        messages.warning(
            request,
            "The job queue is unavailable right now. The job is recorded and will start "
            "when the queue is reachable again.",
        )
        return None
