"""The watch loop on its own (no database): batches, re-created directories, new directories,
network file systems and the polling fallback, with real ``watchfiles`` on real temp dirs."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from persistence import watching

FAST = watching.WatchSettings(quiet_ms=50, batch_ms=300, poll_interval_ms=100, recheck_seconds=0.3)

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /data rw,relatime shared:2 - nfs4 server:/export rw,vers=4.2
41 40 0:36 / /data/local rw,relatime shared:3 - xfs /dev/sdb1 rw
42 22 0:37 / /mnt/with\\040blank rw - cifs //host/share rw
"""


class Recorder:
    def __init__(self):
        self.batches: list[set[str]] = []
        self.lock = threading.Lock()

    def __call__(self, directories: set[str]) -> None:
        with self.lock:
            self.batches.append(set(directories))

    def count(self, directory: Path) -> int:
        with self.lock:
            return sum(str(directory) in b for b in self.batches)

    def wait(self, directory: Path, at_least: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.count(directory) < at_least:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{directory} reported {self.count(directory)} times, wanted {at_least}")
            time.sleep(0.05)


@pytest.fixture
def loop():
    stop = threading.Event()
    threads = []

    def start(directories, settings=FAST, backend=None) -> Recorder:
        recorder = Recorder()
        thread = threading.Thread(
            target=watching.watch, args=(directories, recorder),
            kwargs={"stop": stop, "settings": settings, "backend": backend}, daemon=True,
        )
        thread.start()
        threads.append(thread)
        return recorder

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), "the watch loop did not stop when asked"


def test_filesystem_type_picks_the_deepest_mount():
    assert watching.filesystem_type("/data/run", MOUNTINFO) == "nfs4"
    assert watching.filesystem_type("/data/local/run", MOUNTINFO) == "xfs"
    assert watching.filesystem_type("/home/me", MOUNTINFO) == "ext4"
    assert watching.filesystem_type("/mnt/with blank/x", MOUNTINFO) == "cifs"
    assert watching.needs_polling(["/home/me", "/data/run"], MOUNTINFO)
    assert not watching.needs_polling(["/home/me", "/data/local/run"], MOUNTINFO)


def test_changes_are_reported_per_directory_and_a_burst_is_a_few_batches(loop, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    recorder = loop(lambda: [str(a), str(b)])
    recorder.wait(a, 1)  # watching started: every directory is reported once
    start_a, start_b = recorder.count(a), recorder.count(b)
    started = time.monotonic()
    for i in range(1000):
        (a / f"file-{i}").write_bytes(b"x")
    writing = time.monotonic() - started
    time.sleep(1.5)
    # A batch closes at most batch_ms after its first event: a burst that a busy machine spreads over
    # seconds is a batch per batch_ms, still nowhere near one per file.
    assert 1 <= recorder.count(a) - start_a <= 5 + writing / (FAST.batch_ms / 1000)
    assert recorder.count(b) == start_b, "a directory nothing happened in was reported"


def test_a_directory_deleted_and_recreated_is_watched_again(loop, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recorder = loop(lambda: [str(run)])
    recorder.wait(run, 1)
    shutil.rmtree(run)
    time.sleep(0.8)
    run.mkdir()
    seen = recorder.count(run)
    recorder.wait(run, seen + 1)  # the new directory is reported (and watched)
    time.sleep(0.5)
    seen = recorder.count(run)
    (run / "model.ckpt-1.index").write_bytes(b"x")
    recorder.wait(run, seen + 1)


def test_directories_added_later_are_picked_up(loop, tmp_path):
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    tracked = [str(first)]
    recorder = loop(lambda: list(tracked))
    recorder.wait(first, 1)
    later.mkdir()
    tracked.append(str(later))
    recorder.wait(later, 1)
    seen = recorder.count(later)
    (later / "x.index").write_bytes(b"x")
    recorder.wait(later, seen + 1)


def test_every_directory_is_reported_only_once_its_watch_is_in_place(tmp_path):
    # A report made before the watch starts leaves a gap: a file written after the report (its scan
    # may already be done) and before the watch raises no event, and nothing looks again.
    import watchfiles

    run = tmp_path / "run"
    run.mkdir()
    log: list[str] = []
    stop = threading.Event()

    def backend(*paths, **kwargs):
        log.append("watching")
        yield from watchfiles.watch(*paths, **kwargs)

    def on_change(directories: set[str]) -> None:
        log.append("reported")
        stop.set()

    thread = threading.Thread(target=watching.watch, args=(lambda: [str(run)], on_change),
                              kwargs={"stop": stop, "settings": FAST, "backend": backend}, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert log == ["watching", "reported"], "the directory was reported before it was watched"


def test_polling_sees_changes(loop, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recorder = loop(lambda: [str(run)], settings=watching.WatchSettings(
        polling=True, quiet_ms=50, batch_ms=300, poll_interval_ms=100, recheck_seconds=0.3))
    recorder.wait(run, 1)
    seen = recorder.count(run)
    (run / "model.ckpt-1.index").write_bytes(b"x")
    recorder.wait(run, seen + 1)


def test_falls_back_to_polling_when_inotify_cannot_start(loop, tmp_path):
    import watchfiles

    run = tmp_path / "run"
    run.mkdir()
    asked: list[bool] = []

    def backend(*paths, force_polling, **kwargs):
        asked.append(force_polling)
        if not force_polling:
            raise OSError(28, "inotify watch limit reached")
        yield from watchfiles.watch(*paths, force_polling=True, **kwargs)

    recorder = loop(lambda: [str(run)], backend=backend)
    deadline = time.monotonic() + 10
    while True not in asked and time.monotonic() < deadline:
        time.sleep(0.05)
    assert asked[:2] == [False, True]
    time.sleep(0.3)
    seen = recorder.count(run)
    (run / "model.ckpt-1.index").write_bytes(b"x")
    recorder.wait(run, seen + 1)


def test_nothing_to_watch_waits_quietly(loop, tmp_path):
    absent = tmp_path / "not-yet"
    recorder = loop(lambda: [str(absent)])
    time.sleep(0.7)
    assert recorder.count(absent) == 0
    os.mkdir(absent)
    recorder.wait(absent, 1)
