"""Exports in a bucket (``EXPORT_ROOT=s3://bucket/prefix``): where they go, how a verified export
is copied in, how it is checked, re-hashed and staged for TF Serving.

The export itself is written and verified exactly as a local one, in a scratch directory under
``EXPORT_WORK_DIR``; ``persistence.exportstore`` then copies it in through temporary keys, so a
worker killed at any point leaves nothing at a final key (its temporary keys are removed by the
next export). The ``Export`` row records the URL as its path and the objects' manifest (relative
path, size, ETag) in ``verification["objects"]``: what downloads and re-checks compare with.
Nothing here runs at import time in the web process: the bucket client is made on first use.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from persistence import exportstore, files, storage

from .models import Export, temp_owner_ended


def bucket_root() -> str | None:
    """``EXPORT_ROOT`` when it is a bucket URL, else None (exports go to a local directory)."""
    root = str(settings.EXPORT_ROOT)
    return root if storage.is_url(root) else None


def inside_root(url: str) -> str:
    """``url`` in canonical form when it is inside the bucket ``EXPORT_ROOT`` now; raise
    ``files.PathOutsideRoots`` otherwise (another bucket, another prefix, a local root)."""
    root = bucket_root()
    try:
        if root is None:
            raise storage.OutsideRoots(f"{url} is not inside the export root")
        return storage.resolve_inside(url, [root])
    except storage.OutsideRoots as exc:
        raise files.PathOutsideRoots(str(exc).replace("checkpoint roots", "export root")) from None


def export_url(root: str, *parts: str) -> str:
    """``root/part/...``, each part a base name; raise ``files.PathOutsideRoots`` if it would escape."""
    url = root
    try:
        for part in parts:
            url = storage.join(url, part)
    except storage.OutsideRoots as exc:
        raise files.PathOutsideRoots(str(exc)) from None
    return inside_root(url)


def split(url: str) -> tuple[str, str]:
    """``(directory, name)`` of an export URL (``Path`` would fold the ``//`` of the scheme)."""
    directory, _, name = url.rpartition("/")
    return directory, name


def _temp_dir() -> str:
    return storage.join(inside_root(str(settings.EXPORT_ROOT)), exportstore.TEMP_DIR)


@contextlib.contextmanager
def workspace(owner: str | None) -> Iterator[Path]:
    """A local scratch directory the export is written and verified in; removed afterwards.

    A killed writer's workspace is removed by the next export once its job has ended.
    """
    work = Path(settings.EXPORT_WORK_DIR)
    work.mkdir(parents=True, exist_ok=True)
    files.remove_stale_temp_files(work, owner_ended=temp_owner_ended)
    with files.scratch_directory(work / "export", owner=owner) as path:
        yield Path(path)


def publish(written: Path, url: str, data: dict, *, owner: str | None) -> dict:
    """Copy the verified export at ``written`` to ``url``; return what the row records about it.

    An export whose outputs did not match the checkpoint is not copied in at all: the bucket only
    ever holds verified exports. Raises ``FreezeError`` with a message for users.
    """
    from persistence.freeze import FreezeError

    if not data["verified"]:
        raise FreezeError(
            f"the export did not verify (max abs diff {data.get('max_abs_diff')} against the checkpoint): "
            f"nothing was copied to {url}"
        )
    store = storage.storage_for(url)
    writer = owner or files.process_owner()
    delay = float(getattr(settings, "EXPORT_PUBLISH_DELAY_SECONDS", 0) or 0)
    try:
        stale = exportstore.remove_stale_temp_objects(store, _temp_dir(), owner_ended=temp_owner_ended)
        manifest = exportstore.publish(store, written, url, temp_dir=_temp_dir(), owner=writer, sha256=data["sha256"],
                                       after_upload=(lambda: time.sleep(delay)) if delay else None)
        strays = exportstore.remove_strays(store, url, manifest) if written.is_dir() else []
    except (storage.StorageError, files.PathOutsideRoots) as exc:
        raise FreezeError(f"cannot copy the export into the bucket: {exc}") from None
    return {
        "objects": [m.as_list() for m in manifest],
        "mtime_ns": max((m.mtime_ns for m in manifest), default=0),
        "stale_temp_objects_removed": stale,
        "stray_objects_removed": strays,
    }


def manifest(export: Export) -> list[exportstore.StoredObject]:
    return [exportstore.StoredObject.from_list(item) for item in export.verification.get("objects") or []]


def check(export: Export) -> tuple[str, str | None]:
    """``(url, why it is not what was verified)``: the objects looked at now (a HEAD, or a
    LIST per directory of a SavedModel). Raises ``files.PathOutsideRoots`` and ``StorageError``."""
    url = inside_root(export.path)
    objects = manifest(export)
    if not objects:
        return url, "no record of the objects that were copied into the bucket"
    changed, _ = exportstore.current(storage.storage_for(url), url, objects)
    return url, changed


def archive(export: Export, url: str) -> exportstore.tarball.ArchiveLayout:
    return exportstore.archive(storage.storage_for(url), url, manifest(export), top=split(url)[1])


def rehash(export: Export) -> tuple[int, str, list[list]]:
    """Size and sha256 of the export read back from the bucket now, and the manifest with the
    objects' current ETags (what a re-check accepts when the bytes are the verified ones)."""
    url = inside_root(export.path)
    store = storage.storage_for(url)
    objects = manifest(export)
    _, found = exportstore.current(store, url, [exportstore.StoredObject(o.rel, o.is_dir, o.size) for o in objects])
    size, digest = exportstore.sha256_of(store, url, objects, top=split(url)[1])
    now = [[o.rel, o.is_dir, o.size, found[o.rel].etag if o.rel in found else o.etag] for o in objects]
    return size, digest, now


@contextlib.contextmanager
def staged_directory(export: Export) -> Iterator[str]:
    """A local copy of a directory export in a bucket, checked against its manifest, for the block."""
    url, changed = check(export)
    if changed:
        raise ValueError(f"export #{export.pk} in the bucket is not what was verified ({changed}); check it again first")
    with workspace(None) as work:
        local = work / split(url)[1]
        exportstore.download_to(storage.storage_for(url), url, manifest(export), local)
        if exportstore.local_sha256(local) != export.sha256:
            raise ValueError(f"export #{export.pk} read from the bucket is not what was verified")
        yield str(local)
