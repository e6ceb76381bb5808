"""Discovery benchmarks: ``scan_vs_bare``, ``scan_vs_bare_two_cores``, ``rescan_vs_scan``,
``rescan_changed_vs_scan``, ``history_page_100k_queries``.

``scan_vs_bare``: the first scan of a run of 10,000 tiny checkpoints (``manage.py scan``: rows,
state file, variables of each checkpoint) against ``os.scandir`` + ``tf.train.list_variables``,
both sides pinned to one processor (this process, so any reader it would fork, and on
PostgreSQL the server process of its connection): our overhead, not the spare core.
``scan_vs_bare_two_cores``: the same unpinned, where the scan reads in a forked child when the
machine looks idle (``discovery._spare_cpu``). ``BENCH_SCAN_CHECKPOINTS`` sets a smaller run for a
smoke run.
``rescan_vs_scan``: a rescan of the same, unchanged directory (the directory-stamp shortcut:
nothing is listed or read), against the first scan.
``rescan_changed_vs_scan``: a rescan after a trainer added one checkpoint (its ``.index`` and
``.data``, and a rewritten state file) among the 10,000: the fingerprint path, which lists the
directory, compares each file's size and times with the rows and reads only the new checkpoint.
What they do not measure: a cold page cache (every side reads a directory it has just read), and
directories that change while being scanned.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

from bench.harness import delete_runs, entry, timed

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

    from dashboard.models import Checkpoint
    from tests.checkpoint_factory import make_many_tiny_checkpoints

    n = int(os.environ.get("BENCH_SCAN_CHECKPOINTS", n))
    directory = work / "checkpoints" / "many"
    made = make_many_tiny_checkpoints(directory, n)
    assert bare_scan(str(directory)) == n  # warm the page cache for both sides alike
    # A trainer's directory that changed within the last second is always rescanned in full
    # (discovery.directory_stamp); periodic rescans are a minute apart, so let it settle.
    time.sleep(1.5)

    def first_scan() -> float:
        # Every first scan is one of a run never seen before: nothing recorded, nothing known.
        delete_runs(directory=str(directory))
        seconds = timed(lambda: call_command("scan", str(directory), "--name", "many", stdout=io.StringIO()))
        recorded = Checkpoint.objects.filter(run__name="many").count()
        assert recorded == len(made.prefixes), (recorded, len(made.prefixes))
        return seconds

    # The same two sides with every process doing the work on one processor: this process (and
    # so any reader it forks, which inherits the mask; with one processor discovery does not
    # fork), and on PostgreSQL the server process of this connection. The figure is then our
    # overhead over the bare loop, not whether a second processor happened to be idle. Pinned
    # and unpinned rounds alternate, so that neither gets the quieter minutes of a busy machine.
    bare, first, rescan, changed, pinned_bare, pinned_first = [], [], [], [], [], []
    for _ in range(repeat):
        with pinned_to_one_core() as pinned:
            pinned_bare.append(timed(lambda: bare_scan(str(directory))))
            pinned_first.append(first_scan())
        bare.append(timed(lambda: bare_scan(str(directory))))
        first.append(first_scan())
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

    load = round(os.getloadavg()[0], 2)
    return {
        "scan_vs_bare": entry(
            min(pinned_first), min(pinned_bare), "s", "ratio <= 1.5", checkpoints=n, repeat=repeat,
            statistic="best of repeat", value_spread=spread(pinned_first), baseline_spread=spread(pinned_bare),
            median_ratio=statistics.median(pinned_first) / statistics.median(pinned_bare),
            load_average=load, pinned=pinned,
        ),
        # The scan reads in two processes only with a processor to spare (discovery._spare_cpu): on
        # a busy machine it stays in one. The load says which one was measured, and how quiet it was.
        "scan_vs_bare_two_cores": entry(
            min(first), min(bare), "s", "ratio <= 1.5", checkpoints=n, repeat=repeat,
            statistic="best of repeat", value_spread=spread(first), baseline_spread=spread(bare),
            median_ratio=statistics.median(first) / statistics.median(bare),
            load_average=load, cpus=len(os.sched_getaffinity(0)),
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


@contextlib.contextmanager
def pinned_to_one_core() -> Iterator[dict]:
    """Pin this process, and the PostgreSQL server process of its connection when there is one on
    this machine, to the processor that was idlest over the last half second; restore both masks
    afterwards. Yields what was pinned (for the results)."""
    from django.db import connection

    cpu = _idlest_cpu(os.sched_getaffinity(0))
    pids = {"bench": os.getpid()}
    if connection.vendor == "postgresql" and connection.settings_dict.get("HOST") in ("", "127.0.0.1", "localhost"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pids["postgres_backend"] = cursor.fetchone()[0]
    before = {}
    for name, pid in pids.items():
        try:
            before[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, {cpu})
        except OSError as exc:  # not ours to pin: say so in the results rather than fail
            pids[name] = f"{pid} (not pinned: {exc})"
    try:
        yield {"cpu": cpu, **pids}
    finally:
        for pid, mask in before.items():
            try:
                os.sched_setaffinity(pid, mask)
            except OSError:
                pass


def _idlest_cpu(allowed: set[int], seconds: float = 0.5) -> int:
    def idle() -> dict[int, int]:
        found = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in allowed:
                found[int(name[3:])] = int(fields[3]) + int(fields[4])  # idle + iowait
        return found

    try:
        before = idle()
        time.sleep(seconds)
        after = idle()
        return max(after, key=lambda cpu: after[cpu] - before.get(cpu, 0))
    except (OSError, ValueError):
        return min(allowed)


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
    # The scan's own bulk insert (COPY on PostgreSQL): the page, not the insert, is measured here.
    Checkpoint.objects.insert_many([
        {"run_id": run.pk, "prefix": f"model.ckpt-{s}", "step": s, "saved_at": base + dt.timedelta(seconds=s),
         "size_bytes": 4096, "metrics": {"loss": 1 / s}}
        for s in range(1, n + 1)
    ])
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
