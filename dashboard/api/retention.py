"""Retention: preview a prune (the same rows as ``manage.py prune --json``) and execute it."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Body, Header, Router

from dashboard import access, pruning, retention
from dashboard.models import Job, Run
from dashboard.representations import job_reference

from . import idempotency
from .problems import ApiProblem
from .schemas import JobStarted, PolicyIn, PruneIn, PrunePreview
from .starting import start_job

router = Router(tags=["retention"])


def _plan(run: Run, policy: PolicyIn | None):
    overrides = policy.model_dump(exclude_none=True) if policy else {}
    try:
        facts = retention.retention_facts(run)
        return overrides, facts, retention.plan_retention(run, policy=retention.retention_policy(run, **overrides),
                                                          facts=facts)
    except ValueError as exc:
        raise ApiProblem(400, f"policy: {exc}", kind="validation", title="Invalid request",
                         errors=[{"field": "policy", "message": str(exc)}]) from None


@router.post("/runs/{name}/prune-preview", response=PrunePreview,
             summary="What a prune would delete and keep, and why (deletes nothing)")
def prune_preview(request: HttpRequest, name: str, body: PolicyIn = Body(default=None)):
    """Without a body the run's own policy; with one, those rules replace the run's for this
    preview. Send the `fingerprint` to `POST /runs/{name}/prune` to execute exactly this plan."""
    run = access.get_run_for_user(request, name)
    _, facts, plan = _plan(run, body)
    return retention.plan_report(run, plan, facts)


@router.post("/runs/{name}/prune", response={202: JobStarted},
             summary="Execute the previewed plan (maintainer); 409 if the run changed since")
def prune(request: HttpRequest, name: str, body: PruneIn,
          idempotency_key: str | None = Header(None, alias=idempotency.HEADER,
                                               description=idempotency.HEADER_DESCRIPTION)):
    run = access.get_run_for_user(request, name, access.MAINTAIN)

    def start() -> tuple[int, dict]:
        running = pruning.running_prune(run)
        if running is not None:
            raise ApiProblem(409, f"A prune of this run is already running (job #{running.pk}).",
                             kind="prune-running", job=job_reference(running)["job"])
        overrides, _, plan = _plan(run, body.policy)
        if plan.fingerprint != body.fingerprint:
            raise ApiProblem(409, "The run changed since the preview (or the policy differs): preview again.",
                             kind="plan-changed", title="Plan changed")
        if not plan.files_to_delete:
            raise ApiProblem(409, "This plan deletes nothing.", kind="nothing-to-prune", title="Nothing to prune")
        # The job plans again and refuses unless it arrives at this fingerprint.
        job = start_job(request, Job.PRUNE, run=run,
                        params={"fingerprint": plan.fingerprint, "overrides": overrides, "source": "api"})
        return 202, job_reference(job)

    return idempotency.once(request, idempotency_key, start)
