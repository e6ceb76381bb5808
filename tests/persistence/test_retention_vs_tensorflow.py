"""Differential test: our keep_checkpoint_every_n_hours / max_to_keep == TensorFlow's CheckpointManager.

TensorFlow is the truth. For random save times we let ``tf.train.CheckpointManager``
save and sweep on a controlled clock, see which checkpoints it leaves on disk, and check that
``plan_retention`` keeps exactly those when given the same timestamps as if every checkpoint were
still present (saved with ``max_to_keep=None``).

A second check plans from the middle of the run, which is what the dashboard does when it prunes
a directory a CheckpointManager has been managing: the directory as TensorFlow left it after the
k-th save (its preserved checkpoints no longer listed in the state file, so their time is the
``.index`` mtime, a hair before TensorFlow's own timestamp) plus the saves still to come, with the
state file's ``last_preserved_timestamp`` after save k as the anchor. The truth for that one is a
CheckpointManager *recovered* from the same state (a training job restarted after save k, in a
copy of the directory): recovery leaves every checkpoint at or before the anchor alone, which a
continuing manager does not when several saves share one clock tick.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from persistence.retention import CheckpointFacts, RetentionPolicy, plan_retention

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EPOCH = 1_700_000_000.0
# The boundaries of the hours rule (0.5, 1, 2, 4 h and one second either side) as well as
# arbitrary gaps, including 0 (two saves in the same clock tick).
GAPS = st.one_of(
    st.sampled_from([0.0, 1.0, 1799.0, 1800.0, 1801.0, 3599.0, 3600.0, 7200.0, 14400.0]),
    st.floats(min_value=0.0, max_value=6 * 3600.0, allow_nan=False, allow_infinity=False),
)


class FakeClock:
    """Stands in for the ``time`` module inside checkpoint_management: only ``time()`` is used."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@contextlib.contextmanager
def tensorflow_clock(clock: FakeClock) -> Iterator[None]:
    from tensorflow.python.checkpoint import checkpoint_management

    real = checkpoint_management.time
    checkpoint_management.time = clock
    try:
        yield
    finally:
        checkpoint_management.time = real


@pytest.fixture(scope="module")
def tiny_checkpoint():
    import tensorflow as tf

    return tf.train.Checkpoint(v=tf.Variable(1.0))


def _on_disk(directory: str) -> set[str]:
    return {name[: -len(".index")] for name in os.listdir(directory) if name.endswith(".index")}


def _facts(prefix: str, step: int, saved_at: float, *, latest: bool) -> CheckpointFacts:
    return CheckpointFacts(prefix=prefix, step=step, saved_at=saved_at, size_bytes=100,
                           files=(f"{prefix}.index", f"{prefix}.data-00000-of-00001"),
                           is_latest=latest)


@settings(max_examples=200, deadline=None)
@given(
    max_to_keep=st.one_of(st.integers(min_value=1, max_value=6), st.none()),
    hours=st.sampled_from([None, 0.5, 1, 2, 4]),
    start_offset=st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=50_000.0)),
    gaps=st.lists(GAPS, min_size=1, max_size=14),
    midway=st.integers(min_value=0, max_value=14),  # plan again after this save (0: no)
)
# Three saves in one clock tick: ckpt-1 is preserved and ckpt-2, still listed in the state file,
# has exactly the anchor's time. A recovered manager never deletes it, a continuing one does.
@example(max_to_keep=1, hours=0.5, start_offset=1799.0, gaps=[0.0, 0.0, 0.0], midway=2)
def test_plan_keeps_exactly_what_checkpoint_manager_keeps(tiny_checkpoint, max_to_keep, hours,
                                                          start_offset, gaps, midway):
    import tensorflow as tf

    midway %= len(gaps) + 1
    constructed_at = EPOCH
    clock = FakeClock(constructed_at)
    times: list[float] = []
    with tempfile.TemporaryDirectory() as directory, tensorflow_clock(clock):
        run, restarted = os.path.join(directory, "run"), os.path.join(directory, "restarted")
        manager = tf.train.CheckpointManager(tiny_checkpoint, run, max_to_keep=max_to_keep,
                                             keep_checkpoint_every_n_hours=hours)
        clock.now += start_offset
        midway_state, resumed_manager = None, None
        for i, gap in enumerate(gaps, 1):
            if i == midway + 1 and midway:
                # A restart takes time, so its first save comes strictly after the anchor it
                # recovered. (In the same clock tick, only TensorFlow's in-memory list tells a
                # checkpoint saved after the restart from one recovered at the anchor's time;
                # timestamps, all a plan has, cannot.)
                gap = max(gap, 1.0)
            if i > 1:
                clock.now += gap
            manager.save(checkpoint_number=i)
            if resumed_manager is not None:
                resumed_manager.save(checkpoint_number=i)
            times.append(clock.now)
            if i == midway:
                midway_disk = _on_disk(run)
                midway_state = tf.train.get_checkpoint_state(run)
                shutil.copytree(run, restarted)
                resumed_manager = tf.train.CheckpointManager(
                    tiny_checkpoint, restarted, max_to_keep=max_to_keep,
                    keep_checkpoint_every_n_hours=hours)
        kept_by_tensorflow = _on_disk(run)
        tf_anchor = tf.train.get_checkpoint_state(run).last_preserved_timestamp
        if midway_state is not None:
            kept_after_restart = _on_disk(restarted)
            restart_anchor = tf.train.get_checkpoint_state(restarted).last_preserved_timestamp

    n = len(times)
    policy = RetentionPolicy(max_to_keep=max_to_keep, keep_checkpoint_every_n_hours=hours)
    every = [_facts(f"ckpt-{i}", i, t, latest=i == n) for i, t in enumerate(times, 1)]
    # With no state file, our anchor is "the first checkpoint's time minus one second", which is
    # TensorFlow's "construction time minus one second" only when the first save came at once.
    anchor = None if start_offset == 0 else constructed_at - 1.0
    plan = plan_retention(every, policy, now=clock.now, last_preserved_timestamp=anchor)
    kept = {d.prefix for d in plan.decisions if d.keep}
    assert kept == kept_by_tensorflow, [(d.prefix, d.reasons) for d in plan.decisions]
    assert plan.last_preserved_timestamp == tf_anchor
    assert set(plan.files_to_delete) == {
        name for i in range(1, n + 1) if f"ckpt-{i}" not in kept_by_tensorflow
        for name in (f"ckpt-{i}.index", f"ckpt-{i}.data-00000-of-00001")}

    if midway_state is not None:
        listed = {os.path.basename(p): t for p, t in zip(midway_state.all_model_checkpoint_paths,
                                                       midway_state.all_model_checkpoint_timestamps,
                                                       strict=True)}
        resumed = []
        for i, t in enumerate(times, 1):
            prefix = f"ckpt-{i}"
            if i <= midway and prefix not in midway_disk:
                continue  # TensorFlow had deleted it by then
            # Not in the state file's list: the dashboard only has the .index mtime.
            saved_at = t if i > midway else listed.get(prefix, t - 0.001)
            resumed.append(_facts(prefix, i, saved_at, latest=i == n))
        plan = plan_retention(resumed, policy, now=clock.now,
                              last_preserved_timestamp=midway_state.last_preserved_timestamp)
        kept = {d.prefix for d in plan.decisions if d.keep}
        assert kept == kept_after_restart, [(d.prefix, d.reasons) for d in plan.decisions]
        assert plan.last_preserved_timestamp == restart_anchor
