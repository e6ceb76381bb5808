"""The JSON shapes of runs, checkpoints, exports, jobs and webhooks as machines see them.

One shape per object, shared by the REST API's responses and the webhook bodies, so that a
pipeline that reads ``GET /api/v1/exports/7`` and one that receives ``export.verified`` for it parse
the same fields. Plain dicts of JSON types; URLs are paths (the caller knows its host).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.urls import reverse

from .models import Checkpoint, Export, Job, Run, WebhookDelivery, WebhookEndpoint


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def run_item(run: Run) -> dict[str, Any]:
    return {
        "name": run.name,
        "directory": run.directory,
        "format": run.format,
        "latest_prefix": run.latest_prefix,
        "last_scanned_at": _time(run.last_scanned_at),
        "created_at": _time(run.created_at),
        "url": run.get_absolute_url(),
    }


# The columns ``checkpoint_item`` reads: lists select exactly these (``values(*...)``).
CHECKPOINT_ITEM_COLUMNS = (
    "id", "prefix", "step", "status", "latest_in", "pinned", "size_bytes", "saved_at", "metrics", "metric_steps",
)


def checkpoint_item(checkpoint: Checkpoint) -> dict[str, Any]:
    return checkpoint_columns_item({name: getattr(checkpoint, name) for name in CHECKPOINT_ITEM_COLUMNS})


def checkpoint_columns_item(columns: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint_item`` from a row's ``CHECKPOINT_ITEM_COLUMNS``, for lists of thousands: building
    a model instance per row cost more than the query and the JSON together."""
    return {
        "id": columns["id"],
        "prefix": columns["prefix"],
        "step": columns["step"],
        "status": columns["status"],
        "is_latest": bool(columns["latest_in"]),
        "pinned": columns["pinned"],
        "size_bytes": columns["size_bytes"],
        "saved_at": _time(columns["saved_at"]),
        "metrics": columns["metrics"] or {},
        # Event-file metrics: the step each value was logged at (its own, or earlier in its interval).
        "metric_steps": columns["metric_steps"] or {},
    }


def checkpoint_detail(checkpoint: Checkpoint) -> dict[str, Any]:
    """``checkpoint_item`` plus its files and variables (the run is loaded for its name)."""
    return {
        **checkpoint_item(checkpoint),
        "run": checkpoint.run.name,
        "files": [{"name": f["name"], "size": f["size"]} for f in checkpoint.files],
        "variables": [
            {"name": v["name"], "shape": v["shape"], "dtype": v["dtype"], "bytes": v.get("bytes")}
            for v in checkpoint.variables
        ],
        "problems": checkpoint.problems,
    }


def export_item(export: Export) -> dict[str, Any]:
    """An export; ``export.checkpoint`` and its run are read (select_related them for lists)."""
    checkpoint = export.checkpoint
    return {
        "id": export.pk,
        "run": checkpoint.run.name,
        "step": checkpoint.step,
        "checkpoint_id": checkpoint.pk,
        "kind": export.kind,
        "outputs": export.outputs,
        "sha256": export.sha256,
        "size_bytes": export.size_bytes,
        "verified": export.verified,
        "max_abs_diff": export.max_abs_diff,
        "created_at": _time(export.created_at),
        "download_url": f"/api/v1/exports/{export.pk}/download",
    }


def job_item(job: Job) -> dict[str, Any]:
    return {
        "id": job.pk,
        "kind": job.kind,
        "status": job.status,
        "progress": job.progress,
        "message": job.message,
        "result": job.result or {},
        "error": job.error,
        "run": job.run.name if job.run_id else None,
        "checkpoint_id": job.checkpoint_id,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "ended_at": _time(job.ended_at),
        "url": reverse("job", args=[job.pk]),
    }


def job_reference(job: Job) -> dict[str, Any]:
    """What a request that started a job answers: ``{"job": {id, kind, status, url}}``; ``url`` is
    the API's own address for polling it."""
    return {"job": {"id": job.pk, "kind": job.kind, "status": job.status, "url": f"/api/v1/jobs/{job.pk}"}}


def webhook_endpoint_item(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint without its secret (which is shown once, when it is set)."""
    return {
        "id": endpoint.pk,
        "url": endpoint.url,
        "events": list(endpoint.events),
        "description": endpoint.description,
        "active": endpoint.active,
        "secret_hint": endpoint.secret_hint,
        "created_at": _time(endpoint.created_at),
    }


def webhook_delivery_item(delivery: WebhookDelivery) -> dict[str, Any]:
    """A delivery with every attempt (``at``, ``status``, ``duration_ms``, ``excerpt``, ``error``)."""
    return {
        "id": delivery.pk,
        "endpoint_id": delivery.endpoint_id,
        "event": delivery.event,
        "event_id": delivery.event_id,
        "state": delivery.state,
        "attempts": list(delivery.attempts),
        "next_attempt_at": _time(delivery.next_attempt_at),
        "created_at": _time(delivery.created_at),
        "delivered_at": _time(delivery.delivered_at),
        "redelivery_of": delivery.redelivery_of_id,
        "payload": delivery.payload,
    }
