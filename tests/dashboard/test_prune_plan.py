"""Rows → plan: what the planner sees of a run's rows, the preview page, and the always-kept property.

No TensorFlow here: rows are written directly, with fake files of the right names on disk (retention
never reads a checkpoint's contents). ``fake_run`` is shared with the other prune test modules.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard import pruning, retention
from dashboard.models import Checkpoint, Export, Run
from persistence.statefile import write_state_file

pytestmark = pytest.mark.django_db

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DATA = ".data-00000-of-00001"


def fake_run(directory: Path, name: str, steps, *, meta_first: bool = True, hours_apart: float = 1.0,
             start: dt.datetime = BASE, state_file: bool = True, **policy) -> Run:
    """A run whose rows look like a scan of a TF1 Saver directory: ``model.ckpt-STEP`` index + data
    shard (+ the first one's ``.meta``, the meta source of every later one), one state file naming
    the newest as latest. The files exist, with a few bytes each."""
    directory.mkdir(parents=True, exist_ok=True)
    policy.setdefault("min_age_seconds", 0)
    run = Run.objects.create(name=name, directory=str(directory), **policy)
    prefixes = [f"model.ckpt-{s}" for s in steps]
    rows = []
    for i, (step, prefix) in enumerate(zip(steps, prefixes, strict=True)):
        names = [f"{prefix}.index", f"{prefix}{DATA}"] + ([f"{prefix}.meta"] if meta_first and i == 0 else [])
        files = []
        for file_name in names:
            data = os.urandom(50 + 10 * len(file_name) % 37)
            (directory / file_name).write_bytes(data)
            files.append({"name": file_name, "size": len(data)})
        rows.append(Checkpoint(
            run=run, prefix=prefix, step=step, saved_at=start + dt.timedelta(hours=i * hours_apart),
            size_bytes=sum(f["size"] for f in files), files=files, has_own_meta=meta_first and i == 0,
            metrics={"loss": 1.0 / (step + 1), "accuracy": (step % 10) / 10},
            latest_in=["checkpoint"] if i == len(steps) - 1 else [],
        ))
    Checkpoint.objects.bulk_create(rows)
    if meta_first and prefixes:
        run.checkpoints.update(meta_source=run.checkpoints.get(prefix=prefixes[0]))
    if state_file and prefixes:
        write_state_file(str(directory), latest=prefixes[-1], all_prefixes=prefixes)
        run.latest_prefix = prefixes[-1]
        run.state_files = [{"name": "checkpoint", "latest": prefixes[-1], "problem": None}]
        run.save(update_fields=["latest_prefix", "state_files"])
    return run


def on_disk(directory) -> set[str]:
    return set(os.listdir(directory))


def kept(plan) -> list[str]:
    return [d.prefix for d in plan.decisions if d.keep]


# --- rows as the planner sees them ------------------------------------------------------------


def test_rows_become_facts_with_meta_source_latest_pin_and_export(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [10, 20, 30])
    run.checkpoints.filter(step=20).update(pinned=True, pin_reason="shipped")
    Export.objects.create(checkpoint=run.checkpoints.get(step=10), path="/x.pb", sha256="0" * 64)
    facts = {f.prefix: f for f in retention.retention_facts(run)}

    first, middle, last = facts["model.ckpt-10"], facts["model.ckpt-20"], facts["model.ckpt-30"]
    assert first.meta_file == "model.ckpt-10.meta" and first.meta_source == "model.ckpt-10"
    assert middle.meta_source == "model.ckpt-10" and middle.meta_file is None
    assert (middle.pinned, middle.pin_reason) == (True, "shipped")
    assert first.has_export and not middle.has_export
    assert last.is_latest and not first.is_latest
    assert set(first.files) == {"model.ckpt-10.index", f"model.ckpt-10{DATA}", "model.ckpt-10.meta"}
    assert first.size_bytes == sum(first.file_sizes.values())
    assert last.saved_at == (BASE + dt.timedelta(hours=2)).timestamp()


def test_plan_from_rows_keeps_the_meta_source_alive_and_explains_every_decision(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3, 4, 5], max_to_keep=2)
    plan = retention.plan_retention(run)

    assert kept(plan) == ["model.ckpt-4", "model.ckpt-5"]
    reasons = {d.prefix: d.reasons for d in plan.decisions}
    assert reasons["model.ckpt-1"] == ["deleted: beyond max_to_keep", "kept: .meta needed by model.ckpt-5 and 1 more"]
    assert reasons["model.ckpt-5"] == ["kept: newest 2", "kept: latest in checkpoint"]
    assert "model.ckpt-1.meta" not in plan.files_to_delete
    assert "model.ckpt-1.index" in plan.files_to_delete


def test_a_pruned_row_takes_part_only_through_its_kept_meta(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3, 4], max_to_keep=2)
    pruning.apply_plan(run, retention.plan_retention(run))
    first = run.checkpoints.get(step=1)
    assert first.status == Checkpoint.PRUNED
    assert [f["name"] for f in first.files] == ["model.ckpt-1.meta"]
    assert on_disk(run.directory) >= {"model.ckpt-1.meta", "model.ckpt-4.index"}

    again = retention.plan_retention(run)
    assert [d.prefix for d in again.decisions] == ["model.ckpt-1", "model.ckpt-3", "model.ckpt-4"]
    assert again.decisions[0].reasons == ["kept: .meta needed by model.ckpt-4 and 1 more"]
    assert again.files_to_delete == []

    # Once no kept checkpoint needs it, the leftover .meta goes too, and its row lists nothing.
    retention.update_retention(run, {"max_to_keep": 1})
    run.checkpoints.filter(step=4).update(meta_source=None)
    plan = retention.plan_retention(run)
    assert "model.ckpt-1.meta" in plan.files_to_delete
    assert plan.decisions[0].reasons == ["deleted: left over from a pruned checkpoint"]
    pruning.apply_plan(run, plan)
    assert run.checkpoints.get(step=1).files == []
    assert "model.ckpt-1.meta" not in on_disk(run.directory)
    assert [d.prefix for d in retention.plan_retention(run).decisions] == ["model.ckpt-4"]


def test_missing_rows_count_only_through_files_still_on_disk(checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3], meta_first=False, max_to_keep=5)
    run.checkpoints.filter(step__in=[1, 2]).update(status=Checkpoint.MISSING)
    os.unlink(os.path.join(run.directory, "model.ckpt-1.index"))
    os.unlink(os.path.join(run.directory, f"model.ckpt-1{DATA}"))
    os.unlink(os.path.join(run.directory, "model.ckpt-2.index"))  # a half-deleted checkpoint: its shard stays

    plan = retention.plan_retention(run)
    decisions = {d.prefix: d for d in plan.decisions}
    assert "model.ckpt-1" not in decisions  # nothing left on disk: history, not part of the plan
    assert decisions["model.ckpt-2"].delete_files == [f"model.ckpt-2{DATA}"]
    assert decisions["model.ckpt-2"].reasons == ["deleted: left over from a missing checkpoint"]
    assert decisions["model.ckpt-2"].bytes == os.path.getsize(os.path.join(run.directory, f"model.ckpt-2{DATA}"))


def test_state_file_times_keep_the_hours_rule_exact_below_a_microsecond(checkpoint_root):
    # The database keeps microseconds. A CheckpointManager checkpoint saved 0.4 µs short of two hours
    # after the anchor is not preserved by TensorFlow; rounded to the microsecond it would be.
    anchor = 1_767_225_600.25
    exact = anchor + 7200 - 4e-7
    assert round(exact, 6) - 7200 >= anchor  # what the rounded time alone would decide
    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3], meta_first=False, max_to_keep=1,
                   keep_checkpoint_every_n_hours=2)
    times = {"model.ckpt-1": anchor + 60, "model.ckpt-2": exact, "model.ckpt-3": anchor + 9000}
    for prefix, t in times.items():
        run.checkpoints.filter(prefix=prefix).update(saved_at=dt.datetime.fromtimestamp(t, tz=dt.UTC))
    run.last_preserved_timestamp = anchor
    run.save(update_fields=["last_preserved_timestamp"])
    write_state_file(run.directory, latest="model.ckpt-3", all_prefixes=list(times), timestamps=times,
                     last_preserved_timestamp=anchor)

    assert kept(retention.plan_retention(run)) == ["model.ckpt-3"]
    assert {f.prefix: f.saved_at for f in retention.retention_facts(run)} == times


# --- the preview page --------------------------------------------------------------------------


def test_preview_shows_the_plan_totals_reasons_and_timeline(client, maintainer, checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", list(range(1, 8)), max_to_keep=3, keep_every_n_steps=2)
    plan = retention.plan_retention(run)
    client.force_login(maintainer)
    response = client.get(reverse("run-prune", args=["r"]))
    html = response.content.decode()

    assert response.status_code == 200
    assert response.context["plan"].fingerprint == plan.fingerprint
    assert f'value="{plan.fingerprint}"' in html  # the form carries exactly this plan
    assert "Prune now: delete 2 checkpoints" in html  # steps 1 and 3 (step 1 keeps its .meta)
    assert "kept: every 2 steps" in html and "deleted: beyond max_to_keep" in html
    assert "kept: .meta needed by model.ckpt-7 and 4 more" in html
    timeline = json.loads(re.search(r'id="prune-timeline-data" type="application/json">(.*?)</script>', html).group(1))
    assert timeline["total"] == {"kept": 5, "deleted": 2}
    assert [p[1] for p in timeline["deleted"]] == [1, 3]

    only_deleted = client.get(reverse("run-prune", args=["r"]), {"show": "delete"}).context["page"]
    assert [r["prefix"] for r in only_deleted] == ["model.ckpt-1", "model.ckpt-3"]


def test_viewers_see_the_preview_but_no_prune_button(client, viewer, checkpoint_root):
    fake_run(checkpoint_root / "r", "r", [1, 2, 3], max_to_keep=1)
    client.force_login(viewer)
    html = client.get(reverse("run-prune", args=["r"])).content.decode()
    assert "deleted: beyond max_to_keep" in html
    assert reverse("run-prune-now", args=["r"]) not in html
    assert "Prune now:" not in html and 'name="fingerprint"' not in html


def test_a_stored_policy_that_cannot_apply_is_a_message_not_a_500(client, maintainer, checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [1, 2])
    Run.objects.filter(pk=run.pk).update(keep_best_n=2, best_metric="")  # e.g. edited in the admin
    client.force_login(maintainer)
    response = client.get(reverse("run-prune", args=["r"]))
    assert response.status_code == 200
    assert "keep_best_n needs best_metric" in response.content.decode()


def test_the_web_side_of_retention_never_imports_tensorflow():
    code = (
        "import sys, django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'dashboard.settings'); django.setup();"
        "import dashboard.urls, dashboard.views.retention, dashboard.forms, dashboard.jobs, persistence.retention;"
        "from django.core.management import load_command_class; load_command_class('dashboard', 'prune');"
        "assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'tensorflow' in m)[:5]"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- property: what must stay, stays ---------------------------------------------------------------

STATUSES = ["present", "present", "verified", "incomplete", "corrupt", "pruned", "missing"]


@st.composite
def checkpoint_rows(draw):
    n = draw(st.integers(1, 12))
    steps = sorted(draw(st.sets(st.integers(0, 200), min_size=n, max_size=n)))
    rows = []
    for step in steps:
        rows.append({
            "step": step,
            "age_hours": draw(st.floats(0, 60)),
            "status": draw(st.sampled_from(STATUSES)),
            "own_meta": draw(st.booleans()),
            "pinned": draw(st.integers(0, 3)) == 0,
            "latest": draw(st.integers(0, 3)) == 0,
            "export": draw(st.integers(0, 3)) == 0,
            "loss": draw(st.one_of(st.none(), st.floats(0, 1))),
        })
    return rows


POLICIES = st.fixed_dictionaries({
    # Mostly small windows: a policy that keeps everything proves nothing.
    "max_to_keep": st.one_of(st.integers(1, 2), st.integers(1, 2), st.integers(0, 4), st.none()),
    "keep_checkpoint_every_n_hours": st.sampled_from([None, 0.5, 2, 24]),
    "keep_every_n_steps": st.one_of(st.none(), st.integers(1, 40)),
    "keep_best_n": st.one_of(st.none(), st.integers(0, 3)),
    "best_metric": st.just("loss"),
    "best_mode": st.sampled_from(["min", "max"]),
    "min_age_seconds": st.sampled_from([0, 0, 600, 30 * 3600]),
    "protect_exported": st.booleans(),
})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=checkpoint_rows(), policy=POLICIES)
def test_pinned_latest_and_exported_checkpoints_survive_every_policy(checkpoint_root, rows, policy):
    """Rows → plan → execution, on files: a pinned, latest or (protected) exported checkpoint keeps
    every file, and so does the .meta every kept checkpoint restores with."""
    now = dt.datetime.now(dt.UTC)
    directory = Path(tempfile.mkdtemp(dir=checkpoint_root))
    run = Run.objects.create(name=f"p-{uuid.uuid4().hex[:10]}", directory=str(directory), **policy)
    meta_source = None
    created, written = [], set()
    for row in rows:
        prefix = f"model.ckpt-{row['step']}"
        names = [f"{prefix}.index", f"{prefix}{DATA}"] + ([f"{prefix}.meta"] if row["own_meta"] else [])
        gone = row["status"] in ("pruned", "missing")
        if gone:  # history: at most its .meta is still there
            names = [n for n in names if n.endswith(".meta")]
        for file_name in names:
            (directory / file_name).write_bytes(b"x" * 10)
        written.update(names)
        checkpoint = Checkpoint.objects.create(
            run=run, prefix=prefix, step=row["step"], saved_at=now - dt.timedelta(hours=row["age_hours"]),
            status=row["status"], size_bytes=10 * len(names), files=[{"name": n, "size": 10} for n in names],
            has_own_meta=row["own_meta"], pinned=row["pinned"] and not gone, pin_reason="kept by hand",
            latest_in=["checkpoint"] if row["latest"] and not gone else [],
            metrics={} if row["loss"] is None else {"loss": row["loss"]},
            meta_source=meta_source,
        )
        if row["own_meta"]:
            meta_source = checkpoint
            Checkpoint.objects.filter(pk=checkpoint.pk).update(meta_source=checkpoint)
        if row["export"] and not gone:
            Export.objects.create(checkpoint=checkpoint, path=f"/exports/{prefix}.pb", sha256="0" * 64)
        created.append(checkpoint.pk)
        row["protected"] = not gone and (row["pinned"] or row["latest"] or (row["export"] and policy["protect_exported"]))

    plan = retention.plan_retention(run)
    pruning.apply_plan(run, plan)

    left = on_disk(directory)
    decisions = {d.prefix: d for d in plan.decisions}
    by_step = {row["step"]: row for row in rows}
    for checkpoint in Checkpoint.objects.filter(pk__in=created).select_related("meta_source"):
        names = {f"{checkpoint.prefix}.index", f"{checkpoint.prefix}{DATA}"}
        if by_step[checkpoint.step]["protected"]:
            assert decisions[checkpoint.prefix].keep, decisions[checkpoint.prefix].reasons
            assert names <= left and checkpoint.status not in ("pruned", "missing")
        if checkpoint.prefix in decisions and decisions[checkpoint.prefix].keep:
            assert names <= left
            source = checkpoint.meta_source
            if source is not None and source.has_own_meta:
                assert f"{source.prefix}.meta" in left, (checkpoint.prefix, decisions[source.prefix].reasons)
    # Exactly the plan's files went, and each was a file of a recorded checkpoint.
    assert set(plan.files_to_delete) <= written
    assert left == (written - set(plan.files_to_delete)) | {"checkpoint"} & left
    Export.objects.filter(checkpoint__run=run).delete()
    Run.objects.filter(pk=run.pk).delete()
