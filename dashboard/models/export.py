"""A file or directory made from a checkpoint (frozen graph, SavedModel, TFLite, ONNX), as verified when written."""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from persistence import files, storage, tarball

# ``verification['archive']`` of a directory export whose archive is streamed from the directory.
ARCHIVE_STREAMED = "streamed"


class Export(models.Model):
    FROZEN_PB, SAVED_MODEL, TFLITE, ONNX = "frozen_pb", "saved_model", "tflite", "onnx"
    KIND_CHOICES = [
        (FROZEN_PB, "Frozen GraphDef (.pb)"),
        (SAVED_MODEL, "SavedModel (directory, downloads as .tar)"),
        (TFLITE, "TFLite (.tflite)"),
        (ONNX, "ONNX (.onnx)"),
    ]
    # What each kind's path ends with; a SavedModel is a directory, downloaded as a .tar of it.
    SUFFIXES = {FROZEN_PB: ".pb", SAVED_MODEL: ".savedmodel", TFLITE: ".tflite", ONNX: ".onnx"}

    checkpoint = models.ForeignKey("dashboard.Checkpoint", related_name="exports", on_delete=models.PROTECT)
    kind = models.CharField(max_length=16, choices=KIND_CHOICES, default=FROZEN_PB)
    path = models.CharField(max_length=1024)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    inputs = models.JSONField(default=list)
    outputs = models.JSONField(default=list)
    node_count = models.PositiveIntegerField(default=0)
    op_histogram = models.JSONField(default=dict)
    max_abs_diff = models.FloatField(null=True, blank=True)
    verified = models.BooleanField(default=False)
    verification = models.JSONField(default=dict, blank=True)
    # The file's mtime when it was verified: with the size, what tells "changed on disk" cheaply.
    file_mtime_ns = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-created_at"]
        # One row per file: two rows for one path made every later freeze of it fail.
        constraints = [models.UniqueConstraint(fields=["path"], name="unique_export_path")]
        # The exports list, newest first, by keyset (views/paging.py).
        indexes = [models.Index(fields=["created_at", "id"], name="export_created_id")]

    def __str__(self) -> str:
        return f"{self.checkpoint} → {self.path}"

    def get_absolute_url(self) -> str:
        return reverse("export", args=[self.pk])

    @property
    def display_name(self) -> str:
        """The export's name within its step directory (``probs`` for ``.../300/probs.pb``)."""
        return Path(self.path).stem

    @property
    def file_name(self) -> str:
        """``probs.pb``, ``probs.savedmodel``, ``probs.tflite``: the export's name on disk."""
        return Path(self.path).name

    @property
    def is_directory(self) -> bool:
        return self.kind == self.SAVED_MODEL

    @property
    def in_bucket(self) -> bool:
        """Copied into a bucket (``EXPORT_ROOT=s3://...``): its path is the object's URL."""
        return storage.is_url(self.path)

    def file_path(self) -> Path:
        """The export's file (a SavedModel: its directory), resolved with symlinks; raises
        ``files.PathOutsideRoots`` unless inside ``EXPORT_ROOT`` (a local one: an export in a bucket
        is read through ``dashboard.export_storage``)."""
        if self.in_bucket or storage.is_url(str(settings.EXPORT_ROOT)):
            raise files.PathOutsideRoots(f"{self.path} is not a file under the export root")
        return files.resolve_inside(self.path, [settings.EXPORT_ROOT])

    def archive(self) -> tarball.ArchiveLayout:
        """A directory export's archive as downloads stream it (its entries under the directory's
        name); raises ``files.PathOutsideRoots``, ``tarball.ArchiveChanged`` or ``OSError``."""
        return tarball.archive_layout(self.file_path(), top=Path(self.path).name)

    @property
    def streams_archive(self) -> bool:
        """Recorded from the directory itself (no ``.tar`` written beside it at export time)."""
        return self.verification.get("archive") == ARCHIVE_STREAMED

    def disk_change(self, info: os.stat_result | tarball.ArchiveLayout | None = None) -> str | None:
        """Why the file no longer is the one that was verified (None: it still is, as far as size
        and mtime tell). ``info``: an ``fstat`` of the opened file (a directory: its archive's
        layout), else the path is looked at. An export in a bucket is only compared when ``info``
        is given: pages list many exports and make no request per row."""
        if info is None and self.in_bucket:
            return None
        if info is None:
            try:
                info = self.archive() if self.is_directory else os.stat(self.file_path())
            except tarball.ArchiveChanged as exc:
                return str(exc.strerror)
            except (OSError, files.PathOutsideRoots):
                return "missing"
        if info.st_size != self.size_bytes:
            return f"{info.st_size} bytes on disk, not the {self.size_bytes} recorded"
        if self.file_mtime_ns is None:
            return None
        if self.is_directory and not self.streams_archive:
            # Recorded with the mtime of the .tar that was written once the directory was
            # complete: nothing in the directory is newer unless it changed since.
            if info.st_mtime_ns > self.file_mtime_ns:
                return "modified after it was verified"
        elif info.st_mtime_ns != self.file_mtime_ns:
            return "modified after it was verified"
        return None

    def download_filename(self) -> str:
        """``<run>-step<step>-<name>.<ext>``: chosen by the server, never taken from the request."""

        step = f"step{self.checkpoint.step}" if self.checkpoint.step is not None else "nostep"
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{self.checkpoint.run.name}-{step}-{self.display_name}")
        extension = ".tar" if self.is_directory else self.SUFFIXES.get(self.kind, ".pb")
        return f"{name.strip('_') or 'export'}{extension}"

    def as_json(self) -> dict:
        """What ``manage.py freeze --json`` prints (and a freeze job stores) for the export."""
        return {
            "id": self.pk, "kind": self.kind, "path": self.path, "sha256": self.sha256, "size_bytes": self.size_bytes,
            "outputs": self.outputs, "max_abs_diff": self.max_abs_diff, "verified": self.verified,
        }
