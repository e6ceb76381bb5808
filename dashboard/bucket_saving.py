"""A save job into a run in a bucket: train in a local working directory, then upload.

TensorFlow cannot write ``s3://``. The Saver therefore writes into a working directory under
``STAGING_CACHE_DIR/saves`` (removed when the job ends), starting from a checkpoint staged from the
bucket when the job continues one. Each checkpoint is uploaded the moment the Saver has written it
(``persistence.uploads``: data first, ``.index`` last, then a conditional merge into the state
object), and recorded from a listing of the bucket, exactly as a scan of the bucket describes it.

A save never deletes an object in the bucket. ``max_to_keep`` still rotates, but only the working
directory's copies (every checkpoint is uploaded before a later save can rotate it out), and the
state object keeps listing every checkpoint uploaded; rotating checkpoints in the bucket is a
prune's job, under the run's retention policy, with its plan shown first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from persistence import discovery, statefile, storage, uploads

from . import recording
from .models import Checkpoint, Run
from .roots import run_location

if TYPE_CHECKING:
    from persistence.training import SavedCheckpoint

    from .recording import User

SAVES_SUBDIRECTORY = "saves"


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(base: Path) -> None:
    # A worker killed mid-save leaves its working directory; its name starts with the pid.
    with contextlib.suppress(FileNotFoundError), os.scandir(base) as items:
        for item in items:
            pid = item.name.split("-", 1)[0]
            if pid.isdigit() and not _owner_alive(int(pid)) and item.is_dir(follow_symlinks=False):
                shutil.rmtree(item.path, ignore_errors=True)


@contextlib.contextmanager
def working_directory(job_pk: int) -> Iterator[str]:
    """A fresh local directory for the Saver of job ``job_pk``, removed when the block ends."""
    base = Path(settings.STAGING_CACHE_DIR) / SAVES_SUBDIRECTORY
    base.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(base)
    path = tempfile.mkdtemp(dir=base, prefix=f"{os.getpid()}-job{job_pk}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class BucketRun:
    """Where a save job's checkpoints end up when its run is in a bucket."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.url = str(run_location(run.directory))  # checked at the moment of use

    def existing_prefixes(self) -> set[str]:
        """Checkpoints (by ``.index``) in the bucket now: one listing."""
        try:
            entries = storage.storage_for(self.url).list(self.url)
        except storage.StorageError as exc:
            raise uploads.UploadError(f"cannot list {self.url}: {exc}") from None
        return {e.name[: -len(".index")] for e in entries if e.name.endswith(".index")}

    def path(self, prefix: str) -> str:
        return storage.join(self.url, prefix)

    def publish(self, saved: SavedCheckpoint, working: str, *, actor: User | None = None,
                source: Checkpoint | None = None, merge_state: bool = True,
                ) -> tuple[Checkpoint, uploads.MergedState | None]:
        """Upload what one save wrote, merge it into the state object, record it; nothing is deleted.

        Returns the row and the state object as written. ``merge_state=False`` leaves the state
        object alone (a re-save, which locally never touches the state files either; the
        returned state is then None). Raises ``uploads.UploadError``.
        """
        uploads.upload_checkpoint(working, saved.files, self.url)
        merged = None
        if merge_state:
            merged = uploads.merge_state_object(self.url, saved.state_file or statefile.DEFAULT_STATE_FILE,
                                                latest=saved.prefix, saved_at=saved.saved_at)
        return self.record(saved, actor=actor, source=source), merged

    def record(self, saved: SavedCheckpoint, *, actor: User | None = None,
               source: Checkpoint | None = None) -> Checkpoint:
        """Record the uploaded checkpoint ``saved`` from a listing of the bucket: the row a scan
        would make. Raises ``uploads.UploadError`` when its ``.index`` is not there."""
        try:
            listing = discovery.list_directory(self.url)
        except storage.StorageError as exc:
            raise uploads.UploadError(f"cannot list {self.url}: {exc}") from None
        if saved.prefix not in listing.prefixes:
            raise uploads.UploadError(f"{saved.prefix}.index is not in {self.url} after its upload")
        found = next(iter(discovery.describe(listing, [saved.prefix])), None)
        if found is None:
            raise uploads.UploadError(f"{saved.prefix}.index is not in {self.url} after its upload")
        in_bucket = dataclasses.replace(
            saved, path=self.path(saved.prefix), meta_source=found.meta_source,
            # What max_to_keep removed went from the working directory only.
            deleted=[], deleted_files=[], kept_from_rotation={},
        )
        return recording.record_saved(self.run, in_bucket, found=found, actor=actor, source=source)
