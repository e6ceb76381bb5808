"""Watch run directories and report which ones changed, in batches: inotify through ``watchfiles``,
or polling where inotify cannot see the changes.

Plain Python, no Django: the caller says which directories to watch (asked again at every
wake-up, so runs registered later are picked up) and what to do with a batch of changed ones.

What the loop guarantees, because trainers and operators do all of these to run directories:

- A burst (a sharded save, a thousand files copied in at once) is one batch, not one per file:
  ``watchfiles`` groups events until ``quiet_ms`` pass without one (at most ``batch_ms``), and
  events that arrive while the caller handles a batch come as the next one.
- A directory deleted and re-created is watched again: inotify watches an inode, not a name, so
  every wake-up compares each directory's (device, inode) with what is watched and starts over
  when they differ or a directory appears or vanishes. Every (re)start reports all watched
  directories as changed once the new watch is in place, so nothing that happened while no watch
  was in place is lost.
- Where inotify sees nothing (NFS, SMB and other network file systems: another host's writes
  raise no local event) or cannot start (out of inotify instances or watches), it polls.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

logger = logging.getLogger("persistence.watching")

# File systems whose changes made on another host raise no inotify event here.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
    "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs",
    "virtiofs", "vboxsf",
})

Identity = tuple[int, int]  # (st_dev, st_ino) of a watched directory


@dataclass(frozen=True)
class WatchSettings:
    # None: inotify, unless a directory is on a network file system or inotify fails to start.
    polling: bool | None = None
    quiet_ms: int = 100  # a batch ends after this long without a new event ...
    batch_ms: int = 500  # ... or this long after its first event
    poll_interval_ms: int = 300  # how often the polling watcher lists the directories
    recheck_seconds: float = 2.0  # wake-up interval: new runs, deleted or re-created directories


def filesystem_type(path: str, mountinfo: str | None = None) -> str:
    """The type of the file system ``path`` is on ("" when unknown), from ``/proc/self/mountinfo``."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        except OSError:
            return ""
    path = os.path.realpath(path)
    best, best_type = "", ""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if not sep or len(fields) < 5 or not after:
            continue
        # Mount points escape blanks as octal (\040).
        mount = fields[4].encode().decode("unicode_escape")
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, after[0]
    return best_type


def needs_polling(directories: Iterable[str], mountinfo: str | None = None) -> bool:
    """Whether any of ``directories`` is on a file system whose remote changes inotify misses."""
    return any(filesystem_type(d, mountinfo) in NETWORK_FILESYSTEMS for d in directories)


def identities(directories: Iterable[str]) -> dict[str, Identity]:
    """(device, inode) of each directory that exists now (absent ones are left out)."""
    found = {}
    for directory in directories:
        try:
            stat = os.stat(directory)
        except OSError:
            continue
        if os.path.isdir(directory):
            found[directory] = (stat.st_dev, stat.st_ino)
    return found


Backend = Callable[..., Iterator[set[tuple[object, str]]]]


def _watchfiles_backend() -> Backend:
    import watchfiles

    return watchfiles.watch


def watch(
    directories: Callable[[], Iterable[str]],
    on_change: Callable[[set[str]], None],
    *,
    stop: threading.Event,
    settings: WatchSettings = WatchSettings(),  # noqa: B008 - frozen, never mutated
    backend: Backend | None = None,
) -> None:
    """Call ``on_change`` with each batch of changed directories (from ``directories()``) until
    ``stop`` is set.

    ``on_change`` is also called with every watched directory whenever watching (re)starts,
    and with a directory whose identity changed (deleted and re-created). Exceptions raised by
    ``on_change`` are the caller's: it should catch its own, or the loop ends.
    """
    backend = backend or _watchfiles_backend()
    polling_forced = False
    while not stop.is_set():
        current = identities({os.path.realpath(d) for d in directories()})
        if not current:
            stop.wait(settings.recheck_seconds)
            continue
        polling = settings.polling if settings.polling is not None else (polling_forced or needs_polling(current))
        started = False
        batches = backend(
            *sorted(current), stop_event=stop, debounce=settings.batch_ms, step=settings.quiet_ms,
            rust_timeout=int(settings.recheck_seconds * 1000), yield_on_timeout=True,
            force_polling=polling, poll_delay_ms=settings.poll_interval_ms, recursive=False,
            raise_interrupt=False, ignore_permission_denied=True, watch_filter=None,
        )
        try:
            for changes in batches:
                changed = {d for d in (_directory_of(path, current) for _, path in changes) if d}
                if not started:
                    # Started or restarted: report every directory, since events between two watches
                    # are lost. Only now, with the watch in place (the backend starts it when first
                    # asked and yields a first batch, empty on a timeout): reported before that, a
                    # file written between the report and the watch would be seen by neither.
                    changed |= set(current)
                    started = True
                if changed:
                    on_change(changed)
                if identities({os.path.realpath(d) for d in directories()}) != current:
                    break  # a run was added or removed, or a directory vanished or came back
        except FileNotFoundError:
            continue  # a directory vanished while the watch started: look again
        except (OSError, RuntimeError) as exc:
            if polling or started:
                # A failure once watching ran (a directory went away under the watch) is not
                # inotify being unavailable: start over as before.
                logger.warning("watching failed: %s; starting again in %.0f s", exc, settings.recheck_seconds)
                stop.wait(settings.recheck_seconds)
            else:
                # Out of inotify instances or watches (fs.inotify.max_user_*), or no inotify at all.
                logger.warning("inotify is unavailable (%s): polling every %d ms instead", exc,
                               settings.poll_interval_ms)
                polling_forced = True
        finally:
            batches.close()  # the inotify instance goes now, not whenever the generator is collected


def _directory_of(path: str, watched: dict[str, Identity]) -> str | None:
    # Non-recursive watches: an event is about an entry of a watched directory, or the directory.
    if path in watched:
        return path
    parent = os.path.dirname(path)
    return parent if parent in watched else None
