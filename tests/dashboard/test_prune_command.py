"""``manage.py prune``: the JSON plan, flags overriding the policy, inline execution, clear errors,
and the differential test against TensorFlow's CheckpointManager through scan → rows → plan."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard import locks, scanning
from dashboard.models import AuditEvent, Checkpoint, Job, Run
from tests.dashboard.test_prune_plan import DATA, fake_run, on_disk

pytestmark = pytest.mark.django_db


def prune_json(*args: str) -> dict:
    out = io.StringIO()
    call_command("prune", *args, "--json", stdout=out)
    return json.loads(out.getvalue())  # exactly one JSON object on stdout


def test_dry_run_json_lists_every_present_checkpoint_and_deletes_nothing(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [10, 20, 30, 40], max_to_keep=2)
    Checkpoint.objects.create(run=run, prefix="model.ckpt-5", step=5, saved_at=run.checkpoints.first().saved_at,
                              status=Checkpoint.PRUNED)  # history: not on disk, not in the plan
    before = on_disk(run.directory)

    report = prune_json("r", "--dry-run")

    assert set(report) >= {"run", "plan", "bytes_freed"} and report["run"] == "r"
    assert [set(e) for e in report["plan"]] == [{"prefix", "step", "keep", "reasons", "bytes"}] * 4
    plan = {e["prefix"]: e for e in report["plan"]}
    assert [p for p, e in plan.items() if e["keep"]] == ["model.ckpt-30", "model.ckpt-40"]
    assert plan["model.ckpt-10"]["reasons"] == ["deleted: beyond max_to_keep",
                                                "kept: .meta needed by model.ckpt-40 and 1 more"]
    assert plan["model.ckpt-40"]["reasons"] == ["kept: newest 2", "kept: latest in checkpoint"]
    sizes = {c.prefix: c.files for c in run.checkpoints.all()}
    meta = next(f["size"] for f in sizes["model.ckpt-10"] if f["name"].endswith(".meta"))
    assert plan["model.ckpt-10"]["bytes"] == sum(f["size"] for f in sizes["model.ckpt-10"]) - meta
    assert report["bytes_freed"] == sum(e["bytes"] for e in report["plan"]) > 0
    assert report["executed"] is False
    assert on_disk(run.directory) == before and not AuditEvent.objects.exists() and not Job.objects.exists()


def test_flags_override_the_stored_policy_for_this_invocation_only(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", list(range(1, 11)), max_to_keep=1, min_age_seconds=10**9)
    assert [e["prefix"] for e in prune_json("r", "--dry-run")["plan"] if e["keep"]] == [
        f"model.ckpt-{s}" for s in range(1, 11)]  # everything is "too young" for the stored policy

    report = prune_json("r", "--dry-run", "--min-age", "0", "--max-to-keep", "3", "--keep-every-n-steps", "4",
                        "--keep-best-n", "1", "--metric", "accuracy", "--mode", "max",
                        "--keep-checkpoint-every-n-hours", "0")
    kept = {e["prefix"]: e["reasons"] for e in report["plan"] if e["keep"]}
    assert set(kept) == {"model.ckpt-4", "model.ckpt-8", "model.ckpt-9", "model.ckpt-10"}
    assert kept["model.ckpt-9"] == ["kept: newest 3", "kept: best 1 by accuracy (max)"]
    run.refresh_from_db()
    assert (run.max_to_keep, run.min_age_seconds, run.keep_every_n_steps) == (1, 10**9, None)


def test_without_dry_run_it_executes_through_the_job_code_path_and_audits(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3, 4, 5])

    report = prune_json("r", "--max-to-keep", "2")

    assert report["executed"] is True and report["execution"]["checkpoints_deleted"] == 3
    assert on_disk(run.directory) == {"checkpoint", "model.ckpt-1.meta", "model.ckpt-4.index", f"model.ckpt-4{DATA}",
                                      "model.ckpt-5.index", f"model.ckpt-5{DATA}"}
    assert list(run.checkpoints.order_by("step").values_list("status", flat=True)) == ["pruned"] * 3 + ["present"] * 2
    job = Job.objects.get(kind=Job.PRUNE)
    assert job.status == Job.FINISHED and job.params["overrides"] == {"max_to_keep": 2}
    assert job.params["source"] == "manage.py prune" and job.result["plan"]["fingerprint"] == report["fingerprint"]
    event = AuditEvent.objects.get(action="prune")
    assert event.bytes_freed == report["bytes_freed"] == report["execution"]["bytes_freed"]
    assert event.details["plan"]["files_to_delete"] == job.result["plan"]["files_to_delete"]
    assert event.details["job"] == job.pk and event.actor is None

    again = prune_json("r", "--max-to-keep", "2")
    assert again["bytes_freed"] == 0 and again["execution"]["checkpoints_deleted"] == 0


def test_refuses_while_another_prune_holds_the_run(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3], max_to_keep=1)
    holder = Job.objects.create(kind=Job.PRUNE, run=run, status=Job.RUNNING, result={"holder": {"pid": os.getpid()}})
    with locks.run_lock(run), pytest.raises(CommandError, match=f"Another prune of run r is running \\(job #{holder.pk}\\)"):
        call_command("prune", "r", stdout=io.StringIO())
    assert len(on_disk(run.directory)) == 8  # untouched
    assert Job.objects.exclude(pk=holder.pk).get().status == Job.FAILED


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "No run named 'nope'"),
        (["r", "--keep-best-n", "2"], "--keep-best-n needs --metric"),
        (["r", "--max-to-keep", "-1"], "must be 0 or more"),
        (["r", "--max-to-keep", "three"], "expected a whole number"),
        (["r", "--min-age", "nan"], "must be a finite number"),
        (["r", "--keep-checkpoint-every-n-hours", "-2"], "must be a finite number, 0 or more"),
        (["r", "--mode", "median"], "invalid choice: 'median'"),
    ],
)
def test_bad_input_is_a_clear_error(checkpoint_root, args, message):
    fake_run(checkpoint_root / "r", "r", [1, 2])
    with pytest.raises(CommandError, match=message):
        call_command("prune", *args, stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_bad_input_exits_non_zero_without_a_traceback(checkpoint_root):
    from tests.live import subprocess_env

    fake_run(checkpoint_root / "r", "r", [1, 2])
    base = [sys.executable, str(Path(__file__).resolve().parents[2] / "manage.py"), "prune"]
    for args in (["nope", "--json"], ["r", "--keep-best-n", "2", "--dry-run"]):
        result = subprocess.run(base + args, env=subprocess_env(), capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and result.stdout == ""
        assert "Traceback" not in result.stderr and ("No run named" in result.stderr or "--metric" in result.stderr)


# --- differential: TensorFlow's CheckpointManager vs scan → rows → `manage.py prune` ---------------

EPOCH = 1_700_000_000.0


def tensorflow_and_scanned_plan(directory: Path, max_to_keep, hours, start_offset, gaps) -> tuple[set, set]:
    """What CheckpointManager leaves on disk, and what the dashboard plans for the same saves.

    Two managers save at the same fake-clock instants: one with the policy (the truth), one keeping
    everything (``max_to_keep=None``: every checkpoint and its exact timestamp stay, and the state
    file carries the same anchor). The second directory is registered, scanned, and pruned with
    ``--dry-run --json`` and the same policy as flags.
    """
    import tensorflow as tf

    from tests.persistence.test_retention_vs_tensorflow import FakeClock, tensorflow_clock

    truth, everything = directory / "truth", directory / "all"
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    clock = FakeClock(EPOCH)
    with tensorflow_clock(clock):
        judged = tf.train.CheckpointManager(checkpoint, str(truth), max_to_keep=max_to_keep,
                                            keep_checkpoint_every_n_hours=hours)
        keeper = tf.train.CheckpointManager(checkpoint, str(everything), max_to_keep=None)
        clock.now += start_offset
        for i, gap in enumerate(gaps, 1):
            if i > 1:
                clock.now += gap
            judged.save(checkpoint_number=i)
            keeper.save(checkpoint_number=i)
    kept_by_tensorflow = {n[: -len(".index")] for n in os.listdir(truth) if n.endswith(".index")}

    run = Run.objects.create(name=f"tf-{uuid.uuid4().hex[:8]}", directory=str(everything))
    scanning.scan(run)
    assert run.checkpoints.count() == len(gaps)
    report = prune_json(run.name, "--dry-run", "--max-to-keep", str(max_to_keep or 0),
                        "--keep-checkpoint-every-n-hours", str(hours or 0), "--min-age", "0")
    assert len(report["plan"]) == len(gaps)
    return kept_by_tensorflow, {e["prefix"] for e in report["plan"] if e["keep"]}


CASES = {
    "every-half-hour": (2, 0.5, 0.0, [1800.0] * 7),
    "same-clock-tick": (1, 1, 100.0, [0.0, 0.0, 3600.0, 3599.0, 1.0, 7200.0]),
    "irregular": (3, 2, 1234.5678, [611.25, 4000.5, 9.75, 7199.0, 1.0, 20000.125, 333.0, 3600.0]),
    "four-hours": (1, 4, 0.0, [3600.0 * k for k in (1, 2, 1, 4, 0.5, 3.5, 4, 0)]),
    "hours-off": (4, None, 10.0, [60.0] * 9),
    "keep-all": (None, 2, 10.0, [5000.0] * 5),
    # 0.3 µs short of the boundary: the database's microseconds alone would round it over.
    "below-a-microsecond": (1, 0.5, 1799.0 - 3e-7, [600.0, 600.0]),
}


@pytest.mark.tf
@pytest.mark.parametrize("case", CASES)
def test_plan_from_scanned_rows_keeps_what_checkpoint_manager_keeps(checkpoint_root, case):
    tensorflow_kept, planned_kept = tensorflow_and_scanned_plan(checkpoint_root, *CASES[case])
    assert planned_kept == tensorflow_kept


@pytest.mark.tf
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    max_to_keep=st.one_of(st.integers(min_value=1, max_value=6), st.none()),
    hours=st.sampled_from([None, 0.5, 1, 2, 4]),
    start_offset=st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=50_000.0)),
    gaps=st.lists(st.one_of(st.sampled_from([0.0, 1.0, 1799.0, 1800.0, 3600.0, 7200.0]),
                            st.floats(min_value=0.0, max_value=6 * 3600.0)), min_size=1, max_size=10),
)
def test_random_save_times_give_the_same_kept_set_through_the_dashboard(checkpoint_root, max_to_keep, hours,
                                                                        start_offset, gaps):
    directory = Path(tempfile.mkdtemp(dir=checkpoint_root))
    tensorflow_kept, planned_kept = tensorflow_and_scanned_plan(directory, max_to_keep, hours, start_offset, gaps)
    assert planned_kept == tensorflow_kept
