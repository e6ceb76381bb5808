"""How TensorFlow is imported: the environment every process sets before its first import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BASE = Path(__file__).resolve().parents[2]

SCRIPT = """
import os
from persistence.tfruntime import configure_environment
configure_environment()
print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), os.environ.get("TF_NUM_INTRAOP_THREADS"),
      os.environ.get("TF_NUM_INTEROP_THREADS"))
"""


def _configured(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "WORKER_TF"))}
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=BASE, capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(BASE), **env}, timeout=60)


def test_one_thread_per_worker_sets_both_of_tensorflows_pools():
    assert _configured(WORKER_TF_THREADS="1").stdout.split() == ["0", "1", "1"]
    assert _configured().stdout.split() == ["0", "None", "None"]  # TensorFlow's own default


def test_an_operator_setting_wins_over_the_defaults():
    assert _configured(TF_ENABLE_ONEDNN_OPTS="1", WORKER_TF_THREADS="2",
                       TF_NUM_INTEROP_THREADS="4").stdout.split() == ["1", "2", "4"]


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_is_refused_loudly(value):
    done = _configured(WORKER_TF_THREADS=value)
    assert done.returncode != 0 and "WORKER_TF_THREADS must be a whole number" in done.stderr
