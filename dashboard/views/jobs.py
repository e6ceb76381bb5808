"""The jobs list, a job's page, the progress partial that htmx polls, and cancel / retry."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dashboard import access, jobs, trash
from dashboard.models import Job, Run
from dashboard.views.paging import INT, TIME, Order, paginate

JOBS_PAGE_SIZE = 50
NEWEST_FIRST = Order("-created", ("created_at", "id"), (TIME, INT), descending=True)


def job_list(request: HttpRequest) -> HttpResponse:
    access.require(request, "dashboard.view_job")
    qs = Job.objects.select_related("run", "requested_by").defer("log", "traceback", "result", "params")
    filters = {k: request.GET.get(k, "").strip() for k in ("kind", "status", "run")}
    if filters["kind"]:
        qs = qs.filter(kind=filters["kind"])
    if filters["status"]:
        qs = qs.filter(status=filters["status"])
    if filters["run"]:
        # The run's id as a scalar subquery, not a join: joined, PostgreSQL sorts all of the run's
        # jobs instead of reading the page from the (run, created_at, id) index.
        qs = qs.filter(run=Subquery(Run.objects.filter(name=filters["run"]).values("pk")[:1]))
    page = paginate(qs, NEWEST_FIRST, request.GET, JOBS_PAGE_SIZE, total=qs.count)
    return render(
        request,
        "dashboard/job_list.html",
        {
            "page": page, "filters": filters, "kinds": Job.KIND_CHOICES, "statuses": Job.STATUS_CHOICES,
            "run_names": list(Run.objects.order_by("name").values_list("name", flat=True)[:500]),
        },
    )


def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access.require(request, "dashboard.view_job")
    jobs_ = Job.objects.select_related("run", "checkpoint", "requested_by", "retry_of")
    # A traceback shows paths, code and sometimes values from the worker's machine: the people who
    # start and fix jobs need it, viewers get the error message alone.
    show_traceback = request.user.has_perm(access.OPERATE)
    if not show_traceback:
        jobs_ = jobs_.defer("traceback")
    job = get_object_or_404(jobs_, pk=pk)
    retries = list(job.retries.order_by("pk"))
    may_handle = access.may_handle_job(request.user, job.kind)
    batch = (job.result or {}).get("trash_batch") if job.kind == Job.PRUNE and job.run else None
    in_trash = bool(batch) and trash.has_batch(job.run, batch)
    return render(
        request,
        "dashboard/job_detail.html",
        {
            "job": job, "retries": retries, "show_traceback": show_traceback,
            "may_cancel": may_handle and job.can_cancel,
            # A job is retried once; later attempts go through its newest retry.
            "may_retry": may_handle and job.can_retry and not retries,
            # "Restore" is offered while the prune's trash batch still exists.
            "trash_batch": batch if in_trash else None,
            "trash_gone": bool(batch) and not in_trash,
        },
    )


def job_progress(request: HttpRequest, pk: int) -> HttpResponse:
    """The progress partial alone, polled by htmx while the job runs."""
    access.require(request, "dashboard.view_job")
    job = get_object_or_404(Job.objects.defer("log", "traceback", "result", "params"), pk=pk)
    reload_on_end = bool(request.GET.get("reload"))
    response = render(
        request, "dashboard/partials/job_progress.html",
        # compact: in the jobs list, whose row names the job already
        {"job": job, "reload_on_end": reload_on_end, "compact": bool(request.GET.get("compact"))},
    )
    if reload_on_end and job.is_ended:
        # The job page shows the result, log and error only once the job has ended: reload it.
        response["HX-Refresh"] = "true"
    return response


@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    access.require(request, "dashboard.view_job")
    job = get_object_or_404(Job, pk=pk)
    if jobs.cancel_job(job, request.user):
        messages.success(request, f"{job.kind.capitalize()} job #{job.pk} canceled.")
    else:
        messages.error(request, f"Job #{job.pk} has already ended ({job.status}); there is nothing to cancel.")
    return redirect(job)


@require_POST
def job_retry(request: HttpRequest, pk: int) -> HttpResponse:
    access.require(request, "dashboard.view_job")
    job = get_object_or_404(Job, pk=pk)
    try:
        retry = jobs.retry_job(job, request.user)
    except Job.AlreadyRetried as exc:
        messages.error(request, str(exc))
        return redirect(exc.newest)
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect(job)
    except jobs.QueueUnavailable as exc:
        messages.warning(request, exc.user_message)
        retry = exc.job
    else:
        messages.success(request, f"Retrying as job #{retry.pk}.")
    return redirect(retry)
