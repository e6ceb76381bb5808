"""Two freezes of one checkpoint never destroy each other.

One freeze per export file at a time: a second one is refused with a link to the running job, from
the form, the queue and the command alike. A freeze into the same directory (other outputs) leaves
the running one's temporary file alone: only files of writers that have ended are cleaned. The
database holds one export row per file.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.urls import reverse

from dashboard import artifacts, jobs, scanning
from dashboard.models import Checkpoint, Export, Job, Run
from persistence import files
from tests import checkpoint_factory as factory
from tests.live import LiveWorker, wait_for

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def seed_template(tmp_path_factory):
    return factory.make_seed_run(tmp_path_factory.mktemp("freeze-once") / "seed", steps=(100, 200))


@pytest.fixture
def seed(seed_template, checkpoint_root, db) -> Run:
    directory = checkpoint_root / "seed"
    shutil.copytree(seed_template.directory, directory)
    run = Run.objects.create(name="seed", directory=str(directory))
    scanning.scan(run)
    yield run
    jobs.get_queue().empty()  # nothing runs these jobs


def test_a_second_freeze_of_the_same_outputs_is_refused_with_the_running_job(client, operator, seed, capsys):
    checkpoint = seed.checkpoints.get(prefix="model.ckpt-200")
    first = jobs.start(Job.FREEZE, run=seed, checkpoint=checkpoint, params={"outputs": ["probs"]})

    # The queue: refused, naming the job (a retry goes the same way).
    with pytest.raises(Checkpoint.FreezeRunning) as refused:
        jobs.start(Job.FREEZE, run=seed, checkpoint=checkpoint, params={"outputs": [" probs", "probs"]})
    assert refused.value.job == first and f"job #{first.pk}" in str(refused.value)

    # The form: nothing started, the message links to the running job.
    client.force_login(operator)
    response = client.post(reverse("checkpoint-freeze", args=["seed", checkpoint.pk]), {"outputs": ["probs"]},
                           follow=True)
    html = response.content.decode()
    assert "Not started" in html and f'<a href="{first.get_absolute_url()}">Job #{first.pk}</a>' in html
    assert list(Job.objects.filter(kind=Job.FREEZE)) == [first]

    # The command (inline, no job of its own): refused too, with nothing written.
    with pytest.raises(SystemExit):
        call_command("freeze", str(checkpoint.pk), "--outputs", "probs", "--json", stdout=io.StringIO())
    assert not Export.objects.exists()

    # Other outputs write another file: allowed. The same outputs once the first has ended: allowed.
    other = jobs.start(Job.FREEZE, run=seed, checkpoint=checkpoint, params={"outputs": ["logits"]})
    Job.objects.filter(pk=first.pk).update(status=Job.FAILED)
    again = jobs.start(Job.FREEZE, run=seed, checkpoint=checkpoint, params={"outputs": ["probs"]})
    assert len({first.pk, other.pk, again.pk}) == 3


def test_one_export_row_per_file(seed):
    checkpoint = seed.checkpoints.get(prefix="model.ckpt-200")
    Export.objects.create(checkpoint=checkpoint, path="/exports/seed/200/probs.pb", sha256="a")
    with pytest.raises(IntegrityError), transaction.atomic():
        Export.objects.create(checkpoint=checkpoint, path="/exports/seed/200/probs.pb", sha256="b")


def test_freezing_over_another_checkpoints_export_is_refused(seed, settings):
    # model.ckpt-200 and subset.ckpt-200 share a step, so their exports would share a path.
    mine = seed.checkpoints.get(prefix="model.ckpt-200")
    export = artifacts.freeze(mine, outputs=["probs"])
    theirs = seed.checkpoints.get(prefix="subset.ckpt-200")
    before = open(export.path, "rb").read()
    from persistence.freeze import FreezeError

    with pytest.raises(FreezeError, match="is the export of model.ckpt-200"):
        artifacts.freeze(theirs, outputs=["probs"])
    assert open(export.path, "rb").read() == before and Export.objects.count() == 1


# --- two freezes at once, through a real worker ---------------------------------------------

HIDDEN_UNITS = 8192  # a 64 MiB variable: writing and verifying the .pb takes a good part of a second


def make_large_checkpoint(directory) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    directory.mkdir(parents=True)
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, 2048], name="x")
        kernel = v1.get_variable("kernel", [2048, HIDDEN_UNITS], initializer=v1.random_uniform_initializer(seed=1))
        logits = tf.matmul(x, kernel, name="logits")
        tf.nn.softmax(logits, name="probs")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver().save(sess, str(directory / "model.ckpt"), global_step=1)


def temp_files(directory) -> list[str]:
    try:
        return [n for n in os.listdir(directory) if files.TEMP_MARKER in n]
    except FileNotFoundError:
        return []


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_freeze_into_the_same_directory_leaves_the_running_freeze_alone(tmp_path, settings):
    import tensorflow as tf  # noqa: F401 - imported now, so that the inline freeze below starts at once

    root = (tmp_path / "checkpoints").resolve()
    settings.CHECKPOINT_ROOTS = [root]
    settings.EXPORT_ROOT = (tmp_path / "exports").resolve()
    name = f"big-{uuid.uuid4().hex[:6]}"
    make_large_checkpoint(root / name)
    run = Run.objects.create(name=name, directory=str(root / name))
    scanning.scan(run)
    checkpoint = run.checkpoints.get()
    target_dir = settings.EXPORT_ROOT / name / "1"

    worker = LiveWorker(log_path=tmp_path / "worker.log").start()
    try:
        job = jobs.start(Job.FREEZE, run=run, checkpoint=checkpoint, params={"outputs": ["probs"]})
        (writing,) = wait_for(lambda: temp_files(target_dir), 120, interval=0.002, what="the job's temporary file")
        assert files.temp_file_owner(writing) == f"job{job.pk}"

        # While the job writes probs.pb: the same file from the command is refused...
        with pytest.raises(Checkpoint.FreezeRunning):
            artifacts.freeze(checkpoint, outputs=["probs"])
        # ...and another file in the same directory is written without touching the job's.
        logits = artifacts.freeze(checkpoint, outputs=["logits"])
        assert logits.verified and logits.verification["stale_temp_files_removed"] == []

        wait_for(lambda: (job.refresh_from_db() or job.is_ended), 180, interval=0.1, what="the freeze job")
    finally:
        worker.stop()

    assert job.status == Job.FINISHED, (job.error, (tmp_path / "worker.log").read_text()[-3000:])
    probs = Export.objects.get(path=str(target_dir / "probs.pb"))
    assert probs.verified and os.path.getsize(probs.path) == probs.size_bytes
    assert sorted(os.listdir(target_dir)) == ["logits.pb", "probs.pb"]
