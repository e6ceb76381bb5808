"""The RQ worker class for this dashboard.

RQ's default worker forks a fresh work horse per job. Importing TensorFlow costs about 4 s, so a
worker that imports it only inside the job pays that on every job. This worker imports TensorFlow
once in the parent; every forked horse inherits the loaded modules (copy-on-write).

    python manage.py rqworker default --worker-class dashboard.worker.PreloadingWorker
"""

from __future__ import annotations

import os

from django.db import connections
from rq.worker import Worker


def preload_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # noqa: F401  (imported for its side effect: loaded before the fork)


class PreloadingWorker(Worker):
    def __init__(self, *args, **kwargs):
        preload_tensorflow()
        super().__init__(*args, **kwargs)

    def fork_work_horse(self, job, queue):
        # A database socket shared between parent and horse would interleave their traffic.
        connections.close_all()
        super().fork_work_horse(job, queue)
