"""Flow: a run page open while a trainer the dashboard did not start saves every second with
max_to_keep 2 and writes summaries; the page updates itself (no reload) with every checkpoint the
trainer wrote, the rotated ones marked, and its chart follows the trainer's logged loss.

For a run in a bucket the trainer writes locally and a sync mirrors its directory into the bucket
(as ``aws s3 sync --delete`` would); nothing watches a bucket, so the scheduler's periodic rescan
(``rqcron dashboard.cron``, every few seconds here) finds the new objects, run by the session's
worker."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dashboard.models import Run
from tests.e2e.backends import BucketSync
from tests.live import BASE_DIR, LiveWatcher, LiveWorker, subprocess_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]

TRAINER = Path(__file__).resolve().parent.parent / "external_trainer.py"
SAVES = 6
# The periodic rescan's interval for the bucket variant: no shorter than one rescan takes in the
# worker (a fork, a listing, the reads), or the scheduler's rescans queue up behind each other.
RESCAN_SECONDS = 3
# Seconds between the trainer's saves. With max_to_keep 2 a checkpoint lives two saves: polling a
# bucket sees only those that live longer than a rescan period plus a rescan, which inotify need not.
SAVE_INTERVAL = {"local": 1.0, "s3": RESCAN_SECONDS + 1.0}
LOSS_POINTS = """() => {
  const chart = window.Chart && Chart.getChart(document.getElementById("history-chart"));
  const curve = chart && chart.data.datasets.find((d) => d.label === "loss");
  return curve ? curve.data.length : 0;
}"""


class LiveScheduler(LiveWorker):
    """``manage.py rqcron dashboard.cron`` in a subprocess of its own (it only enqueues; a worker runs)."""

    def command(self) -> list[str]:
        return [sys.executable, str(BASE_DIR / "manage.py"), "rqcron", "dashboard.cron"]


def _follow(stack: contextlib.ExitStack, request, backend, directory: Path, tmp_path: Path) -> None:
    """Start what makes the dashboard see the trainer's files: the watcher for a local directory; for a
    bucket, the sync into it, the periodic rescan and the worker that runs it."""
    if not backend.is_s3:
        watcher = LiveWatcher(log_path=tmp_path / "watch.log").start()
        stack.callback(watcher.stop)
        watcher.wait_until_watching()
        return
    request.getfixturevalue("e2e_worker")
    scheduler = LiveScheduler(log_path=tmp_path / "cron.log", SCAN_INTERVAL_SECONDS=str(RESCAN_SECONDS)).start()
    stack.callback(scheduler.stop)
    stack.enter_context(BucketSync(directory, backend, "live-trainer"))


def test_run_page_follows_an_external_trainer_without_reloading(
    request, tracked, e2e_viewer, e2e_roots, backend, tmp_path
):
    if backend.is_s3:
        directory = tmp_path / "trainer"
        directory.mkdir()
    else:
        directory = e2e_roots / "live-trainer"
        backend.make_empty("live-trainer")
    Run.objects.create(name="live-trainer", directory=backend.directory("live-trainer"))
    with contextlib.ExitStack() as stack:
        _follow(stack, request, backend, directory, tmp_path)
        page = tracked.page
        tracked.login(e2e_viewer.username)
        chart_requests: list[float] = []
        page.on("request", lambda r: chart_requests.append(time.monotonic()) if "/chart.json" in r.url else None)
        tracked.watch()
        tracked.goto("/runs/live-trainer/")
        page.get_by_text("No checkpoints found yet").wait_for()
        loaded_chart_requests = len(chart_requests)

        trainer = subprocess.Popen(
            [sys.executable, str(TRAINER), str(directory), "--saves", str(SAVES), "--interval", str(SAVE_INTERVAL[backend.name]),
             "--max-to-keep", "2", "--summaries"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        )
        stack.callback(lambda: trainer.poll() is None and trainer.kill())
        rows = page.locator("table.history tbody tr")
        # Each row appears by itself, within 3 s of its .index being written. In a bucket nothing
        # raises an event: add the sync's own delay and the wait for the next periodic rescan.
        # Measured as seen here (after reading the trainer's line): never less than the real delay.
        bound = RESCAN_SECONDS + 4 if backend.is_s3 else 3
        saved: list[tuple[str, float]] = []
        delays: list[float] = []
        for line in trainer.stdout:
            if line.startswith("saved "):
                _, prefix, written = line.split()
                saved.append((prefix, float(written)))
                page.locator("table.history code", has_text=prefix).first.wait_for(timeout=(20_000 if backend.is_s3 else 10_000))
                delays.append(time.time() - float(written))
        assert trainer.wait(timeout=60) == 0, trainer.stderr.read()[-3000:]
        assert len(saved) == SAVES
        delays.sort()
        assert delays[len(delays) // 2] <= bound, f"rows appeared {delays} s after their .index was written"

        wait_for(lambda: rows.count() == SAVES and page.locator("table.history", has_text="rotated out").count()
                 and page.get_by_text("by the trainer's max_to_keep").count() == SAVES - 2, 20,
                 what="every checkpoint in the history, the rotated ones marked")
        table = page.locator("table.history").inner_text()
        for prefix, _ in saved:
            assert prefix in table, f"{prefix} is not in the history"
        for prefix, _ in saved[-2:]:
            assert "rotated out" not in rows.filter(has_text=prefix).inner_text()
        for prefix, _ in saved[:-2]:
            assert "rotated out" in rows.filter(has_text=prefix).inner_text()
        assert len(chart_requests) > loaded_chart_requests, "the chart never fetched its data again"
        # The trainer's loss, read from its event files by the watcher's scans, is charted without
        # a reload: its points arrive with the rows.
        wait_for(lambda: page.evaluate(LOSS_POINTS) >= SAVES, 20, what="the trainer's loss curve on the chart")
        assert page.locator("table.history thead", has_text="loss").count() == 1
        assert page.locator("#run-chart").is_visible()
        assert tracked.loads() == ["/runs/live-trainer/"], "the page reloaded"
        tracked.shot("run-live")
