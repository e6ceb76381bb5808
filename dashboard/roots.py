"""Where runs may live: the directories below ``CHECKPOINT_ROOTS``."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings

from persistence import files


def checkpoint_directory(path: str) -> Path:
    """Resolve a run directory and check it is an existing directory inside ``CHECKPOINT_ROOTS``.

    Raises ``ValueError`` with a message fit to show next to the form field.
    """
    text = (path or "").strip()
    if not text:
        raise ValueError("Enter a directory.")
    if not os.path.isabs(os.path.expanduser(text)):
        raise ValueError("Enter an absolute path.")
    try:
        real = files.resolve_inside(text, settings.CHECKPOINT_ROOTS)
    except files.PathOutsideRoots:
        roots = ", ".join(str(r) for r in settings.CHECKPOINT_ROOTS)
        raise ValueError(f"This directory is outside the checkpoint roots ({roots}).") from None
    if not real.is_dir():
        raise ValueError("This directory does not exist." if not real.exists() else "This is not a directory.")
    return real
