"""Prefixes under bucket roots that hold checkpoints but no run tracks, on the "Track a directory"
page: found by a bounded number of LIST requests, with "more not shown" when the bound cut it short.

Against the loopback S3 server; the objects are small stand-ins (only names are listed, nothing is read).
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from dashboard import roots
from dashboard.models import Run
from persistence import storage

pytestmark = pytest.mark.django_db


@pytest.fixture
def bucket_root(s3_bucket, settings, checkpoint_root):
    settings.CHECKPOINT_OBJECT_ROOTS = [s3_bucket.url("runs")]
    for key in ("runs/a/model.ckpt-1.index", "runs/a/model.ckpt-2.index", "runs/a/checkpoint",
                "runs/team/b/ckpt-1.index", "runs/team/b/eval/events.out.tfevents.1.host",
                "runs/team/notes/readme.txt", "runs/c/ckpt-3.index", "elsewhere/d/ckpt-1.index"):
        s3_bucket.put(key, b"x")
    return s3_bucket


def test_bucket_prefixes_with_checkpoints_are_offered_and_tracked_ones_skipped(bucket_root):
    tracked = [bucket_root.url("runs/c")]
    with storage.count_requests() as requests:
        found, truncated = roots.untracked_checkpoint_directories(tracked)
    assert [(c.path, c.checkpoints, c.suggested_name) for c in found] == [
        (bucket_root.url("runs/a"), 2, "a"), (bucket_root.url("runs/team/b"), 1, "b")]
    assert not truncated
    # One LIST per prefix looked at: runs, a, c, team, team/b, team/notes, team/b/eval.
    assert requests == {"ListObjectsV2": 7}


def test_the_walk_stops_at_its_list_budget_and_says_so(bucket_root):
    with storage.count_requests() as requests:
        found, truncated = roots.untracked_checkpoint_directories([], max_lists=2)
    assert requests == {"ListObjectsV2": 2}
    assert truncated and [c.path for c in found] == [bucket_root.url("runs/a")]
    found, truncated = roots.untracked_checkpoint_directories([], max_depth=1)
    assert truncated and bucket_root.url("runs/team/b") not in [c.path for c in found]
    found, truncated = roots.untracked_checkpoint_directories([], limit=1)
    assert truncated and len(found) == 1


def test_a_prefix_with_more_keys_than_one_page_shows_a_lower_bound(bucket_root):
    import concurrent.futures

    keys = [f"runs/big/model.ckpt-{i:04d}.index" for i in range(1005)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: bucket_root.put(key, b""), keys))
    found, _ = roots.untracked_checkpoint_directories([])
    big = next(c for c in found if c.path == bucket_root.url("runs/big"))
    assert big.more and big.checkpoints == 1000


def test_the_track_page_lists_them_and_tracks_one(client, operator, bucket_root, monkeypatch):
    client.force_login(operator)
    page = client.get(reverse("run-new")).content.decode()
    assert bucket_root.url("runs/team/b") in page and "more not shown" not in page.lower()
    response = client.post(reverse("run-new"), {"directory": bucket_root.url("runs/team/b"), "name": "b"})
    assert response.status_code == 302
    assert Run.objects.get(name="b").directory == bucket_root.url("runs/team/b")
    page = client.get(reverse("run-new")).content.decode()
    assert bucket_root.url("runs/team/b") not in page

    monkeypatch.setattr(roots, "CANDIDATE_MAX_LISTS", 1)
    assert "more not shown" in client.get(reverse("run-new")).content.decode().lower()


def test_an_unreachable_bucket_root_offers_nothing_and_the_page_still_renders(client, operator, settings, s3_env):
    settings.CHECKPOINT_OBJECT_ROOTS = ["s3://no-such-bucket-here/runs"]
    found, _ = roots.untracked_checkpoint_directories([])
    assert found == []
    client.force_login(operator)
    assert client.get(reverse("run-new")).status_code == 200
