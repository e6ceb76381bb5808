"""The directory watcher (``manage.py watch``) as a real process, with trainers as processes of
their own: every checkpoint a Saver writes is recorded while it exists, the ones its max_to_keep
deletes read as rotated out, and the watcher outlives a deleted directory and a burst of files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dashboard.models import Checkpoint, Run
from tests.checkpoint_factory import make_many_tiny_checkpoints
from tests.live import LiveWatcher, subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TRAINER = Path(__file__).resolve().parent.parent / "external_trainer.py"


def train(directory: Path, *args: str, timeout: float = 180) -> list[str]:
    """Run the external trainer to its end; return the prefixes it saved, in order."""
    done = subprocess.run(
        [sys.executable, str(TRAINER), str(directory), *args], capture_output=True, text=True,
        timeout=timeout, env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [line.split()[1] for line in done.stdout.splitlines() if line.startswith("saved ")]


def statuses(run: Run) -> dict[str, str]:
    return dict(run.checkpoints.values_list("prefix", "status"))


@pytest.fixture
def watcher_for(checkpoint_root, tmp_path):
    started: list[LiveWatcher] = []

    def start(*args: str) -> LiveWatcher:
        watcher = LiveWatcher(args=list(args), log_path=tmp_path / f"watch-{len(started)}.log").start()
        started.append(watcher)
        watcher.wait_until_watching()
        return watcher

    yield start
    for watcher in started:
        watcher.stop()


def new_run(root: Path, name: str) -> Run:
    directory = root / name
    directory.mkdir()
    return Run.objects.create(name=name, directory=str(directory))


@pytest.mark.parametrize("mode", [[], ["--polling"]], ids=["inotify", "polling"])
def test_every_checkpoint_of_a_rotating_saver_is_recorded_and_rotated_ones_are_marked(
    checkpoint_root, watcher_for, mode
):
    run = new_run(checkpoint_root, "rotating")
    watcher = watcher_for(*mode)
    # max_to_keep 2 and a save every 0.5 s: each checkpoint exists for about a second.
    saved = train(Path(run.directory), "--saves", "8", "--interval", "0.5", "--max-to-keep", "2", "--summaries")
    assert len(saved) == 8

    def settled():
        now = statuses(run)
        return now if list(now.values()).count(Checkpoint.ROTATED) == 6 else None

    try:
        wait_for(settled, 20, what="six rotated rows")
    finally:
        print("\n".join(watcher.lines()))
    now = statuses(run)
    assert set(now) == set(saved), "a checkpoint the Saver wrote is not in the history"
    assert [now[p] for p in saved[:6]] == [Checkpoint.ROTATED] * 6
    assert [now[p] for p in saved[6:]] == [Checkpoint.PRESENT] * 2
    rotated = run.checkpoints.filter(status=Checkpoint.ROTATED)
    assert not rotated.filter(gone_at=None).exists(), "a rotated row does not say when"
    assert watcher.process.poll() is None


def test_watcher_picks_up_runs_registered_after_it_started(checkpoint_root, watcher_for):
    watcher = watcher_for()
    run = new_run(checkpoint_root, "late")
    saved = train(Path(run.directory), "--saves", "2", "--interval", "0.2")
    wait_for(lambda: set(statuses(run)) == set(saved), 20, what="the late run's checkpoints")
    assert watcher.process.poll() is None


def test_watcher_survives_the_directory_being_deleted_and_recreated(checkpoint_root, watcher_for):
    run = new_run(checkpoint_root, "recreated")
    watcher = watcher_for()
    first = train(Path(run.directory), "--saves", "2", "--interval", "0.2", "--prefix", "first.ckpt")
    wait_for(lambda: set(statuses(run)) == set(first), 20, what="the first checkpoints")

    shutil.rmtree(run.directory)
    wait_for(lambda: any("directory is gone" in line for line in watcher.lines()), 20,
             what="the watcher to notice the directory is gone")
    assert watcher.process.poll() is None
    os.mkdir(run.directory)
    # Emptied by someone: the old rows' files vanished with nothing to explain it.
    wait_for(lambda: set(statuses(run).values()) == {Checkpoint.MISSING}, 20, what="the old rows to read missing")
    time.sleep(6)  # longer than a scan racing a rotation can take: the old rows stay missing
    second = train(Path(run.directory), "--saves", "2", "--interval", "0.2", "--prefix", "second.ckpt")
    wait_for(lambda: set(second) <= set(statuses(run)), 20, what="checkpoints written into the new directory")
    now = statuses(run)
    assert {now[p] for p in second} == {Checkpoint.PRESENT}
    assert {now[p] for p in first} == {Checkpoint.MISSING}
    assert watcher.process.poll() is None


def test_a_burst_of_a_thousand_files_is_a_few_scans_not_a_thousand(checkpoint_root, watcher_for, tmp_path):
    run = new_run(checkpoint_root, "burst")
    staging = tmp_path / "staging"
    many = make_many_tiny_checkpoints(staging, 500)  # 1,000 index and data files, one .meta, a state file
    watcher = watcher_for()
    wait_for(lambda: any(line.startswith("scanned burst") for line in watcher.lines()), 20,
             what="the watcher's first pass")
    before = sum(line.startswith("scanned burst") for line in watcher.lines())
    names = sorted(os.listdir(staging), key=lambda n: n == "checkpoint")  # the state file last, as a Saver
    for name in names:
        os.rename(staging / name, Path(run.directory) / name)
    assert len(names) >= 1000

    wait_for(lambda: run.checkpoints.filter(status=Checkpoint.PRESENT).count() == 500, 60,
             what="all 500 checkpoints of the burst")
    time.sleep(2)  # whatever the burst still triggers
    scans = sum(line.startswith("scanned burst") for line in watcher.lines()) - before
    assert 1 <= scans <= 10, f"{scans} scans for one burst"
    assert set(statuses(run)) == set(many.prefixes)
    assert watcher.process.poll() is None
