"""The run page of a run in a bucket says how it is kept up to date: by the periodic rescan's
polling (at the configured interval), not by a directory watcher."""

from __future__ import annotations

import pytest
from django.urls import reverse

from dashboard.models import Run

pytestmark = pytest.mark.django_db


def test_a_bucket_run_page_names_the_polling_interval_and_a_local_one_does_not(
        client, viewer, settings, checkpoint_root):
    settings.CHECKPOINT_OBJECT_ROOTS = ["s3://ml-bucket/runs"]
    settings.SCAN_INTERVAL_SECONDS = 90.0
    remote = Run.objects.create(name="remote", directory="s3://ml-bucket/runs/a")
    (checkpoint_root / "a").mkdir()
    local = Run.objects.create(name="local", directory=str(checkpoint_root / "a"))
    client.force_login(viewer)
    page = client.get(reverse("run", args=[remote.name])).content.decode()
    assert "Kept up to date by polling, not watched" in page and "every 90 s" in page
    assert "Kept up to date by polling" not in client.get(reverse("run", args=[local.name])).content.decode()

    settings.SCAN_INTERVAL_SECONDS = 0.0
    page = client.get(reverse("run", args=[remote.name])).content.decode()
    assert "not rescanned periodically" in page and "every 0 s" not in page
