"""Exports in a bucket: a verified local export copied in so that no partial object ever sits at a
final key, and read back for downloads and re-checks. Imports no Django, reads no settings.

Publishing uploads every file of the export under the export root's ``.tmp/`` (one flat key per
file, named after the writer so that a dead writer's leftovers can be told from a live one's),
checks each uploaded size, and only then copies the objects to their final keys with server-side
copies (each appears whole or not at all), the ``saved_model.pb`` of a SavedModel last: a reader
that waits for it sees a complete directory. The temporary keys are deleted whatever happens.

What a download or a re-check compares with is the manifest recorded at export time (each
object's relative path, size and ETag): for a SavedModel it also lays out the same reproducible
``.tar`` as a local directory export (``persistence.tarball``), read from the objects.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from persistence import files, tarball
from persistence.storage import Entry, ObjectStorage, StorageError, join

TEMP_DIR = ".tmp"
# Parts of a file are read with one ranged GET each: large enough to keep requests few, small
# enough that a download holds little memory.
READ_BYTES = 8 << 20
# A temporary key whose writer cannot be identified is only taken for a leftover once this old.
UNOWNED_TEMP_MAX_AGE = files.UNOWNED_TEMP_MAX_AGE


class PublishError(StorageError):
    """The export could not be copied into the bucket; nothing was left at its final key(s)."""


@dataclass(frozen=True)
class StoredObject:
    """One entry of an export in a bucket: ``rel`` below the export ('' for a single-file export)."""

    rel: str
    is_dir: bool
    size: int
    etag: str = ""
    mtime_ns: int = 0

    def as_list(self) -> list:
        return [self.rel, self.is_dir, self.size, self.etag]

    @classmethod
    def from_list(cls, item: list) -> StoredObject:
        rel, is_dir, size, etag = item
        return cls(str(rel), bool(is_dir), int(size), str(etag))


def object_url(url: str, rel: str) -> str:
    """The key of ``rel`` below the export ``url`` (the export itself for '')."""
    for part in rel.split("/") if rel else []:
        join(url, part)  # refuses empty, '.', '..' and separators
    return f"{url}/{rel}" if rel else url


def local_entries(local: str | os.PathLike[str]) -> list[StoredObject]:
    """What ``local`` (a file, or a directory of regular files) will be in the bucket, sorted."""
    path = Path(local)
    if not path.is_dir():
        return [StoredObject("", False, path.stat().st_size)]
    found = []
    for member in tarball.archive_layout(path).members[1:]:  # refuses links and special files
        found.append(StoredObject("/".join(member.parts), member.is_dir, member.size))
    return found


def local_sha256(local: str | os.PathLike[str]) -> str:
    """The sha256 an export records for ``local``: the file's, or its directory's archive's."""
    path = Path(local)
    if path.is_dir():
        return tarball.archive_layout(path).sha256()
    digest = hashlib.sha256()
    with open(files.open_regular_file(path), "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def publish(store: ObjectStorage, local: str | os.PathLike[str], url: str, *, temp_dir: str, owner: str,
            sha256: str, after_upload: Callable[[], object] | None = None) -> list[StoredObject]:
    """Copy the verified export ``local`` to ``url`` and return its manifest (final ETags).

    ``sha256`` is what verification recorded: the local bytes are hashed again first, so what is
    uploaded is what was verified. ``after_upload`` runs between the uploads and the copies.
    Raises :class:`PublishError` (nothing at ``url``'s keys from this call) or ``StorageError``.
    """
    entries = local_entries(local)
    if local_sha256(local) != sha256:
        raise PublishError(f"the export changed after it was verified; nothing was copied to {url}")
    token = f"{owner}~{uuid.uuid4().hex}"
    uploads = [e for e in entries if not e.is_dir]
    temps = [join(temp_dir, f"{token}~{i}") for i in range(len(uploads))]
    try:
        for entry, temp in zip(uploads, temps, strict=True):
            store.upload(Path(local, entry.rel) if entry.rel else Path(local), temp)
            found = store.head(temp)
            if found is None or found.size != entry.size:
                raise PublishError(f"the upload of {object_url(url, entry.rel)} arrived incomplete "
                                   f"({found.size if found else 0} of {entry.size} bytes); nothing was copied")
        if after_upload is not None:
            after_upload()
        # A SavedModel is loadable once saved_model.pb is there: it goes in last.
        order = sorted(range(len(uploads)), key=lambda i: (uploads[i].rel.rsplit("/", 1)[-1] == "saved_model.pb", i))
        for i in order:
            store.copy(temps[i], object_url(url, uploads[i].rel))
    finally:
        failed = store.delete_many(temps)
        if failed:
            raise StorageError(f"could not delete {len(failed)} temporary object(s) under {temp_dir}")
    published = []
    for entry in entries:
        if entry.is_dir:
            published.append(entry)
            continue
        found = store.head(object_url(url, entry.rel))
        if found is None or found.size != entry.size:
            raise PublishError(f"{object_url(url, entry.rel)} is not what was copied there")
        published.append(StoredObject(entry.rel, False, found.size, found.etag, found.mtime_ns))
    return published


