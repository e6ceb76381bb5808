"""The track-a-directory page's list of untracked checkpoint directories: a bounded walk under
the roots that never follows a symbolic link, and what it offers."""

from __future__ import annotations

import os

import pytest
from django.urls import reverse

from dashboard import roots
from dashboard.models import Run


def _checkpoint_dir(path, steps=(1,)):
    path.mkdir(parents=True, exist_ok=True)
    for step in steps:
        (path / f"model.ckpt-{step}.index").write_bytes(b"")
    return path


def _paths(candidates):
    return [c.path for c in candidates]


@pytest.mark.django_db
def test_lists_untracked_checkpoint_directories_and_skips_tracked_ones(checkpoint_root):
    tracked = _checkpoint_dir(checkpoint_root / "tracked")
    fresh = _checkpoint_dir(checkpoint_root / "team" / "fresh", steps=(1, 2, 3))
    (checkpoint_root / "empty").mkdir()
    found, truncated = roots.untracked_checkpoint_directories([str(tracked)])
    assert _paths(found) == [str(fresh)] and not truncated
    assert found[0].checkpoints == 3 and found[0].suggested_name == "fresh"


@pytest.mark.django_db
def test_symbolic_links_are_never_followed_out_of_the_roots_or_round_in_circles(checkpoint_root, tmp_path):
    outside = _checkpoint_dir(tmp_path / "outside-the-roots")
    os.symlink(outside, checkpoint_root / "escape")
    os.symlink(checkpoint_root, checkpoint_root / "loop")
    os.symlink(outside / "model.ckpt-1.index", checkpoint_root / "linked.index")
    found, truncated = roots.untracked_checkpoint_directories([])
    assert found == [] and not truncated


@pytest.mark.django_db
def test_the_walk_stops_at_its_depth_and_directory_bounds_and_says_so(checkpoint_root):
    deep = checkpoint_root
    for level in range(roots.CANDIDATE_MAX_DEPTH + 1):
        deep = deep / f"level{level}"
    _checkpoint_dir(deep)
    shallow = _checkpoint_dir(checkpoint_root / "shallow")
    found, truncated = roots.untracked_checkpoint_directories([])
    assert _paths(found) == [str(shallow)] and truncated

    for i in range(5):
        _checkpoint_dir(checkpoint_root / f"many{i}")
    found, truncated = roots.untracked_checkpoint_directories([], max_directories=3)
    assert len(found) < 6 and truncated
    found, truncated = roots.untracked_checkpoint_directories([], limit=2)
    assert len(found) == 2 and truncated


@pytest.mark.django_db
def test_the_form_names_the_roots_and_tracks_an_offered_directory(client, operator, checkpoint_root):
    offered = _checkpoint_dir(checkpoint_root / "offered")
    client.force_login(operator)
    html = client.get(reverse("run-new")).content.decode()
    assert f'<code class="checkpoint-root">{checkpoint_root}</code>' in html
    assert f'placeholder="{checkpoint_root}/my-run"' in html
    assert f'value="{offered}"' in html
    response = client.post(reverse("run-new"), {"directory": str(offered), "name": "offered"})
    assert response.status_code == 302 and Run.objects.get(name="offered").directory == str(offered)
    assert f'value="{offered}"' not in client.get(reverse("run-new")).content.decode()
