"""Live benchmark: ``live_latency_seconds``.

A TF1 Saver (``max_to_keep=2``, ``global_step`` suffixes, summaries beside the checkpoints) saves
once a second while ``manage.py watch`` runs as its own process. For each of 20 checkpoints (after
one warm-up save) the clock starts at the ``.index`` file's modification time and stops when the
run page's change endpoint (``runs/NAME/changes/``) reports a new stamp and the page's live partial
(``runs/NAME/live/``), fetched then, shows the checkpoint's row: what a browser polling every
second sees, minus its own up-to-one-second wait for its next poll (here the endpoint is asked
every 50 ms).

The same-run baseline is what a careful engineer would write to be told of a new checkpoint: a bare
``watchfiles.watch`` loop on the directory (its default 50 ms step) noting when an ``.index`` event
arrives, running in a thread beside. It bounds what any inotify-based recorder can reach; the
difference is our batching (up to 100 ms of quiet), the scan (list the directory, read one
index, store the row) and the change endpoint.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.harness import BENCH_DIR, entry

N_CHECKPOINTS = 20
SAVE_INTERVAL = 1.0
POLL_SECONDS = 0.05
TIMEOUT_SECONDS = 15.0


def run(work: Path, n: int = N_CHECKPOINTS) -> dict[str, dict]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import watchfiles
    from django.contrib.auth.models import User
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections
    from django.test import Client

    from dashboard.models import Run

    directory = work / "checkpoints" / "live"
    directory.mkdir(parents=True, exist_ok=True)
    run_row = Run.objects.create(name="live", directory=str(directory))
    user = User.objects.create_superuser("bench-live", password="bench-only")
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    client = Client()
    client.force_login(user)
    changes_url = f"/runs/{run_row.name}/changes/"
    live_url = f"/runs/{run_row.name}/live/"

    import logging

    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    # Baseline: a bare watchfiles loop noting when each .index shows up.
    seen_bare: dict[str, float] = {}
    stop = threading.Event()

    def bare_watch() -> None:
        for changes in watchfiles.watch(directory, stop_event=stop, watch_filter=None, rust_timeout=500,
                                        yield_on_timeout=True, recursive=False):
            now = time.time()
            for _, path in changes:
                name = os.path.basename(path)
                if name.endswith(".index") and ".tempstate" not in name:
                    seen_bare.setdefault(name[: -len(".index")], now)

    bare = threading.Thread(target=bare_watch, daemon=True)
    bare.start()
    log = open(work / "watch.log", "wb")  # noqa: SIM115 - closed below
    watcher = subprocess.Popen(
        [sys.executable, str(BENCH_DIR.parent / "manage.py"), "watch"], cwd=BENCH_DIR.parent,
        env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    ours: list[float] = []
    baseline: list[float] = []
    try:
        _wait_for(lambda: b"Watching" in (work / "watch.log").read_bytes(), 120)
        stamp = client.get(changes_url).json()["stamp"]
        v1 = tf.compat.v1
        with tf.Graph().as_default():
            step = v1.train.get_or_create_global_step()
            weights = v1.get_variable("w", [256], initializer=v1.zeros_initializer())
            loss = tf.reduce_sum(tf.square(weights - 1.0))
            train = v1.train.GradientDescentOptimizer(0.05).minimize(loss, global_step=step)
            summary = v1.summary.scalar("loss", loss)
            saver = v1.train.Saver(max_to_keep=2)
            writer = v1.summary.FileWriter(str(directory))
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                for i in range(n + 1):
                    started = time.monotonic()
                    _, value, at = sess.run([train, summary, step])
                    writer.add_summary(value, global_step=at)
                    writer.flush()
                    prefix = os.path.basename(saver.save(sess, str(directory / "model.ckpt"), global_step=step))
                    written = os.stat(directory / f"{prefix}.index").st_mtime
                    try:
                        visible, stamp = _until_visible(client, changes_url, live_url, stamp, prefix)
                    except TimeoutError as exc:
                        log.flush()
                        tail = (work / "watch.log").read_text(errors="replace")[-3000:]
                        raise TimeoutError(f"{exc}; the watcher's log:\n{tail}") from None
                    if i:  # the first save is a warm-up (first index read, first page render)
                        ours.append(visible - written)
                        if prefix in seen_bare:
                            baseline.append(seen_bare[prefix] - written)
                    time.sleep(max(0.0, SAVE_INTERVAL - (time.monotonic() - started)))
                writer.close()
    finally:
        stop.set()
        if watcher.poll() is None:
            os.killpg(watcher.pid, signal.SIGTERM)
            try:
                watcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(watcher.pid, signal.SIGKILL)
        log.close()
        bare.join(timeout=5)
    rotated = run_row.checkpoints.filter(status="rotated").count()
    return {
        "live_latency_seconds": entry(
            statistics.median(ours), statistics.median(baseline) if baseline else None, "s", "value <= 3",
            checkpoints=len(ours), value_spread=[round(v, 3) for v in sorted(ours)],
            baseline_spread=[round(v, 3) for v in sorted(baseline)], max=max(ours), rotated_rows=rotated,
            baseline_is="a bare watchfiles.watch loop seeing the .index event",
            statistic="median; endpoint polled every 50 ms (a browser adds up to its 1 s poll interval)",
        ),
    }


def _until_visible(client, changes_url: str, live_url: str, stamp: str, prefix: str) -> tuple[float, str]:
    """When the change endpoint moved and the live partial showed ``prefix``; and the new stamp."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        response = client.get(changes_url, {"since": stamp})
        if response.status_code == 200:
            stamp = response.json()["stamp"]
            if f">{prefix}<" in client.get(live_url).content.decode():
                return time.time(), stamp
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{prefix} was not visible through the change endpoint within {TIMEOUT_SECONDS:.0f} s")


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the watcher did not start")
        time.sleep(0.2)
