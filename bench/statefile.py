"""State-file benchmark: ``statefile_100k_parse``.

A run with 100,000 checkpoints has a state file of about 10 MB, read on every scan of the run.
``persistence.statefile`` reads files made only of the lines TensorFlow writes with two regex
passes, and everything else with protobuf's ``text_format``. The baseline is ``text_format`` alone
on the same file: the fast path is kept only while it at least halves that.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.harness import entry, timed

N_ENTRIES = 100_000
REPEAT = 5


def state_text(n: int = N_ENTRIES) -> str:
    """What TensorFlow writes for ``n`` checkpoints with timestamps (CheckpointManager)."""
    from persistence.statefile import format_state_text

    names = [f"model.ckpt-{i}" for i in range(1, n + 1)]
    stamps = {name: 1.7e9 + i / 7 for i, name in enumerate(names)}
    return format_state_text(latest=names[-1], all_prefixes=names, timestamps=stamps,
                             last_preserved_timestamp=1.7e9 - 1, in_directory="/data/runs/big")


def run(work: Path, n: int = N_ENTRIES, repeat: int = REPEAT) -> dict[str, dict]:
    from persistence import statefile

    text = state_text(n)
    fast, general = [], []
    # Alternating, best of each (as timeit does): the machine is shared.
    for _ in range(repeat):
        fast.append(timed(lambda: statefile.parse_state_text(text)))
        general.append(timed(lambda: statefile.parse_state_text(text.replace("\n", " \n"))))
    # Both sides must read the same state, or the comparison means nothing.
    assert statefile.parse_state_text(text) == statefile.parse_state_text(text.replace("\n", " \n"))
    return {
        "statefile_100k_parse": entry(
            min(fast), min(general), "s", "ratio <= 0.5", entries=n, megabytes=round(len(text) / 1e6, 2),
            repeat=repeat, statistic="best of repeat",
            baseline_is="text_format (the same file with a space before each newline, so not canonical)",
            value_median=statistics.median(fast), baseline_median=statistics.median(general),
        ),
    }
