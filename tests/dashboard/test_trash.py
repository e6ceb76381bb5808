"""Prunes into the trash (``TRASH_DAYS`` > 0) on real TensorFlow runs: the files go to ``.trash/``,
the rows become pruned, a maintainer restores them (never over a file saved since) and a scan
marks them present again; old batches are emptied and audited; who may restore."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import reverse

from dashboard import locks, pruning, retention, scanning
from dashboard import trash as dashboard_trash
from dashboard.models import AuditEvent, Checkpoint, Job, Run
from dashboard.roots import untracked_checkpoint_directories
from persistence import trash
from persistence.statefile import read_state_file
from tests.live import LiveWorker
from tests.persistence.test_retention import save_tf1_run

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]

DAY = 86400.0
STEPS = [100, 200, 300, 400, 500, 600]
BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved") / "run"
    directory.mkdir()
    save_tf1_run(str(directory), STEPS)
    return directory


@pytest.fixture
def run(saved_run, checkpoint_root, settings) -> Run:
    """A scanned run of six real TF1 checkpoints whose policy keeps the newest three; trash on."""
    settings.TRASH_DAYS = 7
    shutil.copytree(saved_run, checkpoint_root / "r")
    run = Run.objects.create(name="r", directory=str(checkpoint_root / "r"), max_to_keep=3, min_age_seconds=0)
    scanning.scan(run)
    assert run.checkpoints.filter(status=Checkpoint.PRESENT).count() == len(STEPS)
    return run


def statuses(run: Run) -> dict[int, str]:
    return dict(run.checkpoints.values_list("step", "status"))


def prune_inline(run: Run) -> dict:
    out = io.StringIO()
    call_command("prune", run.name, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_a_prune_moves_the_files_to_the_trash_and_a_restore_brings_them_back_present(client, maintainer, run):
    directory = run.directory
    plan = retention.plan_retention(run)
    client.force_login(maintainer)
    preview = client.get(reverse("run-prune", args=["r"])).content.decode()
    assert "move to the trash" in preview and "emptied after 7 days" in preview

    client.post(reverse("run-prune-now", args=["r"]), {"fingerprint": plan.fingerprint})
    job = Job.objects.get(kind=Job.PRUNE)
    with LiveWorker(burst=True, TRASH_DAYS="7") as worker:
        assert worker.wait(180) == 0
    job.refresh_from_db()
    assert job.status == Job.FINISHED, job.error

    batch = f"prune-{job.pk}"
    assert job.result["trash_batch"] == batch
    assert sorted(os.listdir(Path(directory, ".trash", batch))) == plan.files_to_delete
    assert not set(os.listdir(directory)) & set(plan.files_to_delete)
    assert {s for s, status in statuses(run).items() if status == "pruned"} == {100, 200, 300}
    event = AuditEvent.objects.get(action="prune")
    assert "moved to the trash (.trash/" in event.summary and event.bytes_freed == 0
    assert event.details["trash"] == {"batch": batch, "bytes": plan.bytes_freed}

    page = client.get(job.get_absolute_url()).content.decode()
    restore_url = reverse("run-trash-restore", args=["r", batch])
    assert restore_url in page
    listed = client.get(reverse("run-prune", args=["r"])).content.decode()
    assert restore_url in listed and f"job #{job.pk}" in listed

    response = client.post(restore_url, follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    assert any("Restored 6 files" in m and "state file was not rewritten" in m for m in shown), shown
    assert not os.path.exists(Path(directory, ".trash", batch))
    assert set(plan.files_to_delete) <= set(os.listdir(directory))
    # The rows change only when the scan the restore started has run.
    assert {s for s, status in statuses(run).items() if status == "pruned"} == {100, 200, 300}
    scan_job = Job.objects.get(kind=Job.SCAN)
    with LiveWorker(burst=True, TRASH_DAYS="7") as worker:
        assert worker.wait(180) == 0
    scan_job.refresh_from_db()
    assert scan_job.status == Job.FINISHED, scan_job.error
    assert set(statuses(run).values()) == {"present"}
    assert read_state_file(directory).latest == "model.ckpt-600"  # not rewritten by the restore
    restored = AuditEvent.objects.get(action="trash-restore")
    assert restored.actor == maintainer and sorted(restored.details["restored"]) == plan.files_to_delete

    page = client.get(job.get_absolute_url()).content.decode()
    assert restore_url not in page and "is gone" in page


def test_a_restore_never_overwrites_a_checkpoint_saved_again_and_says_so(client, maintainer, run):
    prune_inline(run)
    job = Job.objects.get(kind=Job.PRUNE)
    again = Path(run.directory, "model.ckpt-200.index")
    again.write_bytes(b"saved again by a trainer")
    client.force_login(maintainer)

    response = client.post(reverse("run-trash-restore", args=["r", f"prune-{job.pk}"]), follow=True)

    shown = " ".join(str(m) for m in response.context["messages"])
    assert "model.ckpt-200.index exists in the run directory again; not overwritten" in shown
    assert again.read_bytes() == b"saved again by a trainer"
    assert not Path(run.directory, "model.ckpt-200.data-00000-of-00001").exists()
    assert sorted(os.listdir(Path(run.directory, ".trash", f"prune-{job.pk}"))) == [
        "model.ckpt-200.data-00000-of-00001", "model.ckpt-200.index"]
    assert Path(run.directory, "model.ckpt-300.index").exists()
    # The batch stays restorable (what is left of it) from the prune page.
    assert dashboard_trash.has_batch(run, f"prune-{job.pk}")


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_viewers_and_operators_cannot_restore(client, run, role, request):
    prune_inline(run)
    batch = f"prune-{Job.objects.get(kind=Job.PRUNE).pk}"
    before = sorted(os.listdir(Path(run.directory, ".trash", batch)))
    client.force_login(request.getfixturevalue(role))
    assert client.post(reverse("run-trash-restore", args=["r", batch])).status_code == 403
    assert client.get(reverse("run-trash-restore", args=["r", batch])).status_code == 405
    assert sorted(os.listdir(Path(run.directory, ".trash", batch))) == before
    page = client.get(reverse("run-prune", args=["r"])).content.decode()
    assert batch in page and reverse("run-trash-restore", args=["r", batch]) not in page
    assert not AuditEvent.objects.filter(action="trash-restore").exists()


def test_a_restore_waits_for_a_prune_holding_the_run(client, maintainer, run):
    prune_inline(run)
    batch = f"prune-{Job.objects.get(kind=Job.PRUNE).pk}"
    client.force_login(maintainer)
    with locks.run_lock(run):
        response = client.post(reverse("run-trash-restore", args=["r", batch]), follow=True)
    assert "try again when it has finished" in " ".join(str(m) for m in response.context["messages"])
    assert dashboard_trash.has_batch(run, batch)


def test_a_scan_never_counts_trashed_files_and_pruned_rows_stay_pruned(run):
    prune_inline(run)
    counts = scanning.scan(run, full=True)
    assert counts["created"] == 0 and counts["missing"] == 0
    assert statuses(run) == {100: "pruned", 200: "pruned", 300: "pruned", 400: "present", 500: "present",
                             600: "present"}
    # Nor is the trash offered as a directory of checkpoints to track.
    found, _ = untracked_checkpoint_directories([run.directory])
    assert found == []


def test_trash_batches_older_than_trash_days_are_emptied_and_audited(run):
    report = prune_inline(run)
    batch = report["execution"]["trash_batch"]
    kept_files = sorted(n for n in os.listdir(run.directory) if n != ".trash")
    trashed_bytes = sum(f.stat().st_size for f in Path(run.directory, ".trash", batch).iterdir())

    early = dashboard_trash.empty_all_runs(now=time.time() + 6 * DAY)
    assert early == {"r": {"emptied": [], "files": 0, "bytes_freed": 0, "failed": {}, "kept": [batch]}}
    assert dashboard_trash.has_batch(run, batch)

    late = dashboard_trash.empty_all_runs(now=time.time() + 8 * DAY)
    assert late["r"]["emptied"] == [batch] and late["r"]["bytes_freed"] == trashed_bytes
    assert os.listdir(Path(run.directory, ".trash")) == []
    assert sorted(n for n in os.listdir(run.directory) if n != ".trash") == kept_files
    event = AuditEvent.objects.get(action="trash-empty")
    assert event.bytes_freed == trashed_bytes and event.run == run and event.details["emptied"] == [batch]
    assert {s for s, status in statuses(run).items() if status == "pruned"} == {100, 200, 300}


def test_empty_trash_command_empties_what_is_old_enough(run):
    prune_inline(run)
    out = io.StringIO()
    call_command("empty_trash", stdout=out)
    assert "Emptied 0 trash batches" in out.getvalue()
    call_command("empty_trash", "r", "--days", "0", stdout=out)
    assert "Emptied 1 trash batch," in out.getvalue()
    assert trash.list_batches(run.directory) == []


def test_with_trash_days_zero_a_prune_deletes_at_once(run, settings):
    settings.TRASH_DAYS = 0
    report = prune_inline(run)
    assert report["execution"]["trash_batch"] is None
    assert not Path(run.directory, ".trash").exists()
    assert AuditEvent.objects.get(action="prune").bytes_freed == report["bytes_freed"] > 0


def test_a_retried_prune_puts_the_rest_in_the_first_attempts_batch(run):
    plan = retention.plan_retention(run)
    first = Job.objects.create(kind=Job.PRUNE, run=run, status=Job.FAILED, result={"plan": plan.to_dict()})
    # The killed attempt had moved the first index before dying.
    trash.move_to_trash(run.directory, [plan.files_to_delete[0]], f"prune-{first.pk}")
    retry = Job.objects.create(kind=Job.PRUNE, run=run, status=Job.RUNNING, retry_of=first)
    result = pruning.prune(run, retry)
    assert result["trash_batch"] == f"prune-{first.pk}"
    assert sorted(os.listdir(Path(run.directory, ".trash", f"prune-{first.pk}"))) == plan.files_to_delete


def _settings_process(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", **env})


def test_the_scheduler_empties_the_trash_only_when_trash_days_is_set(tmp_path):
    code = ("import django; django.setup(); import dashboard.cron; from rq import cron; "
            "print(sorted(j['func'].__name__ for j in cron._job_data_registry))")
    on = _settings_process({"TRASH_DAYS": "7", "VAR_DIR": str(tmp_path)}, code)
    off = _settings_process({"TRASH_DAYS": "0", "VAR_DIR": str(tmp_path)}, code)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert "empty_expired" in on.stdout and "empty_expired" not in off.stdout


@pytest.mark.parametrize("bad", ["-1", "seven", "1.5", "nan"])
def test_a_bad_trash_days_stops_the_start(tmp_path, bad):
    done = _settings_process({"TRASH_DAYS": bad, "VAR_DIR": str(tmp_path)},
                             "import django; from django.conf import settings; django.setup(); print(settings.TRASH_DAYS)")
    assert done.returncode != 0 and "ImproperlyConfigured" in done.stderr and "TRASH_DAYS" in done.stderr


def test_a_trashed_prune_tells_webhooks_its_batch_and_frees_nothing_yet(run):
    from dashboard import webhooks
    from dashboard.models import WebhookDelivery

    webhooks.create_endpoint(url="https://93.184.215.14/hooks/checkpoints", events=[webhooks.RETENTION_PRUNED])
    plan = retention.plan_retention(run)
    outcome = pruning.apply_plan(run, plan)
    [row] = WebhookDelivery.objects.all()
    assert row.payload["prune"]["trash_batch"] == outcome["trash_batch"] and outcome["trash_batch"]
    assert row.payload["prune"]["bytes_freed"] == 0
    assert sorted(row.payload["prune"]["deleted"]) == sorted(plan.deleted_prefixes)


def test_one_run_whose_trash_cannot_be_read_does_not_stop_the_others(run, checkpoint_root):
    prune_inline(run)
    broken = Run.objects.create(name="gone", directory=str(checkpoint_root / "gone"))
    summary = dashboard_trash.empty_all_runs(days=0)
    assert "error" in summary[broken.name]
    assert summary["r"]["emptied"] and trash.list_batches(run.directory) == []
