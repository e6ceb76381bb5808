"""Re-checking an export on disk: accepted again when its bytes are what was verified.

Pure Python, safe in the web process (the export page's "check again" calls it).
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from persistence import files

from . import export_storage, webhooks
from .models import AuditEvent, Export
from .models.export import ARCHIVE_STREAMED

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    User = AbstractBaseUser | AnonymousUser


def recheck_export(export: Export, *, actor: User | None = None) -> bool:
    """Hash the file again; if it is byte for byte what was verified, accept its new mtime.

    A directory export is hashed as the archive its downloads stream, read from the directory:
    a file changed, added or removed since the export changes that digest. Returns True when
    the export is whole again, False when its contents differ (export again). Audited either way.
    """
    if export.in_bucket:
        # Read back from the bucket; the objects' current ETags are accepted with the bytes.
        size, digest, objects = export_storage.rehash(export)
        same = size == export.size_bytes and digest == export.sha256
        if same:
            export.verification = {**export.verification, "objects": objects}
            export.save(update_fields=["verification"])
        return _recorded(export, same, digest, size, actor)
    if export.is_directory:
        # Listed before hashing, each file checked against the listing when it is read: one
        # changed meanwhile stops the hash (ArchiveChanged, an OSError) instead of being accepted.
        info = export.archive()
        digest = info.sha256()
    else:
        with open(files.open_regular_file(export.file_path()), "rb") as handle:
            info = os.fstat(handle.fileno())
            hashing = hashlib.sha256()
            while chunk := handle.read(1 << 20):
                hashing.update(chunk)
        digest = hashing.hexdigest()
    same = info.st_size == export.size_bytes and digest == export.sha256
    if same:
        export.file_mtime_ns = info.st_mtime_ns
        if export.is_directory:
            export.verification = {**export.verification, "archive": ARCHIVE_STREAMED}
        export.save(update_fields=["file_mtime_ns", "verification"])
    return _recorded(export, same, digest, info.st_size, actor)


def _recorded(export: Export, same: bool, digest: str, size: int, actor: User | None) -> bool:
    AuditEvent.record(
        "export_recheck",
        f"Export #{export.pk} ({export.file_name}): "
        + ("contents unchanged, accepted again" if same else "contents changed on disk; refused until frozen again"),
        actor=actor, run=export.checkpoint.run, checkpoint=export.checkpoint,
        details={"sha256_on_disk": digest, "size_on_disk": size},
    )
    if not same:
        webhooks.emit(webhooks.EXPORT_FAILED, export)
    return same
