"""gunicorn settings for the dashboard: `.venv/bin/gunicorn dashboard.wsgi -c gunicorn.conf.py`.

Export downloads are long responses (a 1 GB ``.pb`` to a slow client takes minutes) and the
pages must keep answering meanwhile. gunicorn's default sync workers serve one request each and
are killed when one request outlasts ``timeout`` (30 s), so a slow download was cut off and four
slow clients took every worker. Threaded workers fix both: a download occupies one thread, not a
process, and the worker's main thread keeps reporting to the arbiter, so ``timeout`` only catches
a worker that is truly stuck. Every value can be overridden from the environment or the command
line (``--bind``, ``--workers``...).
"""

from __future__ import annotations

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = "gthread"
# Concurrent requests per worker: pages and downloads alike. workers x threads slow downloads can
# run at once before a page waits for a free thread.
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# A worker whose main loop has not reported for this long is restarted. With threads it does not
# bound a request's duration, so long downloads are not cut off.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30
keepalive = 5
# No max_requests: recycling a worker gives its in-flight downloads only graceful_timeout to end.
accesslog = "-"
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
