"""Files are checked when they are used, not only when a run is registered.

A run is registered once; its directory can change under the dashboard at any time. These cases
make the change an attacker with write access to a run directory (or to an export directory)
would make after registration: symbolic links leading out of the roots, a meta graph that is a
link to a secret, a FIFO where an export should be, an export edited in place. Each must be
refused where it is used — scan, verify, freeze, compare, download — without leaking a byte of
what lies outside.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal

import pytest
from django.core.management import call_command
from django.urls import reverse

from dashboard import artifacts, comparing, scanning
from dashboard.models import Checkpoint, Comparison, Export, Run
from persistence import files
from persistence.freeze import FreezeError
from tests.checkpoint_factory import make_seed_run
from tests.dashboard.conftest import make_user

pytestmark = [pytest.mark.tf, pytest.mark.django_db]

SECRET = "hunter2-the-outside-secret"


@pytest.fixture(scope="module")
def seed_template(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seed-template") / "seed"
    make_seed_run(directory, steps=(100, 200, 300))
    return directory


@pytest.fixture
def outside(tmp_path, seed_template):
    """A checkpoint directory and a secret text file outside every root."""
    directory = tmp_path / "outside"
    shutil.copytree(seed_template, directory / "seed")
    (directory / "secret.txt").write_text(f"{SECRET} more private words\n")
    return directory


@pytest.fixture
def run(checkpoint_root, seed_template) -> Run:
    directory = checkpoint_root / "seed"
    shutil.copytree(seed_template, directory)
    run = Run.objects.create(name="seed", directory=str(directory))
    scanning.scan(run)
    return run


def link_checkpoint(directory, prefix: str, target_directory, target_prefix: str) -> None:
    """Replace (or create) ``prefix``'s index and data in ``directory`` with links to another checkpoint."""
    for suffix in (".index", ".data-00000-of-00001"):
        path = os.path.join(directory, prefix + suffix)
        if os.path.lexists(path):
            os.remove(path)
        os.symlink(os.path.join(target_directory, target_prefix + suffix), path)


def command(*args: str) -> tuple[int, dict]:
    out = io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=io.StringIO())
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, json.loads(out.getvalue())


def test_a_link_added_after_registration_never_enters_the_history(run, outside):
    link_checkpoint(run.directory, "model.ckpt-997", outside / "seed", "model.ckpt-300")
    scanning.scan(run, full=True)
    assert not run.checkpoints.filter(prefix="model.ckpt-997").exists()
    assert any("model.ckpt-997.index is a symbolic link" in p for p in Run.objects.get(pk=run.pk).scan_problems)


def test_a_link_inside_the_roots_is_still_followed(run, checkpoint_root, seed_template):
    # Links are not forbidden as such: only where they lead counts.
    other = checkpoint_root / "other"
    shutil.copytree(seed_template, other)
    link_checkpoint(run.directory, "model.ckpt-998", other, "model.ckpt-300")
    scanning.scan(run, full=True)
    assert run.checkpoints.get(prefix="model.ckpt-998").status == Checkpoint.PRESENT


def test_freeze_verify_and_compare_refuse_files_swapped_for_links_after_the_scan(run, outside, settings):
    recorded = run.checkpoints.get(prefix="model.ckpt-300")
    other = run.checkpoints.get(prefix="model.ckpt-200")
    link_checkpoint(run.directory, recorded.prefix, outside / "seed", "model.ckpt-300")

    with pytest.raises(FreezeError, match="leads outside the allowed roots"):
        artifacts.freeze(recorded, outputs=["probs"])
    assert not os.path.exists(settings.EXPORT_ROOT / "seed" / "300" / "probs.pb")
    assert not Export.objects.exists()

    code, report = command("freeze", str(recorded.pk), "--outputs", "probs", "--json")
    assert code == 1 and "outside the allowed roots" in report["error"]

    with pytest.raises(files.UnsafeFile):
        artifacts.verify(recorded, output="probs:0")
    recorded.refresh_from_db()
    assert recorded.status == Checkpoint.PRESENT  # refused, not judged

    with pytest.raises(Comparison.CannotCompare, match="outside the allowed roots"):
        comparing.compute(other, recorded)


