"""``manage.py freeze`` and ``manage.py verify``: inline, one JSON object with --json, exit codes, no tracebacks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from django.core.management import call_command

from dashboard import scanning
from dashboard.models import Checkpoint, Export, Run
from tests.live import BASE_DIR, subprocess_env

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory):
    from persistence.training import make_demo_run

    directory = tmp_path_factory.mktemp("demo-template") / "demo"
    make_demo_run(str(directory), steps=50, save_every=25)
    return directory


@pytest.fixture
def demo(demo_template, checkpoint_root) -> Run:
    directory = checkpoint_root / "demo"
    shutil.copytree(demo_template, directory)
    run = Run.objects.create(name="demo", directory=str(directory))
    scanning.scan(run)
    return run


def run_command(*args: str) -> tuple[int, dict]:
    out = io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=io.StringIO())
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, json.loads(out.getvalue())


@pytest.mark.django_db
def test_freeze_command_prints_the_verified_export(demo, settings):
    checkpoint = demo.checkpoints.get(step=50)
    code, report = run_command("freeze", str(checkpoint.pk), "--outputs", "probs", "--json")
    assert code == 0
    export = Export.objects.get()
    assert report == {"export": {
        "id": export.pk, "kind": "frozen_pb", "path": str(settings.EXPORT_ROOT / "demo" / "50" / "probs.pb"),
        "sha256": export.sha256,
        "size_bytes": os.path.getsize(export.path), "outputs": ["probs"], "max_abs_diff": export.max_abs_diff,
        "verified": True,
    }}
    assert hashlib.sha256(open(export.path, "rb").read()).hexdigest() == export.sha256
    assert report["export"]["max_abs_diff"] <= 1e-6 and export.created_by is None

    # Freezing the same outputs again replaces the file and keeps the row (and so its download URL).
    code, again = run_command("freeze", str(checkpoint.pk), "--outputs", "probs:0", "--json")
    assert code == 0 and again["export"]["id"] == export.pk and Export.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("args, message", [
    (["--outputs", "prob"], "unknown output node(s) in the graph: 'prob' (closest: probs"),
    ([], "choose at least one output node"),
    (["--outputs", "probs", "--deny", "output/kernel"], "output/kernel"),
])
def test_freeze_command_failures_are_one_json_error_and_exit_1(demo, args, message):
    checkpoint = demo.checkpoints.get(step=50)
    code, report = run_command("freeze", str(checkpoint.pk), *args, "--json")
    assert code == 1
    assert list(report) == ["error"] and message in report["error"]
    assert not Export.objects.exists()


@pytest.mark.django_db
def test_freeze_command_without_a_meta_graph_says_so(demo):
    os.unlink(os.path.join(demo.directory, "model.ckpt-25.meta"))
    scanning.scan(demo)
    code, report = run_command("freeze", str(demo.checkpoints.get(step=50).pk), "--outputs", "probs", "--json")
    assert code == 1 and "missing meta graph" in report["error"]


@pytest.mark.django_db
def test_verify_command_reports_status_and_variables(demo):
    checkpoint = demo.checkpoints.get(step=50)
    code, report = run_command("verify", str(checkpoint.pk), "--output", "probs", "--json")
    assert code == 0
    assert report["status"] == "verified" and report["error"] is None
    assert {v["name"] for v in report["variables"]} >= {"hidden/kernel", "output/bias", "global_step"}
    assert report["restore"]["ok"] and report["restore"]["outputs"][0]["shape"] == [4, 2]
    checkpoint.refresh_from_db()
    assert checkpoint.status == Checkpoint.VERIFIED and checkpoint.verification["variables"] == report["variables"]


@pytest.mark.django_db
def test_verify_command_exits_1_for_a_corrupt_checkpoint_with_tensorflows_message(demo):
    checkpoint = demo.checkpoints.get(step=25)
    index = checkpoint.path + ".index"
    os.truncate(index, os.path.getsize(index) // 2)
    code, report = run_command("verify", str(checkpoint.pk), "--json")
    assert code == 1
    assert report["status"] == "corrupt" and report["error"]
    assert "sstable" in report["error"] or "magic" in report["error"]
    assert Checkpoint.objects.get(pk=checkpoint.pk).status == Checkpoint.CORRUPT


@pytest.mark.django_db
def test_verify_command_with_an_output_it_cannot_run_exits_1(demo):
    code, report = run_command("verify", str(demo.checkpoints.get(step=50).pk), "--output", "prob", "--json")
    assert code == 1 and report["status"] == "verified" and "closest: probs" in report["restore"]["error"]


@pytest.mark.django_db(transaction=True)
def test_commands_as_processes_print_json_errors_and_no_traceback(demo):
    checkpoint = demo.checkpoints.get(step=50)
    cases = {
        ("freeze", "999999", "--outputs", "probs"): "no checkpoint with id 999999",
        ("verify", "999999"): "no checkpoint with id 999999",
        ("freeze", str(checkpoint.pk), "--outputs", "prob"): "(closest: probs",
    }
    for args, message in cases.items():
        result = subprocess.run([sys.executable, "manage.py", *args, "--json"], cwd=BASE_DIR, env=subprocess_env(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, (args, result.stderr[-2000:])
        assert message in json.loads(result.stdout)["error"], args
        assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
