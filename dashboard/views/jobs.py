"""The jobs list, a job's page, and the progress partial that htmx polls."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from dashboard import access
from dashboard.models import Job


def job_list(request: HttpRequest) -> HttpResponse:
    access.require(request, "dashboard.view_job")
    qs = Job.objects.select_related("run", "requested_by").order_by("-created_at")
    filters = {k: request.GET.get(k, "") for k in ("kind", "status", "run")}
    if filters["kind"]:
        qs = qs.filter(kind=filters["kind"])
    if filters["status"]:
        qs = qs.filter(status=filters["status"])
    if filters["run"]:
        qs = qs.filter(run__name=filters["run"])
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "dashboard/job_list.html",
        {"page": page, "filters": filters, "kinds": Job.KIND_CHOICES, "statuses": Job.STATUS_CHOICES},
    )


def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access.require(request, "dashboard.view_job")
    job = get_object_or_404(Job.objects.select_related("run", "checkpoint", "requested_by"), pk=pk)
    return render(request, "dashboard/job_detail.html", {"job": job})


def job_progress(request: HttpRequest, pk: int) -> HttpResponse:
    """The progress partial alone, polled by htmx while the job runs."""
    access.require(request, "dashboard.view_job")
    job = get_object_or_404(Job, pk=pk)
    return render(request, "dashboard/partials/job_progress.html", {"job": job})
