"""Retention rules, their reasons, and executing a plan on real TensorFlow directories."""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persistence import pruning
from persistence.files import PathOutsideRoots
from persistence.pruning import execute_plan
from persistence.retention import (
    CheckpointFacts,
    Plan,
    RetentionPolicy,
    plan_retention,
)
from persistence.statefile import read_state_file
from tests.persistence.test_retention_vs_tensorflow import FakeClock, tensorflow_clock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NOW = 1_800_000_000.0
HOUR = 3600.0


def ckpt(step: int | None, *, age_hours: float | None = None, prefix: str | None = None,
         **changes) -> CheckpointFacts:
    """A checkpoint saved ``age_hours`` before NOW (default: later steps are younger)."""
    prefix = prefix or (f"model.ckpt-{step}" if step is not None else "model.ckpt")
    if age_hours is None:
        age_hours = 10_000 - (step or 0) / 10
    values = dict(prefix=prefix, step=step, saved_at=NOW - age_hours * HOUR, size_bytes=1000,
                  files=(f"{prefix}.index", f"{prefix}.data-00000-of-00001"))
    values.update(changes)
    return CheckpointFacts(**values)


def plan(checkpoints, now=NOW, last_preserved_timestamp=None, **policy) -> Plan:
    return plan_retention(checkpoints, RetentionPolicy(**policy), now=now,
                          last_preserved_timestamp=last_preserved_timestamp)


def reasons(p: Plan) -> dict[str, list[str]]:
    return {d.prefix: d.reasons for d in p.decisions}


def kept(p: Plan) -> list[str]:
    return [d.prefix for d in p.decisions if d.keep]


# --- the rules, one by one ----------------------------------------------------------------------


def test_max_to_keep_keeps_newest_by_step_and_says_so():
    p = plan([ckpt(s) for s in (40, 10, 30, 20, 50)], max_to_keep=3)
    assert [d.prefix for d in p.decisions] == [f"model.ckpt-{s}" for s in (10, 20, 30, 40, 50)]
    assert kept(p) == ["model.ckpt-30", "model.ckpt-40", "model.ckpt-50"]
    assert reasons(p)["model.ckpt-50"] == ["kept: newest 3"]
    assert reasons(p)["model.ckpt-10"] == ["deleted: beyond max_to_keep"]
    assert p.files_to_delete == sorted(["model.ckpt-10.index", "model.ckpt-10.data-00000-of-00001",
                                        "model.ckpt-20.index", "model.ckpt-20.data-00000-of-00001"])
    assert (p.kept_count, p.deleted_count, p.bytes_freed) == (3, 2, 2000)


def test_equal_steps_are_ordered_by_time():
    older = ckpt(5, prefix="a-5", age_hours=2)
    newer = ckpt(5, prefix="b-5", age_hours=1)
    assert kept(plan([newer, older], max_to_keep=1)) == ["b-5"]


def test_a_checkpoint_without_step_orders_the_run_by_time():
    # model.ckpt (no global_step) was written last: by time it is the newest.
    p = plan([ckpt(300, age_hours=2), ckpt(None, age_hours=1), ckpt(200, age_hours=3)], max_to_keep=1)
    assert kept(p) == ["model.ckpt"]
    assert [d.prefix for d in p.decisions] == ["model.ckpt-200", "model.ckpt-300", "model.ckpt"]


@pytest.mark.parametrize("max_to_keep", [None, 0])
def test_max_to_keep_unset_or_zero_keeps_everything(max_to_keep):
    p = plan([ckpt(s) for s in range(1, 6)], max_to_keep=max_to_keep, keep_checkpoint_every_n_hours=1)
    assert p.deleted_count == 0 and p.files_to_delete == []
    assert reasons(p)["model.ckpt-1"] == ["kept: max_to_keep not set (keeps all)"]


def test_every_n_hours_preserves_one_checkpoint_per_period_outside_the_newest():
    # Saves every 30 minutes for 5 hours; the anchor is the first save minus one second.
    checkpoints = [ckpt(s, age_hours=(10 - s) * 0.5) for s in range(11)]
    p = plan(checkpoints, max_to_keep=2, keep_checkpoint_every_n_hours=2)
    # Step 4 is the first save at least 2 h after the anchor, step 8 the first 2 h after step 4.
    assert kept(p) == ["model.ckpt-4", "model.ckpt-8", "model.ckpt-9", "model.ckpt-10"]
    assert reasons(p)["model.ckpt-4"] == ["kept: preserved every 2 h"]
    assert reasons(p)["model.ckpt-9"] == ["kept: newest 2"]
    assert p.last_preserved_timestamp == checkpoints[8].saved_at