def test_a_meta_graph_linked_to_a_secret_is_refused_without_echoing_it(run, outside):
    checkpoint = run.checkpoints.get(prefix="model.ckpt-100")  # the one with its own .meta
    meta = os.path.join(run.directory, "model.ckpt-100.meta")
    os.remove(meta)
    os.symlink(outside / "secret.txt", meta)
    with pytest.raises(files.UnsafeFile) as caught:
        artifacts.verify(checkpoint, output="probs:0")
    assert SECRET not in str(caught.value) and "hunter2" not in str(caught.value)
    with pytest.raises(FreezeError) as frozen:
        artifacts.freeze(run.checkpoints.get(prefix="model.ckpt-300"), outputs=["probs"])
    assert "hunter2" not in str(frozen.value)


def test_a_meta_graph_that_is_not_one_is_reported_without_its_text(run):
    # Inside the roots and a regular file, so it is read; its text must still not reach the page.
    checkpoint = run.checkpoints.get(prefix="model.ckpt-100")
    with open(os.path.join(run.directory, "model.ckpt-100.meta"), "w") as handle:
        handle.write(f"{SECRET} more private words\n")
    verification = artifacts.verify(checkpoint, output="probs:0")
    text = json.dumps(verification)
    assert verification["restore"]["ok"] is False and "not a MetaGraphDef" in verification["restore"]["error"]
    assert "hunter2" not in text


def test_a_state_file_linked_outside_is_not_read(run, outside):
    os.remove(os.path.join(run.directory, "checkpoint"))
    os.symlink(outside / "secret.txt", os.path.join(run.directory, "checkpoint"))
    scanning.scan(run, full=True)
    run.refresh_from_db()
    shown = json.dumps([run.scan_problems, run.state_files])
    assert "hunter2" not in shown
    assert "symbolic link" in shown


# --- exports ------------------------------------------------------------------------------------


@pytest.fixture
def viewer(db):
    return make_user("vera", "viewer")


@pytest.fixture
def operator(db):
    return make_user("otto", "operator")


@pytest.fixture
def export(run, settings) -> Export:
    return artifacts.freeze(run.checkpoints.get(prefix="model.ckpt-300"), outputs=["probs"])


class Hung(Exception):
    pass


def download(client, export: Export, timeout: int = 10):
    """GET the download; a server that blocks opening a FIFO must fail the test, not hang it."""

    def interrupt(signum, frame):
        raise Hung

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(timeout)
    try:
        response = client.get(reverse("export-download", args=[export.pk]))
        body = b"".join(response.streaming_content) if response.streaming else response.content
    except Hung:
        pytest.fail(f"the download did not answer within {timeout} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return response, body


def test_a_fifo_at_an_export_path_is_refused_at_once(client, viewer, export):
    os.remove(export.path)
    os.mkfifo(export.path)
    client.force_login(viewer)
    response, body = download(client, export)
    assert response.status_code == 404
    assert b"not a regular file" in body


def test_an_export_edited_in_place_is_flagged_and_not_served_until_checked(client, viewer, operator, export):
    original = open(export.path, "rb").read()
    client.force_login(viewer)
    response, body = download(client, export)
    assert response.status_code == 200 and hashlib.sha256(body).hexdigest() == export.sha256

    # Same size, other bytes, a later mtime: the old sha256 would be a lie as the ETag.
    edited = bytearray(original)
    edited[len(edited) // 2] ^= 0xFF
    with open(export.path, "r+b") as handle:
        handle.write(edited)
    os.utime(export.path, ns=(export.file_mtime_ns + 5_000_000_000,) * 2)

    response, body = download(client, export)
    assert response.status_code == 404 and b"changed on disk" in body
    page = client.get(export.get_absolute_url()).content.decode()
    assert "changed on disk" in page

    # A viewer cannot clear it; an operator's check finds the contents differ and keeps refusing.
    assert client.post(reverse("export-recheck", args=[export.pk])).status_code == 403
    client.force_login(operator)
    client.post(reverse("export-recheck", args=[export.pk]))
    response, _ = download(client, export)
    assert response.status_code == 404

    # Put the verified bytes back (mtime changes again): the check accepts it and downloads resume.
    with open(export.path, "wb") as handle:
        handle.write(original)
    client.post(reverse("export-recheck", args=[export.pk]))
    response, body = download(client, export)
    assert response.status_code == 200 and hashlib.sha256(body).hexdigest() == export.sha256
    assert response["ETag"] == f'"{export.sha256}"'


def test_an_export_replaced_by_a_longer_file_is_refused(client, viewer, export):
    with open(export.path, "ab") as handle:
        handle.write(b"\0")
    client.force_login(viewer)
    response, body = download(client, export)
    assert response.status_code == 404 and b"changed on disk" in body
