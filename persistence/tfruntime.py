"""How TensorFlow is imported here: the process settings that must be in place before its first import.

Every module that needs TensorFlow imports it through :func:`import_tensorflow`, and a process
that imports it ahead of time (the preloading worker, the sandbox's fork server) calls
:func:`configure_environment` first, so that each process runs TensorFlow the same way.
Values already in the environment win: an operator can turn either back on.
"""

from __future__ import annotations

import os
from typing import Any

ENVIRONMENT = {
    # C++ INFO/WARNING lines (CPU feature notices, oneDNN banners) on every import and session
    # would flood worker logs; errors still print.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # With oneDNN on, tensors are allocated from oneDNN's own pool, which keeps freed memory for
    # reuse instead of returning it. The graph work done here is one-off sessions over whole
    # checkpoints: measured on a 420 MB checkpoint, closing the freeze's session left RSS 420 MB
    # higher with the pool and gave it back without, which is the difference between a freeze
    # fitting in three times the checkpoint or not. Inference numbers differ only by rounding.
    "TF_ENABLE_ONEDNN_OPTS": "0",
}


# A host that runs one worker per core gives each worker's TensorFlow one thread for its ops and
# one for scheduling them (``WORKER_TF_THREADS=1``): two workers on two cores then run two jobs
# side by side instead of four thread pools fighting over the same cores. TensorFlow reads these
# for every session and for eager execution alike.
THREADS_SETTING = "WORKER_TF_THREADS"


def configure_environment() -> None:
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    threads = os.environ.get(THREADS_SETTING, "").strip()
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise ValueError(f"{THREADS_SETTING} must be a whole number of threads, at least 1, not {threads!r}")
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", threads)
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", threads)


def import_tensorflow() -> Any:
    """``import tensorflow``, after :func:`configure_environment`."""
    configure_environment()
    import tensorflow as tf

    return tf
