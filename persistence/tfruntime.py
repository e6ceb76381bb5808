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


def configure_environment() -> None:
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def import_tensorflow() -> Any:
    """``import tensorflow``, after :func:`configure_environment`."""
    configure_environment()
    import tensorflow as tf

    return tf
