"""The Redis client every producer of queue work uses: jobs, webhook deliveries, the scheduler.

Its own module, importing nothing of ours, so that operation modules which enqueue work (webhook
deliveries are enqueued by whatever records an event) need not import the jobs package, which
itself imports operation modules.
"""

from __future__ import annotations

from django.conf import settings
from redis import Redis

# The web process talks to Redis only to enqueue and cancel. These bound how long a page can wait
# on a Redis that is down or unreachable (redis-py's defaults retry ten times).
REDIS_CONNECT_TIMEOUT = 2.0
REDIS_SOCKET_TIMEOUT = 5.0
REDIS_RETRIES = 1


def redis_connection() -> Redis:
    """A Redis client for our queue with short, explicit timeouts.

    django-rq builds clients from ``URL`` with redis-py's defaults and ignores the socket options
    in ``RQ_QUEUES``, so an outage could hold a page for many seconds; this one fails fast.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    config = settings.RQ_QUEUES[settings.JOB_QUEUE]
    return Redis.from_url(
        config["URL"],
        socket_connect_timeout=min(config.get("SOCKET_CONNECT_TIMEOUT") or REDIS_CONNECT_TIMEOUT, REDIS_CONNECT_TIMEOUT),
        socket_timeout=min(config.get("SOCKET_TIMEOUT") or REDIS_SOCKET_TIMEOUT, REDIS_SOCKET_TIMEOUT),
        retry=Retry(NoBackoff(), REDIS_RETRIES),
    )
