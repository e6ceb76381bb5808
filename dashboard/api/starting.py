"""What the endpoints that start jobs share: the permission, the queue outage, form errors."""

from __future__ import annotations

from django import forms
from django.http import HttpRequest
from django.utils import timezone

from dashboard import access, jobs
from dashboard.models import Job

from .problems import ApiProblem

QUEUE_RETRY_SECONDS = 30


def start_job(request: HttpRequest, kind: str, **kwargs) -> Job:
    """Start a job of ``kind`` for the request's user (403 unless they, and their token, may).

    When Redis is down the API answers 503 and starts nothing: the row the queue could not take is
    canceled at once, so that a client retrying later does not get two jobs (the pages instead
    keep it queued and tell the user it will start later).
    """
    access.require_job_permission(request.user, kind)
    try:
        return jobs.start(kind, user=request.user, **kwargs)
    except jobs.QueueUnavailable as exc:
        Job.objects.filter(pk=exc.job.pk, status=Job.QUEUED).update(
            status=Job.CANCELED, ended_at=timezone.now(),
            message="Not started: the job queue was unavailable when the API asked for it.",
        )
        raise ApiProblem(503, "The job queue is unavailable right now; nothing was started. Try again shortly.",
                         kind="queue-unavailable", title="Queue unavailable",
                         headers={"Retry-After": str(QUEUE_RETRY_SECONDS)}) from None


def form_problem(form: forms.Form, names: dict[str, str] | None = None) -> ApiProblem:
    """A 400 naming each invalid field (``names`` maps form fields to the API's body fields)."""
    names = names or {}
    errors = [
        {"field": names.get(field, field) if field != "__all__" else "body", "message": str(message)}
        for field, messages in form.errors.items() for message in messages
    ]
    first = errors[0] if errors else {"field": "body", "message": "Invalid request."}
    return ApiProblem(400, f"{first['field']}: {first['message']}", kind="validation", title="Invalid request",
                      errors=errors)