def test_every_n_hours_accepts_fractions_and_the_boundary_counts():
    # Exactly 30 minutes after the anchor is enough (TensorFlow compares with >=).
    anchor = NOW - 10 * HOUR
    checkpoints = [ckpt(1, saved_at=anchor + 1799.0), ckpt(2, saved_at=anchor + 1800.0),
                   ckpt(3, saved_at=anchor + 3599.0), ckpt(4, saved_at=anchor + 5000.0)]
    p = plan(checkpoints, last_preserved_timestamp=anchor, max_to_keep=1, keep_checkpoint_every_n_hours=0.5)
    assert kept(p) == ["model.ckpt-2", "model.ckpt-4"]
    assert reasons(p)["model.ckpt-2"] == ["kept: preserved every 0.5 h"]
    assert p.last_preserved_timestamp == anchor + 1800.0


def test_every_n_hours_keeps_what_tensorflow_preserved_before_the_state_files_anchor():
    # TensorFlow preserved model.ckpt-1 and dropped it from the state file, so its time is its
    # .index mtime, a little before the anchor TensorFlow wrote.
    anchor = NOW - 5 * HOUR
    checkpoints = [ckpt(1, saved_at=anchor - 0.002), ckpt(2, saved_at=anchor + 60), ckpt(3, age_hours=0)]
    p = plan(checkpoints, last_preserved_timestamp=anchor, max_to_keep=1, keep_checkpoint_every_n_hours=2)
    assert kept(p) == ["model.ckpt-1", "model.ckpt-3"]
    assert reasons(p)["model.ckpt-1"] == [
        "kept: preserved every 2 h (saved before the last preserved checkpoint)"]
    # Without the hours rule nothing is preserved, and max_to_keep applies to every checkpoint.
    assert kept(plan(checkpoints, last_preserved_timestamp=anchor, max_to_keep=1)) == ["model.ckpt-3"]


def test_anchor_from_the_future_is_clamped_to_now_like_tensorflow():
    checkpoints = [ckpt(1, age_hours=5), ckpt(2, age_hours=0)]
    p = plan(checkpoints, last_preserved_timestamp=NOW + HOUR, max_to_keep=1, keep_checkpoint_every_n_hours=1)
    assert kept(p) == ["model.ckpt-1", "model.ckpt-2"]  # at or before the clamped anchor
    assert p.last_preserved_timestamp == NOW


def test_keep_every_n_steps_keeps_multiples_only():
    p = plan([ckpt(s) for s in (500, 1000, 1500, 2000, 2100)] + [ckpt(None, age_hours=20_000)],
             max_to_keep=1, keep_every_n_steps=1000)
    assert kept(p) == ["model.ckpt-1000", "model.ckpt-2000", "model.ckpt-2100"]
    assert reasons(p)["model.ckpt-1000"] == ["kept: every 1000 steps"]
    assert "model.ckpt" not in kept(p)  # no step: this rule cannot keep it


@pytest.mark.parametrize(("mode", "best"), [("max", ["model.ckpt-2", "model.ckpt-4"]),
                                            ("min", ["model.ckpt-1", "model.ckpt-3"])])
def test_keep_best_n_ranks_by_metric_and_skips_checkpoints_without_it(mode, best):
    checkpoints = [ckpt(1, metrics={"accuracy": 0.5}), ckpt(2, metrics={"accuracy": 0.9}),
                   ckpt(3, metrics={"accuracy": 0.6}), ckpt(4, metrics={"accuracy": 0.8}),
                   ckpt(5, metrics={"loss": 0.1}), ckpt(6, metrics={"accuracy": float("nan")}),
                   ckpt(7, metrics={"accuracy": 0.7})]
    p = plan(checkpoints, max_to_keep=1, keep_best_n=2, best_metric="accuracy", best_mode=mode)
    assert kept(p) == [*best, "model.ckpt-7"]
    assert reasons(p)[best[0]] == [f"kept: best 2 by accuracy ({mode})"]


def test_keep_best_n_breaks_ties_towards_the_newer_checkpoint():
    checkpoints = [ckpt(s, metrics={"loss": 0.25}) for s in (1, 2, 3)] + [ckpt(4, metrics={"loss": 0.5})]
    p = plan(checkpoints, max_to_keep=1, keep_best_n=1, best_metric="loss")
    assert kept(p) == ["model.ckpt-3", "model.ckpt-4"]


def test_always_kept_pinned_latest_exported_and_young():
    checkpoints = [ckpt(1, pinned=True, pin_reason="release 1.0"), ckpt(2, pinned=True),
                   ckpt(3, is_latest=True), ckpt(4, has_export=True),
                   ckpt(5, age_hours=0.1), ckpt(6, age_hours=0.2), ckpt(7, age_hours=0)]
    p = plan(checkpoints, max_to_keep=1, min_age_seconds=600)
    assert reasons(p) == {
        "model.ckpt-1": ["kept: pinned (release 1.0)"],
        "model.ckpt-2": ["kept: pinned"],
        "model.ckpt-3": ["kept: latest in checkpoint"],
        "model.ckpt-4": ["kept: has export"],
        "model.ckpt-5": ["kept: younger than 10 min"],
        "model.ckpt-6": ["deleted: beyond max_to_keep"],  # 12 minutes old
        "model.ckpt-7": ["kept: newest 1", "kept: younger than 10 min"],
    }


