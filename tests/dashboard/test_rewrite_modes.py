"""Files the dashboard rewrites keep their permissions: a trainer, TF Serving or a web server running
as another user must still read the state file after a prune or a rollback, and every export."""

from __future__ import annotations

import io
import os
import shutil
import stat

import pytest
from django.core.management import call_command

from dashboard import artifacts, scanning
from dashboard.models import Checkpoint, Run
from tests import checkpoint_factory as factory

pytestmark = [pytest.mark.tf, pytest.mark.django_db]


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def seed_template(tmp_path_factory):
    directory = tmp_path_factory.mktemp("modes-template") / "seed"
    return factory.make_seed_run(directory, steps=(100, 200, 300, 400))


@pytest.fixture
def seed(seed_template, checkpoint_root) -> Run:
    directory = checkpoint_root / "seed"
    shutil.copytree(seed_template.directory, directory)
    # The copy names the template's directory; a trainer writing here names this one.
    for name in ("checkpoint", seed_template.subset_state_file):
        path = directory / name
        path.write_text(path.read_text().replace(seed_template.directory, str(directory)))
        os.chmod(path, 0o644)
    run = Run.objects.create(name="seed", directory=str(directory))
    scanning.scan(run)
    return run


def test_prune_keeps_the_state_files_mode_and_absolute_paths(seed, umask_022):
    import tensorflow as tf

    directory = seed.directory
    assert f'model_checkpoint_path: "{directory}/model.ckpt-400"' in open(f"{directory}/checkpoint").read()
    os.umask(0o077)  # a worker started with a strict umask must still leave the file readable

    call_command("prune", "seed", "--max-to-keep", "4", "--min-age", "0", stdout=io.StringIO())

    assert set(seed.checkpoints.filter(status=Checkpoint.PRUNED).values_list("prefix", flat=True)) >= {
        "model.ckpt-200"}
    for name in ("checkpoint", "subset_checkpoint"):
        assert mode(f"{directory}/{name}") == 0o644, name
    text = open(f"{directory}/checkpoint").read()
    assert f'model_checkpoint_path: "{directory}/model.ckpt-400"\n' in text
    assert f'all_model_checkpoint_paths: "{directory}/model.ckpt-300"\n' in text
    assert "model.ckpt-200" not in text
    assert tf.train.latest_checkpoint(directory) == f"{directory}/model.ckpt-400"


def test_make_latest_keeps_the_state_files_mode_and_path_style(seed, umask_022):
    os.chmod(f"{seed.directory}/checkpoint", 0o664)
    older = seed.checkpoints.get(prefix="model.ckpt-200")

    artifacts.make_latest(seed, older)

    assert mode(f"{seed.directory}/checkpoint") == 0o664
    assert f'model_checkpoint_path: "{seed.directory}/model.ckpt-200"\n' in open(f"{seed.directory}/checkpoint").read()


def test_export_is_0644_under_umask_022(seed, settings, umask_022):
    checkpoint = seed.checkpoints.get(prefix="model.ckpt-400")

    export = artifacts.freeze(checkpoint, outputs=["probs"])

    assert export.verified and mode(export.path) == 0o644
