"""Request bodies and the documented response shapes.

Responses are built by ``dashboard.representations`` (the shapes webhooks send too); these
classes describe them for the OpenAPI document and validate what goes out. Plain pydantic models,
not ninja's ``Schema``: they validate dicts, and ``Schema`` wraps every value of every item in an
ORM-attribute getter first (a third of a 500-item page's time).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel as Schema
from pydantic import Field

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
CHECKPOINT_STATUSES = Literal["present", "incomplete", "corrupt", "verified", "pruned", "rotated", "missing"]


class Problem(Schema):
    """RFC 9457 problem details; some problems add members (``errors``, ``field``, ``job``)."""

    type: str = Field(examples=["urn:checkpoint-dashboard:problem:plan-changed"])
    title: str
    status: int
    detail: str


class FieldError(Schema):
    field: str
    message: str


class ValidationProblem(Problem):
    errors: list[FieldError]


class RunOut(Schema):
    name: str
    directory: str
    format: str
    latest_prefix: str
    last_scanned_at: Timestamp | None
    created_at: Timestamp | None
    url: str = Field(description="The run's page in the dashboard.")


class JobRef(Schema):
    id: int
    kind: str
    status: str
    url: str = Field(description="Poll this (GET) for progress and the result.")


class JobStarted(Schema):
    job: JobRef


class RunCreated(RunOut):
    scan_job: JobRef = Field(description="The first scan of the directory, started at once.")


class CheckpointOut(Schema):
    id: int
    prefix: str
    step: int | None
    status: CHECKPOINT_STATUSES
    is_latest: bool
    pinned: bool
    size_bytes: int
    saved_at: Timestamp | None
    metrics: dict[str, Any]
    metric_steps: dict[str, int] = Field(
        default_factory=dict, description="Event-file metrics: the step each value was logged at.")


class FileOut(Schema):
    name: str
    size: int


class VariableOut(Schema):
    name: str
    shape: list[int | None]
    dtype: str
    bytes: int | None


class CheckpointDetail(CheckpointOut):
    run: str
    files: list[FileOut]
    variables: list[VariableOut]
    problems: list[Any]


class ExportOut(Schema):
    id: int
    run: str
    step: int | None
    checkpoint_id: int
    kind: str
    outputs: list[str]
    sha256: str
    size_bytes: int
    verified: bool
    max_abs_diff: float | None
    created_at: Timestamp | None
    download_url: str


class JobOut(Schema):
    id: int
    kind: str
    status: Literal["queued", "running", "finished", "failed", "canceled"]
    progress: int
    message: str
    result: dict[str, Any]
    error: str
    run: str | None
    checkpoint_id: int | None
    created_at: Timestamp | None
    started_at: Timestamp | None
    ended_at: Timestamp | None
    url: str = Field(description="The job's page in the dashboard.")


class RunPage(Schema):
    items: list[RunOut]
    next: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class CheckpointPage(Schema):
    items: list[CheckpointOut]
    next: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ExportPage(Schema):
    items: list[ExportOut]
    next: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class RunIn(Schema):
    directory: str = Field(description="Absolute path under one of the checkpoint roots.", max_length=1000)
    name: str = Field("", description="Letters, digits, hyphens, underscores; defaults to the directory's name.",
                      max_length=100)


class FreezeIn(Schema):
    outputs: list[Annotated[str, Field(max_length=500)]] = Field(
        default_factory=list, max_length=100,
        description="Output node names (TF1); for TF2 runs the recipe's outputs, all of them when empty.")
    kind: Literal["frozen_pb", "saved_model", "tflite", "onnx"] = Field(
        "frozen_pb", description="What to export: a frozen GraphDef, a SavedModel, TFLite or ONNX.")
    quantize: bool = Field(False, description="TFLite only: dynamic-range quantization.")
    clear_devices: bool = True
    variables_allowlist: list[str] = Field(default_factory=list, max_length=10_000)
    variables_denylist: list[str] = Field(default_factory=list, max_length=10_000)


class VerifyIn(Schema):
    output: str = Field("", max_length=500, description="Optionally run this node after restoring.")


class PinIn(Schema):
    reason: str = Field("", max_length=255)


class PolicyIn(Schema):
    """Rules replacing the run's stored ones for this preview or prune; omitted rules stay the run's."""

    max_to_keep: int | None = Field(None, ge=0)
    keep_checkpoint_every_n_hours: float | None = Field(None, ge=0, allow_inf_nan=False)
    keep_every_n_steps: int | None = Field(None, ge=0)
    keep_best_n: int | None = Field(None, ge=0)
    best_metric: str | None = Field(None, max_length=100)
    best_mode: Literal["min", "max"] | None = None
    min_age_seconds: float | None = Field(None, ge=0, allow_inf_nan=False)
    protect_exported: bool | None = None


class PruneIn(Schema):
    fingerprint: str = Field(max_length=128, description="From the preview: the prune runs only that plan.")
    policy: PolicyIn | None = Field(None, description="The same rules the preview was made with, if any.")


class PlanRow(Schema):
    prefix: str
    step: int | None
    keep: bool
    reasons: list[str]
    bytes: int


class PrunePreview(Schema):
    run: str
    plan: list[PlanRow]
    bytes_freed: int
    leftovers: list[PlanRow] = Field(description="Files of pruned or missing checkpoints still on disk.")
    fingerprint: str


class AliasIn(Schema):
    step: int | None = Field(None, description="Point the alias at the checkpoint of this step...")
    checkpoint_id: int | None = Field(None, description="...or at this checkpoint of the run.")


class AliasOut(Schema):
    name: str
    run: str
    checkpoint: CheckpointOut
    updated_at: Timestamp | None


class AliasResolved(AliasOut):
    exports: list[ExportOut]


class WebhookIn(Schema):
    url: str = Field(max_length=2000)
    events: list[str] = Field(min_length=1, max_length=20)
    description: str = Field("", max_length=200)
    active: bool = True


class WebhookOut(Schema):
    id: int
    url: str
    events: list[str]
    description: str
    active: bool
    secret_hint: str
    created_at: Timestamp | None


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret, shown this once.")


class DeliveryOut(Schema):
    id: int
    endpoint_id: int
    event: str
    event_id: str
    state: str
    attempts: list[dict[str, Any]]
    next_attempt_at: Timestamp | None
    created_at: Timestamp | None
    delivered_at: Timestamp | None
    redelivery_of: int | None
    payload: dict[str, Any]


class DeliveryPage(Schema):
    items: list[DeliveryOut]
    next: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
