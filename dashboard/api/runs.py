"""Runs: list, one run, track a directory, scan."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Header, Query, Router, Status

from dashboard import access, jobs
from dashboard.forms import RegisterRunForm
from dashboard.models import Job, Run
from dashboard.representations import job_reference, run_item

from . import idempotency
from .pagination import DEFAULT_LIMIT, MAX_LIMIT, Key, Ordering, paginate
from .schemas import JobStarted, RunCreated, RunIn, RunOut, RunPage
from .starting import form_problem, start_job

router = Router(tags=["runs"])

BY_ID = Ordering("id", [Key("id")])


@router.get("/runs", response=RunPage, summary="List tracked runs (oldest first)")
def list_runs(request: HttpRequest, limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT), cursor: str | None = None):
    access.require(request, access.VIEW)
    return paginate(Run.objects.all(), BY_ID, limit, cursor, run_item)


@router.get("/runs/{name}", response=RunOut, summary="One run")
def get_run(request: HttpRequest, name: str):
    return run_item(access.get_run_for_user(request, name))


@router.post("/runs", response={201: RunCreated}, summary="Track a directory as a run (operator)")
def track_run(request: HttpRequest, body: RunIn):
    """Registers the directory (it must resolve inside a checkpoint root) and starts its first scan.
    While the job queue is unavailable the scan waits in the queue and starts once it is back."""
    access.require(request, access.OPERATE)
    access.require_job_permission(request.user, Job.SCAN)
    form = RegisterRunForm({"name": body.name, "directory": body.directory})
    if not form.is_valid():
        raise form_problem(form)
    run = form.save(commit=False)
    run.created_by = request.user
    run.save()
    try:
        job = jobs.start(Job.SCAN, run=run, user=request.user)
    except jobs.QueueUnavailable as exc:
        job = exc.job
    return Status(201, {**run_item(run), "scan_job": job_reference(job)["job"]})


@router.post("/runs/{name}/scan", response={202: JobStarted}, summary="Scan a run's directory now (operator)")
def scan_run(request: HttpRequest, name: str,
             idempotency_key: str | None = Header(None, alias=idempotency.HEADER,
                                                  description=idempotency.HEADER_DESCRIPTION)):
    run = access.get_run_for_user(request, name, access.OPERATE)
    return idempotency.once(request, idempotency_key,
                            lambda: (202, job_reference(start_job(request, Job.SCAN, run=run))))