def test_min_age_uses_the_injected_clock():
    checkpoints = [ckpt(1, age_hours=1), ckpt(2, age_hours=0)]
    assert kept(plan(checkpoints, max_to_keep=1, min_age_seconds=2 * HOUR)) == ["model.ckpt-1", "model.ckpt-2"]
    later = NOW + 2 * HOUR
    assert kept(plan(checkpoints, now=later, max_to_keep=1, min_age_seconds=2 * HOUR)) == ["model.ckpt-2"]


def test_protect_exported_false_lets_exported_checkpoints_go():
    checkpoints = [ckpt(1, has_export=True), ckpt(2)]
    assert kept(plan(checkpoints, max_to_keep=1, protect_exported=False)) == ["model.ckpt-2"]


def test_union_every_rule_that_applies_is_listed_and_each_alone_is_enough():
    special = ckpt(1000, age_hours=50, pinned=True, is_latest=True, has_export=True,
                   metrics={"loss": 0.01})
    others = [ckpt(s, metrics={"loss": 1.0}) for s in (1001, 1002)]
    policy = dict(max_to_keep=1, keep_every_n_steps=1000, keep_best_n=1, best_metric="loss")
    assert reasons(plan([special, *others], **policy))["model.ckpt-1000"] == [
        "kept: best 1 by loss (min)", "kept: every 1000 steps", "kept: pinned",
        "kept: latest in checkpoint", "kept: has export"]
    plain = ckpt(1000, age_hours=50, metrics={"loss": 0.01})
    for one_rule in (dict(pinned=True), dict(is_latest=True), dict(has_export=True)):
        alone = CheckpointFacts(**{**plain.__dict__, **one_rule})
        assert "model.ckpt-1000" in kept(plan([alone, *others], max_to_keep=1))
    assert "model.ckpt-1000" not in kept(plan([plain, *others], max_to_keep=1))


# --- broken and gone checkpoints ------------------------------------------------------------------


def test_incomplete_and_corrupt_never_take_a_newest_slot():
    checkpoints = [ckpt(1), ckpt(2), ckpt(3, status="incomplete"), ckpt(4, status="corrupt"),
                   ckpt(5, status="verified")]
    p = plan(checkpoints, max_to_keep=2)
    assert kept(p) == ["model.ckpt-2", "model.ckpt-5"]
    assert reasons(p)["model.ckpt-3"] == ["deleted: no rule keeps it (incomplete)"]
    assert reasons(p)["model.ckpt-4"] == ["deleted: no rule keeps it (corrupt)"]


def test_a_young_incomplete_checkpoint_is_kept_a_trainer_may_still_be_writing_it():
    p = plan([ckpt(1), ckpt(2, age_hours=0.01, status="incomplete")], max_to_keep=1, min_age_seconds=300)
    assert kept(p) == ["model.ckpt-1", "model.ckpt-2"]
    assert reasons(p)["model.ckpt-2"] == ["kept: younger than 5 min"]


def test_pruned_checkpoints_without_files_are_history_not_decisions():
    p = plan([ckpt(1, status="pruned", files=()), ckpt(2, status="missing", files=()), ckpt(3)],
             max_to_keep=1)
    assert [d.prefix for d in p.decisions] == ["model.ckpt-3"]


def test_leftover_meta_of_a_pruned_checkpoint_goes_once_nothing_needs_it():
    source = ckpt(1, status="pruned", files=("model.ckpt-1.meta",), meta_file="model.ckpt-1.meta",
                  size_bytes=70)
    user = ckpt(2, meta_source="model.ckpt-1")
    p = plan([source, user, ckpt(3, meta_source="model.ckpt-1")], max_to_keep=2)
    assert p.files_to_delete == []
    assert reasons(p)["model.ckpt-1"] == ["kept: .meta needed by model.ckpt-3 and 1 more"]
    p = plan([source, user, ckpt(3)], max_to_keep=1)
    assert "model.ckpt-1.meta" in p.files_to_delete
    assert reasons(p)["model.ckpt-1"] == ["deleted: left over from a pruned checkpoint"]


# --- the .meta of another checkpoint --------------------------------------------------------------


def meta_first_run(steps=(100, 200, 300, 400, 500, 600)) -> list[CheckpointFacts]:
    first = f"model.ckpt-{steps[0]}"
    run = [ckpt(steps[0], files=(f"{first}.index", f"{first}.data-00000-of-00001", f"{first}.meta"),
                meta_file=f"{first}.meta", meta_source=first,
                file_sizes={f"{first}.index": 100, f"{first}.data-00000-of-00001": 800,
                            f"{first}.meta": 100})]
    run += [ckpt(s, meta_source=first) for s in steps[1:]]
    return run


