"""Tell a damaged checkpoint from a read that merely failed.

A checkpoint is ``corrupt`` only when its bytes are bad: a CRC32C mismatch, a truncated file, an
index that is not a table. Everything else that can go wrong while reading (permission denied, out
of memory, an NFS timeout or I/O error, a file replaced by a directory, a worker killed) says
nothing about the bytes, and calling such a checkpoint corrupt would let retention delete a good
one. Such a read is ``unreadable``: the caller keeps the status it had and records the error, and
the next read may well succeed.

TensorFlow's checkpoint reader does not say which case it is in a type: its Python wrapper
translates only a handful of messages into specific ``OpError`` subclasses and raises a bare
``OpError`` with code UNKNOWN for the rest (CRC mismatches and short reads included; a truncated
data file even surfaces as ``IndexError``). So the verdict is read from the exception's class
names and TensorFlow's message texts, which are stable across releases (they come from the C++
table and bundle readers). An error that matches neither list is not called corrupt: only
positive evidence of damage is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CORRUPT = "corrupt"
UNREADABLE = "unreadable"

# Conditions of the machine, the file system or the process, not of the bytes. Checked first: a
# wrapper message such as "Unable to open table file X: ...; Permission denied" names both.
_TRANSIENT_TEXT = re.compile(
    r"permission denied|operation not permitted|input/output error|is a directory|not a directory"
    r"|timed out|timeout|stale file handle|resource temporarily unavailable|device or resource busy"
    r"|cannot allocate memory|out of memory|resource exhausted|\boom\b|bad_alloc|no space left"
    r"|too many open files|interrupted system call|transport endpoint|connection (?:reset|refused|aborted)"
    r"|host is down|no route to host|network is unreachable|no such device|no such file|not found",
    re.IGNORECASE,
)
_TRANSIENT_TYPES = frozenset({
    "PermissionDeniedError", "ResourceExhaustedError", "UnavailableError", "DeadlineExceededError",
    "AbortedError", "CancelledError", "NotFoundError", "MemoryError", "OSError", "TimeoutError",
})
# What TensorFlow says about bad bytes: checksums, truncation, tables that are not tables.
_DAMAGE_TEXT = re.compile(
    r"checksum does not match|checksum mismatch|read less bytes than requested|truncated"
    r"|too short to be an sstable|not an sstable|bad magic number|perhaps the file is corrupt"
    r"|corrupt|data loss|bad block|unexpected end|failed to seek to header",
    re.IGNORECASE,
)
_DAMAGE_TYPES = frozenset({"DataLossError"})
# Messages name the files; a directory called "corrupt-runs" must not decide the verdict.
_PATH = re.compile(r"\S*/\S*")


@dataclass(frozen=True)
class ReadFailure:
    """The verdict on one failed read: ``CORRUPT`` or ``UNREADABLE``, and TensorFlow's message."""

    verdict: str
    message: str

    @property
    def corrupt(self) -> bool:
        return self.verdict == CORRUPT


def error_message(exc: BaseException) -> str:
    """``Type: message`` with TensorFlow's own text (``OpError.message``, without its traceback)."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {' '.join(str(message).split())}"


def classify(exc: BaseException) -> ReadFailure:
    """Judge an exception raised while reading a checkpoint's index or tensors."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = _PATH.sub(" ", str(getattr(exc, "message", None) or exc))
    message = error_message(exc)
    if names & _TRANSIENT_TYPES or _TRANSIENT_TEXT.search(text):
        return ReadFailure(UNREADABLE, message)
    if names & _DAMAGE_TYPES or _DAMAGE_TEXT.search(text):
        return ReadFailure(CORRUPT, message)
    return ReadFailure(UNREADABLE, message)


__all__ = ["CORRUPT", "UNREADABLE", "ReadFailure", "classify", "error_message"]
