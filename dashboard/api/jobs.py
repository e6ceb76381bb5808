"""Jobs: one job's state, and cancel."""

from __future__ import annotations

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router

from dashboard import access, jobs
from dashboard.models import Job
from dashboard.representations import job_item

from .problems import ApiProblem
from .schemas import JobOut

router = Router(tags=["jobs"])

VIEW_JOB = "dashboard.view_job"


def _job(request: HttpRequest, pk: int) -> Job:
    access.require(request, VIEW_JOB)
    return get_object_or_404(Job.objects.select_related("run").defer("log", "traceback", "params"), pk=pk)


@router.get("/jobs/{id}", response=JobOut, summary="A job's status, progress, result or error")
def get_job(request: HttpRequest, id: int):
    return job_item(_job(request, id))


@router.post("/jobs/{id}/cancel", response=JobOut,
             summary="Cancel a queued or running job (the permission starting its kind needs)")
def cancel_job(request: HttpRequest, id: int):
    job = _job(request, id)
    if not jobs.cancel_job(job, request.user):
        raise ApiProblem(409, f"Job #{job.pk} has already ended ({job.status}); there is nothing to cancel.",
                         kind="job-ended")
    return job_item(job)
