"""The exceptions ``persistence`` raises about checkpoints and graphs.

Callers (the dashboard, commands, job bodies) catch these types and show their messages; they
never need to look at TensorFlow's own exception classes, which this package translates where it
reads through TensorFlow (see :mod:`persistence.damage` for how a failed read is judged).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# How many refused nodes an error message lists before it says "and N more".
_MESSAGE_LIMIT = 12


class CheckpointReadError(RuntimeError):
    """A checkpoint, or one of its tensors, could not be read; the message names it and says why.

    Raised for reads that failed for reasons that say nothing about the bytes (missing files,
    permissions, I/O errors) as well as, through :class:`CorruptCheckpoint`, for damaged bytes.
    """


class CorruptCheckpoint(CheckpointReadError):
    """The checkpoint's bytes are bad: a CRC32C mismatch, a truncated shard, an index that is not a table."""


class FreezeError(Exception):
    """An export (frozen graph, SavedModel, TFLite) was refused or failed; the message says why in
    terms a user can act on. Nothing was written at the export's final path."""


@dataclass(frozen=True)
class Refusal:
    """One node that may not run: its op type, its name, where it sits and why it is refused."""

    op: str
    node: str
    where: str  # "the graph", "function 'f'", "a graph serialized in 'c' of the graph"
    reason: str

    def __str__(self) -> str:
        return f"{self.op} ('{self.node}' in {self.where}: {self.reason})"


class UnsafeGraph(Exception):
    """The graph contains ops that are not known to be safe to run on someone else's behalf."""

    def __init__(self, refusals: Iterable[Refusal], source: str | None = None) -> None:
        self.refusals = list(refusals)
        self.ops = sorted({refusal.op for refusal in self.refusals})
        where = f" in {source}" if source else ""
        listed = "; ".join(str(refusal) for refusal in self.refusals[:_MESSAGE_LIMIT])
        more = len(self.refusals) - _MESSAGE_LIMIT
        if more > 0:
            listed += f"; and {more} more"
        super().__init__(
            f"refusing to run a graph with unsafe ops{where}: {', '.join(self.ops)}. {listed}. "
            "Only ops that compute in memory may run (files, Python and the network are out of "
            "bounds); mark the run trusted to allow them."
        )


__all__ = ["CheckpointReadError", "CorruptCheckpoint", "FreezeError", "Refusal", "UnsafeGraph"]