def test_meta_source_keeps_the_first_checkpoints_meta_alive():
    p = plan(meta_first_run(), max_to_keep=3)
    assert kept(p) == ["model.ckpt-400", "model.ckpt-500", "model.ckpt-600"]
    first = p.decisions[0]
    assert (first.keep, first.keep_meta_only) == (False, True)
    assert first.reasons == ["deleted: beyond max_to_keep", "kept: .meta needed by model.ckpt-600 and 2 more"]
    assert first.delete_files == ["model.ckpt-100.index", "model.ckpt-100.data-00000-of-00001"]
    assert first.bytes == 900  # file_sizes known: everything but the .meta
    assert "model.ckpt-100.meta" not in p.files_to_delete


def test_meta_goes_with_its_checkpoint_when_no_kept_checkpoint_needs_it():
    run = meta_first_run()
    p = plan(run[:1] + [ckpt(s) for s in (200, 300)], max_to_keep=1)
    assert "model.ckpt-100.meta" in p.files_to_delete
    assert p.decisions[0].delete_files[0] == "model.ckpt-100.index"  # index first, meta last
    assert p.decisions[0].delete_files[-1] == "model.ckpt-100.meta"


def test_only_kept_checkpoints_protect_a_meta():
    run = meta_first_run((100, 200, 300))
    # model.ckpt-200 needs the .meta but is deleted itself; model.ckpt-300 has its own.
    run[2] = ckpt(300, files=("model.ckpt-300.index", "model.ckpt-300.data-00000-of-00001",
                              "model.ckpt-300.meta"), meta_file="model.ckpt-300.meta",
                  meta_source="model.ckpt-300")
    p = plan(run, max_to_keep=1)
    assert "model.ckpt-100.meta" in p.files_to_delete
    assert not p.decisions[0].keep_meta_only


# --- plan as data ---------------------------------------------------------------------------------


def test_plan_round_trips_through_json():
    p = plan(meta_first_run(), max_to_keep=2, keep_every_n_steps=200)
    again = Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p


def test_fingerprint_changes_with_inputs_but_not_with_the_clock_alone():
    run = meta_first_run()
    base = plan(run, max_to_keep=3).fingerprint
    assert plan(run, now=NOW + 60, max_to_keep=3).fingerprint == base
    assert plan(run, max_to_keep=2).fingerprint != base
    assert plan(run, max_to_keep=3, last_preserved_timestamp=NOW - 1000).fingerprint != base
    assert plan([*run[:-1], ckpt(600, meta_source="model.ckpt-100", size_bytes=1001)],
                max_to_keep=3).fingerprint != base
    assert plan([*run, ckpt(700)], max_to_keep=3).fingerprint != base
    assert plan(list(reversed(run)), max_to_keep=3).fingerprint == base
    # Time alone changed what gets deleted: a checkpoint grew out of min_age.
    young = [ckpt(1, age_hours=0.1), ckpt(2, age_hours=0)]
    assert (plan(young, max_to_keep=1, min_age_seconds=600).fingerprint
            != plan(young, now=NOW + 600, max_to_keep=1, min_age_seconds=600).fingerprint)


def test_policy_validation_messages():
    assert RetentionPolicy(max_to_keep=3, keep_checkpoint_every_n_hours=0.5).validate() == []
    errors = RetentionPolicy(max_to_keep=-1, keep_checkpoint_every_n_hours=-2, keep_every_n_steps=2.5,
                             keep_best_n=3, best_mode="median", min_age_seconds=float("nan")).validate()
    assert errors == [
        "max_to_keep cannot be negative (0 or empty keeps every checkpoint).",
        "keep_every_n_steps must be a whole number (0 or empty turns the rule off).",
        "keep_checkpoint_every_n_hours must be a number of hours, 0 or more (0 or empty turns the rule off).",
        "min_age_seconds must be a number of seconds, 0 or more.",
        "keep_best_n needs best_metric: the metric that ranks checkpoints (e.g. accuracy or loss).",
        "best_mode must be 'min' or 'max', not 'median'.",
    ]
    with pytest.raises(ValueError, match="keep_best_n needs best_metric"):
        plan([ckpt(1)], keep_best_n=1)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="listed twice"):
        plan([ckpt(1), ckpt(1)])
    with pytest.raises(ValueError, match="unknown status"):
        plan([ckpt(1, status="deleted")])


# --- properties -----------------------------------------------------------------------------------

STATUSES = ["present", "verified", "incomplete", "corrupt", "pruned", "missing"]


