"""File-system primitives shared by discovery, retention, freezing and downloads.

Two rules live here so that no caller re-implements them:

* A file that someone else may read (a state file, a frozen ``.pb``) only ever appears at its final
  path complete: it is written to a temporary file in the same directory, flushed to disk, and
  moved into place with ``os.replace`` (atomic on POSIX within one file system).
* Every path that comes from a user, a database row or a state file is resolved (symlinks
  included) before use and must stay inside one of the allowed roots.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# Temporary files carry this marker so that a crashed writer's leftovers can be recognised and
# removed later without ever touching a real checkpoint or export file.
TEMP_MARKER = ".partial-"


class PathOutsideRoots(ValueError):
    """A path resolves (after following symlinks) to a place outside every allowed root."""


def resolve(path: str | os.PathLike[str]) -> Path:
    """The canonical absolute path: ``~`` expanded, symlinks and ``..`` resolved."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def is_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path`` resolves to ``root`` itself or to something below it."""
    real, real_root = resolve(path), resolve(root)
    return real == real_root or real_root in real.parents


def resolve_inside(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> Path:
    """Resolve ``path`` and return it if it lies inside one of ``roots``; raise otherwise.

    NUL bytes are refused up front: the OS would reject them later with a less helpful error.
    """
    text = os.fspath(path)
    if "\x00" in text:
        raise PathOutsideRoots("path contains a NUL byte")
    roots = list(roots)
    real = resolve(text)
    for root in roots:
        if is_inside(real, root):
            return real
    allowed = ", ".join(str(resolve(r)) for r in roots) or "(none configured)"
    raise PathOutsideRoots(f"{text} is outside the allowed roots: {allowed}")


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(os.fspath(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success move it into place atomically.

    On any exception (or if the process dies) nothing appears at ``path``; the temporary file is
    removed when Python gets the chance, and :func:`remove_stale_temp_files` cleans up after a
    ``kill -9``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARKER}", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[str]:
    """Delete temporary files left in ``directory`` by writers that died; return their names."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and TEMP_MARKER in entry.name and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                pass
    return removed
