"""Make latest (rollback): maintainers only, POST, atomic state-file rewrite TensorFlow agrees with, audited.

Also: which checkpoint actions each role sees, and that none of these web paths imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from django.urls import reverse

from dashboard import scanning
from dashboard.models import AuditEvent, Checkpoint, Run
from tests import checkpoint_factory as factory
from tests.live import BASE_DIR

pytestmark = [pytest.mark.tf, pytest.mark.django_db]


@pytest.fixture(scope="module")
def seed_template(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seed-template") / "seed"
    return factory.make_seed_run(directory, steps=(100, 200, 300))


@pytest.fixture
def seed(seed_template, checkpoint_root) -> Run:
    directory = checkpoint_root / "seed"
    shutil.copytree(seed_template.directory, directory)
    run = Run.objects.create(name="seed", directory=str(directory))
    scanning.scan(run)
    return run


def latest_checkpoint(directory: str) -> str:
    import tensorflow as tf

    return os.path.basename(tf.train.latest_checkpoint(directory))


def make_latest_url(checkpoint: Checkpoint) -> str:
    return reverse("checkpoint-make-latest", args=[checkpoint.run.name, checkpoint.pk])


def test_maintainer_rolls_back_to_an_older_checkpoint(client, maintainer, seed):
    older = seed.checkpoints.get(prefix="model.ckpt-200")
    assert latest_checkpoint(seed.directory) == "model.ckpt-300"
    client.force_login(maintainer)

    response = client.post(make_latest_url(older), follow=True)

    assert response.redirect_chain[-1][0] == older.get_absolute_url()
    assert "model.ckpt-200 is now the latest checkpoint (was model.ckpt-300)" in response.content.decode()
    # TensorFlow itself now restores the chosen one, and still lists every checkpoint.
    assert latest_checkpoint(seed.directory) == "model.ckpt-200"
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(seed.directory)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        "model.ckpt-100", "model.ckpt-200", "model.ckpt-300"
    ]
    rows = dict(seed.checkpoints.values_list("prefix", "latest_in"))
    assert rows["model.ckpt-200"] == ["checkpoint"] and rows["model.ckpt-300"] == []
    assert rows["subset.ckpt-300"] == ["subset_checkpoint"]  # the other state file is untouched
    seed.refresh_from_db()
    assert seed.latest_prefix == "model.ckpt-200"
    event = AuditEvent.objects.get(action="make_latest")
    assert event.actor == maintainer and event.checkpoint == older and event.run == seed
    assert "was model.ckpt-300" in event.summary and event.details["previous_latest"] == "model.ckpt-300"
    # No leftover temporary file beside the state file.
    assert not [n for n in os.listdir(seed.directory) if ".partial-" in n]


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_only_maintainers_can_make_latest(client, request, seed, role):
    older = seed.checkpoints.get(prefix="model.ckpt-100")
    before = open(os.path.join(seed.directory, "checkpoint")).read()
    client.force_login(request.getfixturevalue(role))
    assert client.post(make_latest_url(older)).status_code == 403
    assert open(os.path.join(seed.directory, "checkpoint")).read() == before
    assert not AuditEvent.objects.exists()


def test_make_latest_is_post_only(client, maintainer, seed):
    client.force_login(maintainer)
    assert client.get(make_latest_url(seed.checkpoints.get(prefix="model.ckpt-100"))).status_code == 405
    assert latest_checkpoint(seed.directory) == "model.ckpt-300"


@pytest.mark.parametrize("status", [Checkpoint.CORRUPT, Checkpoint.PRUNED, Checkpoint.MISSING])
def test_unusable_checkpoints_cannot_be_made_latest(client, maintainer, seed, status):
    older = seed.checkpoints.get(prefix="model.ckpt-100")
    Checkpoint.objects.filter(pk=older.pk).update(status=status)
    client.force_login(maintainer)
    html = client.post(make_latest_url(older), follow=True).content.decode()
    assert f"Not changed: model.ckpt-100 is {status}" in html
    assert latest_checkpoint(seed.directory) == "model.ckpt-300"
    assert not AuditEvent.objects.exists()


def test_checkpoint_page_shows_each_role_its_actions(client, viewer, operator, maintainer, seed):
    older = seed.checkpoints.get(prefix="model.ckpt-200")
    latest = seed.checkpoints.get(prefix="model.ckpt-300")
    freeze = reverse("checkpoint-freeze", args=["seed", older.pk])
    verify = reverse("checkpoint-verify", args=["seed", older.pk])

    def page(user, checkpoint=older):
        client.force_login(user)
        return client.get(checkpoint.get_absolute_url()).content.decode()

    html = page(viewer)
    assert freeze not in html and verify not in html and make_latest_url(older) not in html
    html = page(operator)
    assert freeze in html and verify in html and make_latest_url(older) not in html
    html = page(maintainer)
    assert freeze in html and verify in html and make_latest_url(older) in html
    assert make_latest_url(latest) not in page(maintainer, latest)  # already the latest


def test_web_paths_for_freeze_verify_and_make_latest_do_not_import_tensorflow(seed_template, tmp_path):
    """Render the freeze form (suggestions from the .meta), validate names, make latest: no TensorFlow."""
    directory = tmp_path / "roots" / "seed"
    shutil.copytree(seed_template.directory, directory)
    script = textwrap.dedent(f"""
        import json, os, sys
        os.environ.update(VAR_DIR={str(tmp_path / "var")!r}, CHECKPOINT_ROOTS={str(tmp_path / "roots")!r},
                          EXPORT_ROOT={str(tmp_path / "exports")!r}, DJANGO_SETTINGS_MODULE="dashboard.settings")
        os.environ.pop("DATABASE_URL", None)
        import django
        django.setup()
        from django.core.management import call_command
        call_command("migrate", verbosity=0)
        import datetime as dt
        from django.contrib.auth.models import User
        from django.test import Client
        from dashboard.models import Checkpoint, Run
        run = Run.objects.create(name="seed", directory={str(directory)!r})
        now = dt.datetime.now(dt.UTC)
        first = Checkpoint.objects.create(run=run, prefix="model.ckpt-100", step=100, saved_at=now,
                                          has_own_meta=True)
        later = Checkpoint.objects.create(run=run, prefix="model.ckpt-200", step=200, saved_at=now,
                                          meta_source=first)
        client = Client()
        client.force_login(User.objects.create_superuser("root", password="pw-for-tests-only"))
        form = client.get(f"/runs/seed/checkpoints/{{later.pk}}/freeze/").content.decode()
        bad = client.post(f"/runs/seed/checkpoints/{{later.pk}}/freeze/", {{"other_outputs": "prob"}})
        made = client.post(f"/runs/seed/checkpoints/{{later.pk}}/make-latest/")
        exports = client.get("/exports/")
        print(json.dumps({{
            "suggests_probs": 'value="probs"' in form and "checked" in form,
            "closest": "closest: probs" in bad.content.decode(),
            "made_latest": made.status_code == 302 and Run.objects.get().latest_prefix == "model.ckpt-200",
            "exports_page": exports.status_code,
            "tensorflow": "tensorflow" in sys.modules,
        }}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    result = subprocess.run([sys.executable, "-c", script], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"suggests_probs": True, "closest": True, "made_latest": True, "exports_page": 200,
                      "tensorflow": False}