@st.composite
def runs(draw):
    steps = draw(st.lists(st.integers(0, 10_000), unique=True, max_size=25))
    prefixes = [f"model.ckpt-{s}" for s in steps]
    checkpoints = []
    for s in steps:
        prefix = f"model.ckpt-{s}"
        has_meta = draw(st.booleans())
        status = draw(st.sampled_from(STATUSES))
        files = (f"{prefix}.index", f"{prefix}.data-00000-of-00001") + ((f"{prefix}.meta",) if has_meta else ())
        if status in ("pruned", "missing"):
            files = draw(st.sampled_from([(), files[-1:]]))
        checkpoints.append(CheckpointFacts(
            prefix=prefix, step=s, saved_at=NOW - draw(st.floats(0, 100 * HOUR)), size_bytes=10,
            files=files, meta_file=f"{prefix}.meta" if has_meta else None,
            meta_source=draw(st.sampled_from([None, *prefixes])),
            metrics=draw(st.fixed_dictionaries({}, optional={"loss": st.floats(0, 1)})),
            pinned=draw(st.booleans()), is_latest=draw(st.booleans()), has_export=draw(st.booleans()),
            status=status))
    return checkpoints


policies = st.builds(
    RetentionPolicy,
    max_to_keep=st.one_of(st.none(), st.integers(0, 5)),
    keep_checkpoint_every_n_hours=st.sampled_from([None, 0, 0.5, 2]),
    keep_every_n_steps=st.one_of(st.none(), st.integers(1, 50)),
    keep_best_n=st.one_of(st.none(), st.integers(0, 3)),
    best_metric=st.just("loss"),
    best_mode=st.sampled_from(["min", "max"]),
    min_age_seconds=st.sampled_from([0, 600, 50 * HOUR]),
    protect_exported=st.booleans(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(checkpoints=runs(), policy=policies,
       anchor=st.one_of(st.none(), st.floats(NOW - 200 * HOUR, NOW + HOUR)))
def test_pinned_latest_exported_and_needed_meta_survive_every_policy(checkpoints, policy, anchor):
    p = plan_retention(checkpoints, policy, now=NOW, last_preserved_timestamp=anchor)
    doomed = set(p.files_to_delete)
    by_prefix = {c.prefix: c for c in checkpoints}
    decisions = {d.prefix: d for d in p.decisions}
    for c in checkpoints:
        if c.status in ("pruned", "missing"):
            continue
        d = decisions[c.prefix]
        must_keep = c.pinned or c.is_latest or (c.has_export and policy.protect_exported)
        if must_keep:
            assert d.keep and not doomed.intersection(c.files), d.reasons
        if d.keep:
            assert not doomed.intersection(c.files)
            source = by_prefix.get(c.meta_source or "")
            if source is not None and source.meta_file:
                assert source.meta_file not in doomed
    for d in p.decisions:
        assert d.reasons and all(re.match(r"(kept|deleted): ", r) for r in d.reasons)
        if by_prefix[d.prefix].status in ("pruned", "missing"):
            assert not d.keep  # only leftover files: never a restorable checkpoint
        else:
            assert d.keep == any(r.startswith("kept: ") and ".meta needed" not in r for r in d.reasons)
    assert doomed <= {name for c in checkpoints for name in c.files}
    assert p.kept_count + p.deleted_count <= len(p.decisions)


def test_planning_ten_thousand_checkpoints_is_linearithmic():
    # Not a timing assertion (timings live in bench/): a quadratic step would take minutes here, not a second.
    first = "model.ckpt-0"
    checkpoints = [ckpt(s, age_hours=(10_000 - s) / 60, meta_source=first, metrics={"loss": 1 / (s + 1)},
                        pinned=s % 997 == 0) for s in range(10_000)]
    p = plan(checkpoints, max_to_keep=5, keep_checkpoint_every_n_hours=2, keep_every_n_steps=1000,
             keep_best_n=3, best_metric="loss", min_age_seconds=600)
    assert len(p.decisions) == 10_000
    assert p.kept_count < 200


# --- executing on real TensorFlow directories ------------------------------------------------------


def save_tf1_run(directory, steps, *, meta_first_only=True, latest_filename=None, max_to_keep=None):
    """A TF1 Saver run; ``w`` holds the step number at each save. Returns the saved values."""
    import tensorflow as tf

    values = {}
    with tf.Graph().as_default():
        w = tf.compat.v1.get_variable("w", initializer=tf.zeros([2, 2]))
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        tf.nn.softmax(tf.matmul(x, w), name="probs")
        new_value = tf.compat.v1.placeholder(tf.float32, [2, 2])
        assign = w.assign(new_value)
        saver = tf.compat.v1.train.Saver(max_to_keep=max_to_keep)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for i, step in enumerate(steps):
                values[step] = np.full((2, 2), step / 1000, np.float32)
                sess.run(assign, {new_value: values[step]})
                saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=step,
                           write_meta_graph=(i == 0 or not meta_first_only), latest_filename=latest_filename)
    return values


def facts_from_directory(directory, *, state_files=("checkpoint",), saved_at=None) -> list[CheckpointFacts]:
    """What discovery records, reduced to what retention needs (one hour between steps)."""
    names = sorted(os.listdir(directory))
    latest = {read_state_file(directory, s).latest for s in state_files
              if os.path.exists(os.path.join(directory, s))}
    prefixes = sorted((n[: -len(".index")] for n in names if n.endswith(".index")),
                      key=lambda p: int(p.rsplit("-", 1)[1]))
    facts, meta_source = [], None
    for prefix in prefixes:
        files = tuple(n for n in names if n.startswith(prefix + ".") and
                      re.fullmatch(r"\.(index|meta|data-\d{5}-of-\d{5})", n[len(prefix):]))
        meta = f"{prefix}.meta" if f"{prefix}.meta" in names else None
        meta_source = prefix if meta else meta_source
        step = int(prefix.rsplit("-", 1)[1])
        facts.append(CheckpointFacts(
            prefix=prefix, step=step, saved_at=(saved_at or {}).get(prefix, NOW - HOUR * (1000 - step / 100)),
            size_bytes=sum(os.path.getsize(os.path.join(directory, f)) for f in files), files=files,
            meta_file=meta, meta_source=meta_source, is_latest=prefix in latest))
    return facts


def listing(directory) -> set[str]:
    return set(os.listdir(directory))


@pytest.mark.tf
def test_tensorflow_max_to_keep_deletes_the_only_meta_the_trap_we_guard_against(tmp_path):
    save_tf1_run(str(tmp_path), [100, 200, 300, 400], max_to_keep=3)
    assert not list(tmp_path.glob("*.meta"))


@pytest.mark.tf
def test_prune_keeps_meta_source_and_newest_still_restores_with_import_meta_graph(tmp_path):
    import tensorflow as tf

    directory = str(tmp_path)
    values = save_tf1_run(directory, [100, 200, 300, 400, 500, 600])
    p = plan(facts_from_directory(directory), max_to_keep=3)
    assert p.decisions[0].keep_meta_only
    before = listing(directory)
    result = execute_plan(directory, p)

    assert result.ok and sorted(result.deleted) == p.files_to_delete and result.already_gone == []
    assert listing(directory) == before - set(p.files_to_delete)
    assert "model.ckpt-100.meta" in listing(directory)
    assert not any(n.startswith(("model.ckpt-100.", "model.ckpt-200.", "model.ckpt-300."))
                   for n in listing(directory) if n != "model.ckpt-100.meta")
    newest = tf.train.latest_checkpoint(directory)
    assert os.path.basename(newest) == "model.ckpt-600"
    with tf.Graph().as_default() as graph, tf.compat.v1.Session() as sess:
        saver = tf.compat.v1.train.import_meta_graph(os.path.join(directory, "model.ckpt-100.meta"))
        saver.restore(sess, newest)
        (w,) = tf.compat.v1.global_variables()
        np.testing.assert_array_equal(sess.run(w), values[600])
        probs = sess.run(graph.get_tensor_by_name("probs:0"), {graph.get_tensor_by_name("x:0"): [[1, 2]]})
        logits = np.array([[1, 2]], np.float32) @ values[600]
        np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(), rtol=1e-6)


