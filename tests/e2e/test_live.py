"""Flow: a run page open while a trainer the dashboard did not start saves every second with
max_to_keep 2 and writes summaries; the page updates itself (no reload) with every checkpoint the
trainer wrote, the rotated ones marked, and its chart follows the trainer's logged loss."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from dashboard.models import Run
from tests.live import LiveWatcher, subprocess_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]

TRAINER = Path(__file__).resolve().parent.parent / "external_trainer.py"
SAVES = 6
LOSS_POINTS = """() => {
  const chart = window.Chart && Chart.getChart(document.getElementById("history-chart"));
  const curve = chart && chart.data.datasets.find((d) => d.label === "loss");
  return curve ? curve.data.length : 0;
}"""


def test_run_page_follows_an_external_trainer_without_reloading(tracked, e2e_viewer, e2e_roots, tmp_path):
    directory = e2e_roots / "live-trainer"
    directory.mkdir()
    Run.objects.create(name="live-trainer", directory=str(directory))
    watcher = LiveWatcher(log_path=tmp_path / "watch.log").start()
    trainer = None
    try:
        watcher.wait_until_watching()
        page = tracked.page
        tracked.login(e2e_viewer.username)
        chart_requests: list[float] = []
        page.on("request", lambda r: chart_requests.append(time.monotonic()) if "/chart.json" in r.url else None)
        tracked.watch()
        tracked.goto("/runs/live-trainer/")
        page.get_by_text("No checkpoints found yet").wait_for()
        loaded_chart_requests = len(chart_requests)

        trainer = subprocess.Popen(
            [sys.executable, str(TRAINER), str(directory), "--saves", str(SAVES), "--interval", "1.0",
             "--max-to-keep", "2", "--summaries"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        )
        rows = page.locator("table.history tbody tr")
        # Each row appears by itself, within 3 s of its .index being written. Measured as seen here
        # (after reading the trainer's line): never less than the real delay.
        saved: list[tuple[str, float]] = []
        delays: list[float] = []
        for line in trainer.stdout:
            if line.startswith("saved "):
                _, prefix, written = line.split()
                saved.append((prefix, float(written)))
                page.locator("table.history code", has_text=prefix).first.wait_for(timeout=10_000)
                delays.append(time.time() - float(written))
        assert trainer.wait(timeout=60) == 0, trainer.stderr.read()[-3000:]
        assert len(saved) == SAVES
        delays.sort()
        assert delays[len(delays) // 2] <= 3, f"rows appeared {delays} s after their .index was written"

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
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
        watcher.stop()
