"""The records the dashboard keeps: runs, their checkpoints, exports, jobs and the audit trail.

The database is the truth the pages show. Files on disk are reconciled into it by scans (and by
our own save jobs the moment they write); RQ's own job records expire, our ``Job`` rows do not.
The models hold fields, constraints and what concerns one row; work that spans rows, owns a
transaction, takes a lock or writes the audit log lives in the operation modules (``scanning``,
``retention``, ``pruning``, ``artifacts``, ``comparing``).
"""

from .alias import Alias
from .audit import AuditEvent
from .checkpoint import Checkpoint, CheckpointQuerySet
from .comparison import Comparison
from .export import Export
from .job import Job, temp_owner_ended
from .metrics import EventFile, MetricChunk, MetricSeries, MetricValue
from .run import Run
from .serving import ServingTarget
from .summary import RunSummary
from .token import ApiToken, IdempotencyKey
from .webhook import WebhookDelivery, WebhookEndpoint

__all__ = [
    "Alias", "ApiToken", "AuditEvent", "Checkpoint", "CheckpointQuerySet", "Comparison", "EventFile", "Export",
    "IdempotencyKey", "Job", "MetricChunk", "MetricSeries", "MetricValue", "Run", "RunSummary", "ServingTarget", "WebhookDelivery",
    "WebhookEndpoint", "temp_owner_ended",
]