@pytest.mark.tf
def test_state_file_names_only_checkpoints_on_disk_and_a_new_saver_carries_on(tmp_path):
    import tensorflow as tf

    directory = str(tmp_path)
    save_tf1_run(directory, [1, 2, 3, 4, 5], meta_first_only=False, latest_filename="checkpoint")
    # A Saver with max_to_keep=None lists only the last checkpoint; write a state file that lists
    # them all, as a Saver with a large max_to_keep would.
    from persistence.statefile import write_state_file

    write_state_file(directory, latest="model.ckpt-5", all_prefixes=[f"model.ckpt-{s}" for s in range(1, 6)])
    p = plan(facts_from_directory(directory), max_to_keep=2, keep_every_n_steps=3)
    assert kept(p) == ["model.ckpt-3", "model.ckpt-4", "model.ckpt-5"]
    result = execute_plan(directory, p, state_files=("checkpoint", "absent"))
    assert result.state_files == ["checkpoint"]

    state = tf.train.get_checkpoint_state(directory)
    assert [os.path.basename(x) for x in state.all_model_checkpoint_paths] == [
        "model.ckpt-3", "model.ckpt-4", "model.ckpt-5"]
    for prefix in [state.model_checkpoint_path, *state.all_model_checkpoint_paths]:
        assert tf.compat.v1.train.checkpoint_exists(os.path.join(directory, os.path.basename(prefix)))

    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        saver = tf.compat.v1.train.import_meta_graph(os.path.join(directory, "model.ckpt-5.meta"))
        saver.restore(sess, tf.train.latest_checkpoint(directory))
        saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=6)
    assert os.path.basename(tf.train.latest_checkpoint(directory)) == "model.ckpt-6"


