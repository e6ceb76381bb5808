"""Publishing SavedModels into a TF Serving model base path, and the ``models.config`` that labels them.

TF Serving watches ``<base>/<model>/`` and loads every directory whose name is a number as that
version, as soon as it appears: a version copied in place would be loaded half-written. A version
is therefore copied into a hidden temporary sibling (a name that is not a number, so the server
ignores it) and renamed to its number in one step; a copy killed half-way leaves only the
temporary, which :func:`persistence.files.remove_stale_temp_files` removes later.

``models.config`` (ModelServerConfig in text format, written with TF Serving's own protos) names
every model under the base path, the versions to serve, and labels (``prod`` -> a version) that
clients may ask for instead of a number. It is rewritten atomically whenever a version or a label
changes.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from persistence.files import atomic_directory, atomic_writer, fsync_directory

CONFIG_NAME = "models.config"


class PublishError(Exception):
    """A version could not be published or removed; the message says why."""


@dataclass
class ModelEntry:
    """One model of a base path, as ``models.config`` names it."""

    name: str
    versions: list[int]  # served (kept) versions
    labels: Mapping[str, int] = field(default_factory=dict)  # label -> version; only served versions


def versions_on_disk(base_path: str, model: str) -> list[int]:
    """The published versions of ``model``: its directories named by a number, oldest first."""
    directory = Path(base_path) / model
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    return sorted(int(e.name) for e in entries if e.name.isdigit() and e.is_dir(follow_symlinks=False))


def _same_tree(a: Path, b: Path) -> bool:
    comparison = filecmp.dircmp(a, b)
    if comparison.left_only or comparison.right_only or comparison.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, comparison.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(a / d, b / d) for d in comparison.common_dirs)


def publish_saved_model(export_dir: str, base_path: str, model: str, version: int, *,
                        owner: str | None = None) -> bool:
    """Copy the SavedModel ``export_dir`` to ``<base_path>/<model>/<version>``, atomically.

    Returns False when that version is already published with the same files (nothing done).
    Raises :class:`PublishError` when it is published with other files: a version a server may
    have loaded is never replaced in place.
    """
    if version < 0:
        raise PublishError(f"version {version}: TF Serving versions are non-negative numbers")
    source = Path(export_dir)
    if not (source / "saved_model.pb").is_file():
        raise PublishError(f"{source} is not a SavedModel (no saved_model.pb)")
    target = Path(base_path) / model / str(version)
    if target.exists():
        if _same_tree(source, target):
            return False
        raise PublishError(f"version {version} of {model} is already published with other files; "
                           "a published version is never replaced (remove it first)")
    with atomic_directory(target, owner=owner) as scratch:
        shutil.copytree(source, scratch, symlinks=False)
    return True


def remove_versions(base_path: str, model: str, versions: Iterable[int]) -> list[int]:
    """Delete these published versions (the caller decided none is labelled); return those removed.

    Each is first renamed to a hidden name (the server unloads it at once, and a reader never sees
    a half-deleted version), then deleted.
    """
    removed = []
    directory = Path(base_path) / model
    for version in versions:
        path = directory / str(int(version))
        if not path.is_dir():
            continue
        doomed = directory / f".{version}.removing-{os.getpid()}"
        os.rename(path, doomed)
        fsync_directory(directory)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(int(version))
    return removed


def models_config_text(base_path: str, entries: Iterable[ModelEntry]) -> str:
    """``models.config`` for ``entries`` under ``base_path``, built with TF Serving's protos."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2 as config_pb2

    config = config_pb2.ModelServerConfig()
    for entry in sorted(entries, key=lambda e: e.name):
        model = config.model_config_list.config.add()
        model.name = entry.name
        model.base_path = os.path.join(os.path.abspath(base_path), entry.name)
        model.model_platform = "tensorflow"
        model.model_version_policy.specific.versions.extend(sorted(entry.versions))
        for label, version in sorted(entry.labels.items()):
            if version not in entry.versions:
                raise PublishError(f"label {label} points at version {version} of {entry.name}, which is not served")
            model.version_labels[label] = version
    return text_format.MessageToString(config)


def write_models_config(base_path: str, entries: Iterable[ModelEntry], *, owner: str | None = None) -> str:
    """Write ``<base_path>/models.config`` atomically; return its path."""
    text = models_config_text(base_path, entries)
    path = os.path.join(base_path, CONFIG_NAME)
    with atomic_writer(path, owner=owner) as handle:
        handle.write(text.encode("utf-8"))
    return path


@dataclass
class VersionDecision:
    version: int
    keep: bool
    reasons: list[str]


def plan_versions(versions: Iterable[int], labels: Mapping[str, int], keep_newest: int) -> list[VersionDecision]:
    """Which published versions stay: every labelled one and the newest ``keep_newest``; newest first."""
    ordered = sorted(set(versions), reverse=True)
    labelled: dict[int, list[str]] = {}
    for label, version in labels.items():
        labelled.setdefault(version, []).append(label)
    decisions = []
    for index, version in enumerate(ordered):
        reasons = [f"kept: label {label}" for label in sorted(labelled.get(version, []))]
        if index < keep_newest:
            reasons.append(f"kept: newest {keep_newest}")
        decisions.append(VersionDecision(version, bool(reasons), reasons or [f"removed: beyond the newest {keep_newest}"]))
    return decisions
