"""Webhook benchmark: ``webhook_emit_scan_overhead``.

Recording a first scan of 10,000 checkpoints (``scanning.apply_scan``: inserting the rows, linking
meta sources, the latest flags, the run's fields) calls ``webhooks.emit`` twice per store, for
``checkpoint.recorded`` and ``checkpoint.corrupt``. With no endpoint subscribed that must cost
nothing measurable. The baseline is the same recording with ``webhooks.emit`` replaced by a
function that returns 0: the scan as it was before webhooks. A fresh run per repetition,
alternating sides after one warm-up each, best of 9. Not measured: a scan while an endpoint subscribes to
``checkpoint.recorded`` (that stores one delivery row per checkpoint, by design), nor reading the
indexes (the same on both sides, and left out so that the difference is not lost in it).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.harness import delete_runs, entry, timed

N_CHECKPOINTS = 10_000
REPEAT = 9


def discovered(n: int) -> list:
    from persistence import discovery

    found = []
    for step in range(1, n + 1):
        prefix = f"model.ckpt-{step}"
        files = [discovery.FileInfo(f"{prefix}.index", 200, step), discovery.FileInfo(f"{prefix}.data-00000-of-00001", 4000, step)]
        if step == 1:
            files.append(discovery.FileInfo(f"{prefix}.meta", 9000, step))
        found.append(discovery.DiscoveredCheckpoint(
            prefix=prefix, step=step, status=discovery.PRESENT, format=discovery.TF1, files=files,
            has_own_meta=step == 1, meta_source="model.ckpt-1", size_bytes=sum(f.size for f in files),
            saved_at=1.7e9 + step, variables=[discovery.VariableInfo("w", (10, 2), "float32", 80)],
            fingerprint=f"fp-{step}",
        ))
    return found


def run(work: Path, n: int = N_CHECKPOINTS, repeat: int = REPEAT) -> dict[str, dict]:
    from dashboard import scanning, webhooks
    from dashboard.models import Run, WebhookEndpoint
    from persistence import discovery

    assert not WebhookEndpoint.objects.exists()
    checkpoints = discovered(n)
    result = discovery.ScanResult(directory=str(work / "checkpoints"), format=discovery.TF1,
                                  checkpoints=checkpoints, state_files=[], problems=[])
    real_emit = webhooks.emit
    counter = iter(range(10**6))

    def record(with_emit: bool) -> float:
        run = Run.objects.create(name=f"bench-{next(counter)}", directory=str(work / "checkpoints"))
        scanning.webhooks.emit = real_emit if with_emit else (lambda event, objects: 0)
        try:
            seconds = timed(lambda: scanning.apply_scan(run, result))
        finally:
            scanning.webhooks.emit = real_emit
        assert run.checkpoints.count() == n
        delete_runs(pk=run.pk)
        return seconds

    record(True), record(False)  # warm-up: the first inserts into fresh tables are slower
    ours, bare = [], []
    for _ in range(repeat):
        ours.append(record(True))
        bare.append(record(False))
    return {
        "webhook_emit_scan_overhead": entry(
            min(ours), min(bare), "s", "ratio <= 1.03", checkpoints=n, repeat=repeat, statistic="best of repeat",
            baseline_is="the same apply_scan with webhooks.emit stubbed out (no endpoint exists on either side)",
            value_median=statistics.median(ours), baseline_median=statistics.median(bare),
        ),
    }