@pytest.mark.tf
def test_every_state_file_is_rewritten_and_keeps_its_own_latest(tmp_path):
    import tensorflow as tf

    directory = str(tmp_path)
    save_tf1_run(directory, [1, 2, 3], meta_first_only=False, max_to_keep=5)  # "checkpoint": 1..3
    save_tf1_run(directory, [4, 5], meta_first_only=False, latest_filename="other", max_to_keep=5)
    facts = facts_from_directory(directory, state_files=("checkpoint", "other"))
    p = plan(facts, max_to_keep=1)
    assert kept(p) == ["model.ckpt-3", "model.ckpt-5"]  # model.ckpt-3 is latest in "checkpoint"
    result = execute_plan(directory, p, state_files=("checkpoint", "other"))
    assert result.state_files == ["checkpoint", "other"]
    assert read_state_file(directory).all_prefixes == ["model.ckpt-3"]
    assert read_state_file(directory, "other").all_prefixes == ["model.ckpt-5"]
    assert os.path.basename(tf.train.latest_checkpoint(directory, "other")) == "model.ckpt-5"


@pytest.mark.tf
def test_a_save_landing_while_the_prune_rewrites_the_state_file_stays_latest(tmp_path):
    import tensorflow as tf

    directory = str(tmp_path)
    prefix = os.path.join(directory, "model.ckpt")
    landed = []
    with tf.Graph().as_default():
        w = tf.compat.v1.get_variable("w", initializer=tf.zeros([2, 2]))
        bump = w.assign_add(tf.ones([2, 2]))
        saver = tf.compat.v1.train.Saver(max_to_keep=10)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for step in (1, 2, 3, 4):
                sess.run(bump)
                saver.save(sess, prefix, global_step=step)
            p = plan(facts_from_directory(directory), max_to_keep=2)
            assert kept(p) == ["model.ckpt-3", "model.ckpt-4"]

            def trainer_saves_meanwhile(done, total, message):
                # The trainer is still running: its Saver writes step 5 and rewrites the state
                # file after the prune read it and before the prune replaces it.
                if message.startswith("rewriting") and not landed:
                    sess.run(bump)
                    landed.append(saver.save(sess, prefix, global_step=5))

            result = execute_plan(directory, p, on_progress=trainer_saves_meanwhile)

    assert landed and result.ok and result.state_files == ["checkpoint"]
    state = tf.train.get_checkpoint_state(directory)
    assert os.path.basename(state.model_checkpoint_path) == "model.ckpt-5"
    assert [os.path.basename(x) for x in state.all_model_checkpoint_paths] == [
        "model.ckpt-3", "model.ckpt-4", "model.ckpt-5"]
    assert os.path.basename(tf.train.latest_checkpoint(directory)) == "model.ckpt-5"
    assert float(tf.train.load_checkpoint(tf.train.latest_checkpoint(directory)).get_tensor("w")[0, 0]) == 5.0
    assert not any(n.startswith(("model.ckpt-1.", "model.ckpt-2.")) for n in listing(directory))


@pytest.mark.tf
def test_half_done_plan_is_finished_by_running_it_again(tmp_path):
    directory = str(tmp_path)
    save_tf1_run(directory, [1, 2, 3, 4], meta_first_only=False)
    p = plan(facts_from_directory(directory), max_to_keep=1)
    by_hand = ["model.ckpt-1.index", "model.ckpt-2.data-00000-of-00001", "model.ckpt-3.meta"]
    for name in by_hand:
        os.unlink(os.path.join(directory, name))
    progress = []
    result = execute_plan(directory, p, on_progress=lambda done, total, msg: progress.append((done, total)))
    assert sorted(result.already_gone) == sorted(by_hand)
    assert sorted(result.deleted + result.already_gone) == p.files_to_delete
    assert progress[-1] == (len(p.files_to_delete), len(p.files_to_delete))
    assert listing(directory) == {"checkpoint", "model.ckpt-4.index", "model.ckpt-4.data-00000-of-00001",
                                  "model.ckpt-4.meta"}
    again = execute_plan(directory, p)
    assert again.deleted == [] and sorted(again.already_gone) == p.files_to_delete and again.bytes_freed == 0


