"""A bounded local cache of bucket objects, and checkpoints staged from it for TensorFlow.

TensorFlow cannot open ``s3://`` paths, so a job that reads a checkpoint in a bucket first fetches
its files here and points TensorFlow at a directory laid out like a local checkpoint.

Layout under the cache directory:

``objects/``  one file per object version, named by a hash of ``bucket/key`` and its ETag (a
              changed object is a new entry; the old one ages out). Its modification time is the
              last use, which is what least-recently-used eviction orders by.
``locks/``    per entry: ``.use`` (held shared by everyone using the entry, taken exclusive by
              eviction, which therefore never removes an entry in use) and ``.fetch`` (one process
              fetches an entry while others wait for it).
``tmp/``      objects being fetched; renamed into ``objects/`` only when complete, so a partial
              file is never visible under an entry's name. A temporary file is as large as its
              object from the start, so the size accounting sees space a fetch is about to use.
``views/``    staged checkpoints: hard links into ``objects/`` named like the checkpoint's files.

``cache.lock`` serialises size accounting and eviction between processes. Everything is local to
one machine (``fcntl`` locks): workers on several machines each keep their own cache.

Entries are not fsynced: a process killed mid-fetch leaves only its temporary file, and the page
cache outlives any process. Only a crash of the machine could leave a renamed entry with unwritten
data, and after one (a new ``boot_id``) the cache starts empty. TensorFlow would otherwise call a
sound checkpoint corrupt on the strength of a half-written cache file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from . import storage

__all__ = ["StagedCheckpoint", "StagingCache", "StagingError"]

# Ranged GETs of 16 MiB, 10 in flight: half the requests (billed one by one) of the AWS SDK's
# 8 MiB parts, and no slower than its transfer manager on a loopback server (bench/s3.py).
PART_SIZE = 16 << 20
CONCURRENCY = 10


class StagingError(OSError):
    """An object could not be staged; the message names the object and the reason, never a credential."""


@dataclass
class StagedCheckpoint:
    """A checkpoint laid out in a local directory; valid until the ``stage`` block ends."""

    directory: str
    prefix: str
    meta: str | None = None
    fetched: list[str] = field(default_factory=list)  # objects fetched for it (the rest were cached)
    fetched_bytes: int = 0

    @property
    def path(self) -> str:
        """The prefix path TensorFlow reads (``directory/prefix``)."""
        return os.path.join(self.directory, self.prefix)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _lock_file(path: str, operation: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation)
    except BaseException:
        os.close(fd)
        raise
    return fd


class StagingCache:
    """Objects fetched from buckets into ``directory``, at most ``max_bytes`` of them.

    Safe for several processes sharing the directory. ``part_size`` and ``concurrency`` shape the
    ranged GETs large objects are fetched with.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, *, part_size: int = PART_SIZE,
                 concurrency: int = CONCURRENCY) -> None:
        self.directory = os.path.abspath(directory)
        self.max_bytes = int(max_bytes)
        self.part_size = part_size
        self.concurrency = concurrency
        for sub in ("objects", "locks", "tmp", "views"):
            os.makedirs(os.path.join(self.directory, sub), exist_ok=True)
        self._forget_other_boots()

    def _forget_other_boots(self) -> None:
        """Empty the cache if it was filled before the machine last booted (entries are not fsynced)."""
        marker = os.path.join(self.directory, "boot_id")
        current = _boot_id()
        try:
            with open(marker) as handle:
                if handle.read().strip() == current:
                    return
        except FileNotFoundError:
            pass
        lock = _lock_file(os.path.join(self.directory, "cache.lock"), fcntl.LOCK_EX)
        try:
            with contextlib.suppress(FileNotFoundError), open(marker) as handle:
                if handle.read().strip() == current:
                    return  # another process emptied it meanwhile
            for sub in ("objects", "tmp", "views"):
                path = os.path.join(self.directory, sub)
                shutil.rmtree(path, ignore_errors=True)
                os.makedirs(path, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".boot_id-")
            with os.fdopen(fd, "w") as handle:
                handle.write(current)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, marker)
        finally:
            os.close(lock)

    # --- entries --------------------------------------------------------------------------------

    def entry_name(self, url: str, etag: str) -> str:
        """The name of the cache entry of object ``url`` at version ``etag``."""
        return _hash(f"{url}\0{etag}")

    def _entry(self, name: str) -> str:
        return os.path.join(self.directory, "objects", name)

    def _lock(self, name: str, kind: str) -> str:
        return os.path.join(self.directory, "locks", f"{name}.{kind}")

    def size(self) -> int:
        """Bytes held: entries plus objects being fetched (each as large as it will be)."""
        total = 0
        for sub in ("objects", "tmp"):
            with os.scandir(os.path.join(self.directory, sub)) as items:
                for item in items:
                    with contextlib.suppress(FileNotFoundError):
                        total += item.stat(follow_symlinks=False).st_size
        return total

    def _make_room(self, needed: int, *, keep: Iterable[str] = ()) -> None:
        """Evict least-recently-used entries nobody uses until ``needed`` more bytes fit.

        Call with ``cache.lock`` held. Raises :class:`StagingError` when they cannot fit: the
        object is larger than the cache, or what is left is in use by running jobs.
        """
        if needed > self.max_bytes:
            raise StagingError(f"{needed} bytes do not fit in the staging cache ({self.max_bytes} bytes); "
                               "raise STAGING_CACHE_BYTES")
        total = self.size()
        if total + needed <= self.max_bytes:
            return
        keep = set(keep)
        entries = []
        with os.scandir(os.path.join(self.directory, "objects")) as items:
            for item in items:
                with contextlib.suppress(FileNotFoundError):
                    stat = item.stat(follow_symlinks=False)
                    entries.append((stat.st_mtime_ns, item.name, stat.st_size))
        for _, name, entry_size in sorted(entries):
            if total + needed <= self.max_bytes:
                return
            if name in keep:
                continue
            try:
                fd = _lock_file(self._lock(name, "use"), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a job is reading it
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._entry(name))
                    total -= entry_size
            finally:
                os.close(fd)
        if total + needed > self.max_bytes:
            raise StagingError(f"the staging cache is full ({total} of {self.max_bytes} bytes, in use by running "
                               f"jobs); {needed} more bytes do not fit now")

    @contextlib.contextmanager
    def using(self, store: storage.Storage, item: storage.Entry, *,
              keep: Iterable[str] = ()) -> Iterator[tuple[str, bool]]:
        """The local path of object ``item`` (a listing entry: URL, size, ETag), fetched if not cached.

        The entry cannot be evicted until the block ends. Yields ``(path, fetched)`` where
        ``fetched`` says whether this call fetched it.
        """
        name = self.entry_name(item.path, item.etag)
        use = _lock_file(self._lock(name, "use"), fcntl.LOCK_SH)
        try:
            fetched = self._ensure(store, item, name, keep=keep)
            yield self._entry(name), fetched
        finally:
            os.close(use)

    def _ensure(self, store: storage.Storage, item: storage.Entry, name: str, *, keep: Iterable[str]) -> bool:
        target = self._entry(name)
        fetch = _lock_file(self._lock(name, "fetch"), fcntl.LOCK_EX)
        try:
            if os.path.isfile(target) and os.stat(target).st_size == item.size:
                os.utime(target)  # a use: least recently used is what goes first
                return False
            global_lock = _lock_file(os.path.join(self.directory, "cache.lock"), fcntl.LOCK_EX)
            try:
                self._make_room(item.size, keep=[*keep, name])
                fd, temp = tempfile.mkstemp(dir=os.path.join(self.directory, "tmp"), prefix=f"{os.getpid()}-")
                os.ftruncate(fd, item.size)  # counted at full size from now on
            finally:
                os.close(global_lock)
            try:
                try:
                    store.download(item.path, fd, size=item.size, etag=item.etag,  # type: ignore[attr-defined]
                                   part_size=self.part_size, concurrency=self.concurrency)
                except FileNotFoundError as exc:
                    raise StagingError(str(exc)) from None
                except storage.StorageError as exc:
                    raise StagingError(str(exc)) from None
            except BaseException:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
            os.close(fd)
            os.chmod(temp, 0o644)
            os.replace(temp, target)
            return True
        finally:
            os.close(fetch)

    def remove_stale(self) -> list[str]:
        """Remove temporary files and views left by processes of this machine that have died."""
        removed = []
        for sub in ("tmp", "views"):
            with os.scandir(os.path.join(self.directory, sub)) as items:
                for item in items:
                    pid = item.name.split("-", 1)[0]
                    if not pid.isdigit() or _alive(int(pid)):
                        continue
                    if item.is_dir(follow_symlinks=False):
                        shutil.rmtree(item.path, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(item.path)
                    removed.append(item.path)
        return removed

    # --- checkpoints ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def stage(self, directory: str, prefix: str, *, meta: str | None = None,
              listing: list[storage.Entry] | None = None) -> Iterator[StagedCheckpoint]:
        """Stage checkpoint ``prefix`` of the run at URL ``directory`` for the duration of the block.

        Stages its ``.index``, every ``.data-*`` shard, and ``meta`` (the base name of the ``.meta``
        it restores with: its own or its meta source's) into a fresh directory of hard links, so
        TensorFlow reads ``staged.path`` unmodified. The run is listed once (or ``listing`` is
        used) for sizes and ETags. A missing ``.index`` or ``meta`` raises :class:`StagingError`;
        a missing shard is left for TensorFlow to report as it would locally.
        """
        self.remove_stale()
        store = storage.storage_for(directory)
        if listing is None:
            try:
                listing = store.list(directory)
            except storage.StorageError as exc:
                raise StagingError(str(exc)) from None
        by_name = {e.name: e for e in listing}
        wanted = [n for n in sorted(by_name) if n == prefix + ".index" or n.startswith(prefix + ".data-")]
        if prefix + ".index" not in by_name:
            raise StagingError(f"{storage.join(directory, prefix + '.index')} is not in the bucket")
        if meta:
            if meta not in by_name:
                raise StagingError(f"{storage.join(directory, meta)} is not in the bucket")
            wanted.append(meta)
        needed = sum(by_name[n].size for n in wanted)
        if needed > self.max_bytes:
            raise StagingError(f"{prefix} needs {needed} bytes, more than the staging cache holds "
                               f"({self.max_bytes} bytes); raise STAGING_CACHE_BYTES")
        view = tempfile.mkdtemp(dir=os.path.join(self.directory, "views"), prefix=f"{os.getpid()}-")
        staged = StagedCheckpoint(view, prefix, meta=os.path.join(view, meta) if meta else None)
        names = [self.entry_name(by_name[n].path, by_name[n].etag) for n in wanted]
        try:
            with contextlib.ExitStack() as stack:
                for name in wanted:
                    item = by_name[name]
                    local, fetched = stack.enter_context(self.using(store, item, keep=names))
                    if fetched:
                        staged.fetched.append(item.path)
                        staged.fetched_bytes += item.size
                    os.link(local, os.path.join(view, name))
                yield staged
        finally:
            shutil.rmtree(view, ignore_errors=True)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:  # not Linux: without a boot id the cache is kept across reboots
        return "unknown"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

