"""Discovery benchmarks: ``scan_vs_bare``, ``rescan_vs_scan``, ``rescan_changed_vs_scan``,
``history_page_100k_queries``.

``scan_vs_bare``: the first scan of a run of 10,000 tiny checkpoints (``manage.py scan``: rows,
state file, variables of each checkpoint) against ``os.scandir`` + ``tf.train.list_variables``.
``rescan_vs_scan``: a rescan of the same, unchanged directory (the directory-stamp shortcut:
nothing is listed or read), against the first scan.
``rescan_changed_vs_scan``: a rescan after a trainer added one checkpoint (its ``.index`` and
``.data``, and a rewritten state file) among the 10,000: the fingerprint path, which lists the
directory, compares each file's size and times with the rows and reads only the new checkpoint.
What they do not measure: a cold page cache (every side reads a directory it has just read), and
directories that change while being scanned.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from pathlib import Path

from bench.harness import entry, timed

N_SCAN = 10_000
N_HISTORY = 100_000
# Each side is timed this many times, alternating, and the best time of each compared (as
# ``timeit`` does): one run of each on a shared two-core machine measured the neighbours as much
# as the scan. The medians are recorded beside them.
REPEAT = 5


def bare_scan(directory: str) -> int:
    """The baseline: what a person would write to list the checkpoints and their variables."""
    import tensorflow as tf

    count = 0
    for item in os.scandir(directory):
        if item.name.endswith(".index"):
            tf.train.list_variables(os.path.join(directory, item.name[: -len(".index")]))
            count += 1
    return count


def run(work: Path, n: int = N_SCAN, repeat: int = REPEAT) -> dict[str, dict]:
    import tensorflow as tf  # noqa: F401  (import cost is not part of either measurement)
    from django.core.management import call_command

    from dashboard.models import Checkpoint, Run
    from tests.checkpoint_factory import make_many_tiny_checkpoints

    directory = work / "checkpoints" / "many"
    made = make_many_tiny_checkpoints(directory, n)
    assert bare_scan(str(directory)) == n  # warm the page cache for both sides alike
    # A trainer's directory that changed within the last second is always rescanned in full
    # (discovery.directory_stamp); periodic rescans are a minute apart, so let it settle.
    time.sleep(1.5)

    bare, first, rescan, changed = [], [], [], []
    for _ in range(repeat):
        bare.append(timed(lambda: bare_scan(str(directory))))
        # Every first scan is one of a run never seen before: nothing recorded, nothing known.
        Run.objects.filter(directory=str(directory)).delete()
        first.append(timed(lambda: call_command("scan", str(directory), "--name", "many", stdout=io.StringIO())))
        recorded = Checkpoint.objects.filter(run__name="many").count()
        assert recorded == len(made.prefixes), (recorded, len(made.prefixes))
        rescan.append(timed(lambda: call_command("scan", str(directory), stdout=io.StringIO())))
        added = _add_checkpoint(directory, made.prefixes[-1], made.steps[-1] + 1, made.prefixes)
        time.sleep(1.5)  # settled, as above: the fingerprint path, not the always-rescan window
        changed.append(timed(lambda: call_command("scan", str(directory), stdout=io.StringIO())))
        recorded = Checkpoint.objects.filter(run__name="many").count()
        assert recorded == n + 1, (recorded, n + 1)
        _remove_checkpoint(directory, added, made.prefixes)  # the next round starts from the same 10,000
        time.sleep(1.5)

    def spread(times: list[float]) -> dict:
        return {"median": statistics.median(times), "all": [round(t, 4) for t in times]}

    # The scan reads in two processes only with a processor to spare (discovery._spare_cpu): on
    # a busy machine it stays in one. The load says which one was measured, and how quiet it was.
    return {
        "scan_vs_bare": entry(
            min(first), min(bare), "s", "ratio <= 1.5", checkpoints=n, repeat=repeat,
            statistic="best of repeat", value_spread=spread(first), baseline_spread=spread(bare),
            load_average=round(os.getloadavg()[0], 2), cpus=len(os.sched_getaffinity(0)),
        ),
        "rescan_vs_scan": entry(
            min(rescan), min(first), "s", "ratio <= 0.1", checkpoints=n, repeat=repeat,
            statistic="best of repeat", value_spread=spread(rescan),
        ),
        "rescan_changed_vs_scan": entry(
            min(changed), min(first), "s", "ratio <= 0.5", checkpoints=n, new_checkpoints=1, repeat=repeat,
            statistic="best of repeat", value_spread=spread(changed),
        ),
    }


def _add_checkpoint(directory: Path, template: str, step: int, prefixes: list[str]) -> str:
    """Write checkpoint ``step`` as a trainer would: its files, then the state file naming it."""
    from persistence.statefile import write_state_file

    prefix = f"model.ckpt-{step}"
    for suffix in (".index", ".data-00000-of-00001"):
        (directory / (prefix + suffix)).write_bytes((directory / (template + suffix)).read_bytes())
    write_state_file(str(directory), latest=prefix, all_prefixes=[*prefixes, prefix])
    return prefix


def _remove_checkpoint(directory: Path, prefix: str, prefixes: list[str]) -> None:
    from persistence.statefile import write_state_file

    for suffix in (".index", ".data-00000-of-00001"):
        (directory / (prefix + suffix)).unlink()
    write_state_file(str(directory), latest=prefixes[-1], all_prefixes=prefixes)


def history_queries(work: Path, n: int = N_HISTORY) -> dict[str, dict]:
    import datetime as dt

    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from dashboard.models import Checkpoint, Run

    directory = work / "checkpoints" / "history"
    directory.mkdir(parents=True, exist_ok=True)
    run = Run.objects.create(name="history-100k", directory=str(directory))
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    Checkpoint.objects.bulk_create(
        (
            Checkpoint(run=run, prefix=f"model.ckpt-{s}", step=s, saved_at=base + dt.timedelta(seconds=s),
                       size_bytes=4096, metrics={"loss": 1 / s})
            for s in range(1, n + 1)
        ),
        batch_size=5000,
    )
    user = User.objects.create_superuser("bench", password="bench-only")
    # Django closes the connection around each request (CONN_MAX_AGE=0 on SQLite), which would
    # also reset the query log being counted; the test client normally disables that the same way.
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    client = Client()
    client.force_login(user)
    url = run.get_absolute_url()
    client.get(url)  # warm caches (templates, permissions) as a real server would be
    from django.db import reset_queries

    reset_queries()  # the query log is a bounded deque, already full after the bulk insert
    with CaptureQueriesContext(connection) as ctx:
        elapsed = timed(lambda: client.get(url))
    response = client.get(url)
    assert response.status_code == 200 and f"model.ckpt-{n}" in response.content.decode()
    return {
        "history_page_100k_queries": entry(
            len(ctx.captured_queries), None, "queries", "value <= 12", checkpoints=n, seconds=elapsed
        ),
    }