def remove_strays(store: ObjectStorage, url: str, manifest: list[StoredObject]) -> list[str]:
    """Delete objects in the directories of a directory export that its manifest does not name
    (left by an earlier export of the same name); return their URLs."""
    wanted = {object_url(url, e.rel) for e in manifest}
    directories = [url] + [object_url(url, e.rel) for e in manifest if e.is_dir]
    strays = []
    for directory in directories:
        strays += [e.path for e in store.list(directory) if e.path not in wanted]
    failed = store.delete_many(strays) if strays else {}
    return [s for s in strays if s not in failed]


def remove_stale_temp_objects(store: ObjectStorage, temp_dir: str, *,
                              owner_ended: Callable[[str], bool | None], now: float | None = None) -> list[str]:
    """Delete temporary keys of writers that have ended (a killed worker's uploads); return their names.

    As for local temporary files, a writer that may still be at work keeps its keys.
    """
    now = time.time() if now is None else now
    doomed = []
    for entry in store.list(temp_dir):
        owner, sep, _ = entry.name.partition("~")
        ended = owner_ended(owner) if sep else None
        if ended is None and sep:
            ended = files.process_owner_ended(owner)
        if ended is None:
            ended = now - entry.mtime_ns / 1e9 > UNOWNED_TEMP_MAX_AGE
        if ended:
            doomed.append(entry)
    failed = store.delete_many([e.path for e in doomed]) if doomed else {}
    return [e.name for e in doomed if e.path not in failed]


def current(store: ObjectStorage, url: str, manifest: list[StoredObject]) -> tuple[str | None, dict[str, Entry]]:
    """Why the objects at ``url`` are no longer those recorded (None: they are), and their entries by ``rel``."""
    found: dict[str, Entry] = {}
    if len(manifest) == 1 and manifest[0].rel == "":
        entry = store.head(url)
        if entry is not None:
            found[""] = entry
    else:
        directories = {url} | {object_url(url, e.rel) for e in manifest if e.is_dir}
        by_path = {e.path: e for d in sorted(directories) for e in store.list(d)}
        found = {e.rel: by_path[object_url(url, e.rel)] for e in manifest
                 if not e.is_dir and object_url(url, e.rel) in by_path}
    for expected in manifest:
        if expected.is_dir:
            continue
        entry = found.get(expected.rel)
        name = expected.rel or url.rsplit("/", 1)[-1]
        if entry is None:
            return "missing", found
        if entry.size != expected.size:
            return f"{name}: {entry.size} bytes in the bucket, not the {expected.size} recorded", found
        if expected.etag and entry.etag != expected.etag:
            return f"{name} was replaced in the bucket after it was verified", found
    return None, found


def read_object(store: ObjectStorage, url: str, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of the object from ``start``, one ranged GET per ``READ_BYTES``."""
    position, end = start, start + length
    while position < end:
        stop = min(end, position + READ_BYTES)
        data = store.read_range(url, position, stop)
        if len(data) != stop - position:
            raise tarball.ArchiveChanged(0, f"{url} is shorter than when it was listed")
        position = stop
        yield data


def archive(store: ObjectStorage, url: str, manifest: list[StoredObject], *, top: str) -> tarball.ArchiveLayout:
    """The archive of a directory export in a bucket: byte for byte the one of the local directory."""
    entries = [(tuple(e.rel.split("/")), e.is_dir, 0 if e.is_dir else e.size, e.mtime_ns) for e in manifest]

    def read(member: tarball.Member, skip: int, length: int) -> Iterator[bytes]:
        return read_object(store, object_url(url, "/".join(member.parts)), skip, length)

    newest = max((e.mtime_ns for e in manifest), default=0)
    return tarball.layout_from_entries(url, entries, top=top, newest=newest, read=read)


def sha256_of(store: ObjectStorage, url: str, manifest: list[StoredObject], *, top: str) -> tuple[int, str]:
    """Size and sha256 of the export as its downloads send it, read from the bucket."""
    if len(manifest) == 1 and manifest[0].rel == "":
        digest = hashlib.sha256()
        for chunk in read_object(store, url, 0, manifest[0].size):
            digest.update(chunk)
        return manifest[0].size, digest.hexdigest()
    layout = archive(store, url, manifest, top=top)
    return layout.st_size, layout.sha256()


def download_to(store: ObjectStorage, url: str, manifest: list[StoredObject], directory: str | os.PathLike[str]) -> None:
    """Write a directory export's objects below the local ``directory`` (for TF Serving, which reads files)."""
    base = Path(directory)
    for entry in manifest:
        target = base.joinpath(*entry.rel.split("/")) if entry.rel else base
        if entry.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            store.download(object_url(url, entry.rel), fd, size=entry.size, etag=entry.etag)
        finally:
            os.close(fd)