@pytest.mark.tf
def test_tf2_manager_carries_on_with_the_plans_anchor(tmp_path):
    import tensorflow as tf

    directory = str(tmp_path)
    ckpt_object = tf.train.Checkpoint(v=tf.Variable(1.0))
    # Six saves two hours apart, in the past (TensorFlow distrusts anchors from the future).
    clock = FakeClock(time.time() - 12 * HOUR)
    with tensorflow_clock(clock):
        manager = tf.train.CheckpointManager(ckpt_object, directory, max_to_keep=None)
        for _ in range(6):
            manager.save()
            clock.now += 2 * HOUR
    facts = facts_from_directory(directory, saved_at=read_state_file(directory).timestamps)
    p = plan(facts, now=time.time(), max_to_keep=2, keep_checkpoint_every_n_hours=3)
    assert kept(p) == ["ckpt-3", "ckpt-5", "ckpt-6"]  # ckpt-3 is 3 h after the anchor, ckpt-4 only 2
    execute_plan(directory, p)
    assert read_state_file(directory).last_preserved_timestamp == p.last_preserved_timestamp == facts[2].saved_at
    assert read_state_file(directory).all_prefixes == ["ckpt-3", "ckpt-5", "ckpt-6"]

    resumed = tf.train.CheckpointManager(ckpt_object, directory, max_to_keep=2)
    assert [os.path.basename(c) for c in resumed.checkpoints] == ["ckpt-5", "ckpt-6"]
    resumed.save()  # its sweep deletes ckpt-5; ckpt-3, at the anchor, is no longer its business
    assert {n for n in listing(directory) if n.endswith(".index")} == {
        "ckpt-3.index", "ckpt-6.index", "ckpt-7.index"}


@pytest.mark.parametrize("listed", [False, True], ids=["lstat-per-file", "directory-listed"])
def test_execute_refuses_paths_outside_the_directory_before_deleting_anything(tmp_path, monkeypatch, listed):
    # A large plan finds symlinks through one listing of the directory, a small one per file.
    monkeypatch.setattr(pruning, "LIST_DIRECTORY_FROM", 1 if listed else 10**6)
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "secret").write_text("x")
    for name in ("model.ckpt-1.index", "model.ckpt-2.index"):
        (run / name).write_text("x")
    (run / "model.ckpt-1.data-00000-of-00001").symlink_to(tmp_path / "secret")
    facts = [ckpt(1, files=("model.ckpt-1.index", "model.ckpt-1.data-00000-of-00001")),
             ckpt(2, files=("model.ckpt-2.index",))]
    with pytest.raises(PathOutsideRoots):
        execute_plan(str(run), plan(facts, max_to_keep=1))
    assert (run / "model.ckpt-1.index").exists() and (tmp_path / "secret").exists()

    p = plan([ckpt(1, files=("model.ckpt-1.index",)), facts[1]], max_to_keep=1)
    p.decisions[0].delete_files.append("../secret")
    p.files_to_delete.append("../secret")
    with pytest.raises(ValueError, match="not a file name"):
        execute_plan(str(run), p)
    assert (run / "model.ckpt-1.index").exists() and (tmp_path / "secret").exists()


def test_execute_refuses_a_tampered_plan_and_one_that_deletes_the_latest(tmp_path):
    for name in ("model.ckpt-1.index", "model.ckpt-2.index"):
        (tmp_path / name).write_text("x")
    facts = [ckpt(1, files=("model.ckpt-1.index",)), ckpt(2, files=("model.ckpt-2.index",))]
    p = plan(facts, max_to_keep=1)
    tampered = Plan.from_dict({**p.to_dict(), "files_to_delete": ["model.ckpt-2.index"]})
    with pytest.raises(ValueError, match="inconsistent"):
        execute_plan(str(tmp_path), tampered)

    # The run changed after planning: a trainer made model.ckpt-1 the latest again (rollback).
    from persistence.statefile import write_state_file

    write_state_file(str(tmp_path), latest="model.ckpt-1", all_prefixes=["model.ckpt-2", "model.ckpt-1"])
    with pytest.raises(ValueError, match="names model.ckpt-1 as the latest"):
        execute_plan(str(tmp_path), p)
    assert (tmp_path / "model.ckpt-1.index").exists()


@pytest.mark.parametrize("listed", [False, True], ids=["stat-per-prefix", "directory-listed"])
def test_execute_keeps_in_the_state_file_only_survivors_on_disk(tmp_path, monkeypatch, listed):
    # A state file listing many checkpoints is checked against one listing of the directory.
    from persistence.statefile import write_state_file

    monkeypatch.setattr(pruning, "LIST_DIRECTORY_FROM", 1 if listed else 10**6)
    for step in (1, 2, 4):
        (tmp_path / f"model.ckpt-{step}.index").write_text("x")
    (tmp_path / "model.ckpt-5").write_text("x")  # a V1 checkpoint: one file
    (tmp_path / "model.ckpt-6.index").symlink_to(tmp_path / "nowhere")  # dangling: not there
    (tmp_path / "model.ckpt-7").mkdir()  # a directory is not a V1 checkpoint
    names = [f"model.ckpt-{s}" for s in range(1, 8)]
    write_state_file(str(tmp_path), latest="model.ckpt-4", all_prefixes=names)
    facts = [ckpt(1, files=("model.ckpt-1.index",)), ckpt(4, files=("model.ckpt-4.index",))]
    result = execute_plan(str(tmp_path), plan(facts, max_to_keep=1))
    assert result.deleted == ["model.ckpt-1.index"]
    assert read_state_file(str(tmp_path)).all_prefixes == ["model.ckpt-2", "model.ckpt-4", "model.ckpt-5"]
