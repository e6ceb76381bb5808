from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import User

from dashboard import summaries
from dashboard.access import ensure_roles
from dashboard.models import Checkpoint, Run


def make_user(username: str, role: str | None) -> User:
    user = User.objects.create_user(username, password="pw-for-tests-only")
    if role:
        user.groups.add(ensure_roles()[role])
    return user


@pytest.fixture
def viewer(db) -> User:
    return make_user("vera-viewer", "viewer")


@pytest.fixture
def operator(db) -> User:
    return make_user("oscar-operator", "operator")


@pytest.fixture
def maintainer(db) -> User:
    return make_user("maya-maintainer", "maintainer")


def add_checkpoint_rows(run: Run, n: int, *, start_step: int = 1) -> None:
    """Rows only (no files): for page tests that are about rendering and queries, not discovery."""
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    Checkpoint.objects.insert_many([
        {
            "run_id": run.pk, "prefix": f"model.ckpt-{step}", "step": step,
            "saved_at": base + dt.timedelta(seconds=step), "size_bytes": 1000 + step,
            "files": [{"name": f"model.ckpt-{step}.index", "size": 100}], "metrics": {"loss": 1.0 / step},
        }
        for step in range(start_step, start_step + n)
    ])
    # Written around the operations: bring the cached summary and metric rows up to date.
    summaries.rebuild([run])


@pytest.fixture
def demo_rows(db, checkpoint_root) -> Run:
    directory = checkpoint_root / "rows"
    directory.mkdir()
    run = Run.objects.create(name="rows", directory=str(directory))
    add_checkpoint_rows(run, 3)
    return run
