"""One shape for every job: one entry point RQ runs, one registry of bodies, the same lifecycle inline."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils.module_loading import import_string

from dashboard import jobs, retention
from dashboard.jobs import registry
from dashboard.models import Job, Run
from tests.dashboard.test_prune_plan import fake_run, on_disk

pytestmark = pytest.mark.django_db


def test_every_kind_has_a_body_and_every_mode_its_own():
    for kind, _ in Job.KIND_CHOICES:
        assert callable(jobs.body_for(Job(kind=kind)))
    assert jobs.body_for(Job(kind=Job.SAVE, params={"mode": jobs.RESAVE_MODE})) is registry.resave_job
    assert jobs.body_for(Job(kind=Job.RESTORE, params={"mode": jobs.PARTIAL_RESTORE_MODE})) is registry.partial_restore_job
    assert jobs.body_for(Job(kind=Job.COMPARE, params={"mode": jobs.STEP_OVER_STEP_MODE})) is registry.step_over_step_job


def test_a_mode_the_kind_does_not_have_runs_its_plain_body():
    assert jobs.body_for(Job(kind=Job.SAVE, params={"mode": "steps"})) is registry.save_job
    assert jobs.body_for(Job(kind=Job.COMPARE, params={"mode": ["steps"]})) is registry.compare_job


def test_every_row_is_enqueued_as_the_one_entry_point():
    job = Job.objects.create(kind=Job.SCAN)
    queue = jobs.get_queue()
    try:
        jobs.enqueue(job, queue=queue)
        rq_job = queue.fetch_job(job.rq_job_id)
        assert rq_job.func_name == jobs.RUN_JOB and rq_job.args == (job.pk,)
        assert import_string(jobs.RUN_JOB) is jobs.run_job
    finally:
        queue.empty()


def test_the_periodic_functions_are_importable_by_the_path_rq_stores():
    for func in (jobs.reconcile_jobs, jobs.scan_all_runs):
        assert import_string(f"{func.__module__}.{func.__qualname__}") is func


def test_run_inline_records_the_outcome_like_a_worker(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3], max_to_keep=1)
    plan = retention.plan_retention(run)
    job = Job.objects.create(kind=Job.PRUNE, run=run, params={"fingerprint": plan.fingerprint})

    result = jobs.run_inline(job)

    job.refresh_from_db()
    assert job.status == Job.FINISHED and job.progress == 100 and job.started_at and job.ended_at
    assert job.result == result and result["checkpoints_deleted"] == 2


def test_run_inline_records_a_refusal_and_raises_it(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3], max_to_keep=1)
    before = on_disk(run.directory)
    job = Job.objects.create(kind=Job.PRUNE, run=run, params={"fingerprint": "not-this-plan"})

    with pytest.raises(Run.PruneRefused):
        jobs.run_inline(job)

    job.refresh_from_db()
    assert job.status == Job.FAILED and job.error.startswith("PruneRefused: The run changed since the preview")
    assert job.traceback and job.ended_at and on_disk(run.directory) == before


def test_run_inline_runs_only_a_queued_row(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [1, 2], max_to_keep=1)
    job = Job.objects.create(kind=Job.PRUNE, run=run, status=Job.CANCELED)
    with pytest.raises(registry.NotQueued):
        jobs.run_inline(job)
    assert Job.objects.get(pk=job.pk).status == Job.CANCELED


def test_the_models_never_import_the_jobs():
    # Not even inside a method: the jobs are built on the models, never the other way round.
    import dashboard.models

    root = Path(dashboard.models.__file__)
    sources = sorted(root.parent.glob("*.py")) if root.name == "__init__.py" else [root]
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module or ''}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not [n for n in names if "jobs" in n.split(".")], f"{source.name}:{node.lineno} imports {names}"


def test_importing_the_jobs_loads_no_tensorflow():
    code = (
        "import sys, django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'dashboard.settings'); django.setup();"
        "import dashboard.jobs;"
        "assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'tensorflow' in m)[:5]"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
