"""Jobs on one checkpoint's files: verify (restore), partial restore into a recipe's graph, and freeze.

Thin: the work is ``Checkpoint.verify`` / ``partial_restore`` / ``freeze``, shared with
``manage.py verify`` and ``manage.py freeze``.
"""

from __future__ import annotations

from pathlib import Path

from dashboard import artifacts
from dashboard.models import Checkpoint, Export, Job

from .context import JobContext


def verification_summary(verification: dict) -> dict:
    """A verify job's result: the verdict without the per-variable table (that stays on the row)."""
    return {
        "status": verification["status"],
        "message": verification["message"],
        "failed_tensor": verification.get("failed_tensor"),
        "variables": len(verification.get("variables") or []),
        "bytes_read": verification.get("bytes_read", 0),
        "restore": verification.get("restore"),
        "read_error": verification.get("read_error"),
    }


def verify_job(job: Job, ctx: JobContext) -> dict:
    """Verify checkpoint ``job.checkpoint`` (``params["output"]``: a tensor to run after restoring)."""
    checkpoint = Checkpoint.objects.select_related("run", "meta_source__run").get(pk=job.checkpoint_id)
    ctx.progress(1, f"Verifying {checkpoint.prefix}", force=True)
    verification = artifacts.verify(checkpoint, output=(job.params or {}).get("output", ""), on_progress=ctx.progress)
    if "read_error" in verification:  # only there when this verify could not read the checkpoint
        verdict = f"could not read it ({verification['read_error']['message']}); status left {verification['status']}"
    else:
        verdict = verification["status"]
    ctx.progress(100, f"{checkpoint.prefix}: {verdict}", force=True)
    return verification_summary(verification)


def partial_restore_job(job: Job, ctx: JobContext) -> dict:
    """Restore ``params["variables"]`` (renamed by ``params["name_map"]``) into ``params["recipe"]``'s graph."""
    params = job.params or {}
    checkpoint = Checkpoint.objects.select_related("run").get(pk=job.checkpoint_id)
    ctx.progress(5, f"Restoring part of {checkpoint.prefix} into {params.get('recipe')}", force=True)
    return artifacts.partial_restore(checkpoint, recipe_path=params.get("recipe", ""), variables=params.get("variables"),
                                      name_map=params.get("name_map"))


def freeze_job(job: Job, ctx: JobContext) -> dict:
    """Export ``job.checkpoint`` with ``params`` kind / quantize / outputs / clear_devices / variables
    allow- and deny-list (a frozen .pb unless ``kind`` says otherwise)."""
    params = job.params or {}
    checkpoint = Checkpoint.objects.select_related("run", "meta_source__run").get(pk=job.checkpoint_id)
    ctx.progress(1, f"Freezing {checkpoint.prefix}", force=True)
    export = artifacts.freeze(
        checkpoint,
        outputs=params.get("outputs") or [],
        clear_devices=params.get("clear_devices", True),
        variables_allowlist=params.get("variables_allowlist") or None,
        variables_denylist=params.get("variables_denylist") or None,
        kind=params.get("kind", Export.FROZEN_PB),
        quantize=bool(params.get("quantize")),
        user=job.requested_by,
        on_progress=ctx.progress,
        job=job,
    )
    verdict = "verified" if export.verified else "NOT verified"
    written = Path(export.path).name
    ctx.progress(100, f"{written} written, {verdict} (max abs diff {export.max_abs_diff})", force=True)
    return {"export": export.as_json()}
