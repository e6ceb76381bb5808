"""The REST API at ``/api/v1`` (django-ninja): one router module per feature, all thin.

- ``root``: the ``NinjaAPI``, its routers, its error handlers and its URLs.
- ``problems``: every error as RFC 9457 problem details (``application/problem+json``), from
  the endpoints and from everything in front of them (unknown routes, CSRF, the NUL-byte check).
- ``auth``: Bearer tokens (``dashboard.tokens``), the browser session (with CSRF), throttling.
- ``pagination``: keyset cursors (``{"items": [...], "next": cursor | null}``), never OFFSET.
- ``idempotency``: ``Idempotency-Key`` on the requests that start jobs.
- ``schemas``: the request bodies and the documented response shapes; responses are built by
  ``dashboard.representations``, the same shapes webhooks send.
- ``runs``, ``checkpoints``, ``jobs``, ``exports``, ``retention``: the endpoints. Each calls the
  operation the pages call (``scanning``, ``artifacts``, ``pruning``, ``retention``, ``jobs``,
  ``downloads``), never an implementation of its own.
"""
