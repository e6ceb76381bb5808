"""Files we rewrite keep their permissions and the state file its path style; temporary files of
writers that are still at work are never removed by someone else's cleanup."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persistence import files
from persistence.statefile import read_state_file, write_state_file
from tests import checkpoint_factory as factory


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("original", [0o644, 0o640, 0o664, 0o600, 0o444])
def test_atomic_rewrite_keeps_the_mode_of_the_file_it_replaces(tmp_path, original, umask_022):
    path = tmp_path / "checkpoint"
    path.write_text("old")
    os.chmod(path, original)

    files.atomic_write_text(path, "new")

    assert path.read_text() == "new"
    assert mode(path) == original


def test_atomic_rewrite_keeps_owner_and_group(tmp_path, umask_022):
    if os.geteuid() != 0:
        pytest.skip("only root may give a file to another owner")
    path = tmp_path / "checkpoint"
    path.write_text("old")
    os.chown(path, 65534, 65534)  # nobody:nogroup, as if a trainer running as another user wrote it

    files.atomic_write_text(path, "new")

    info = os.stat(path)
    assert (info.st_uid, info.st_gid) == (65534, 65534)


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_gets_the_usual_mode_under_the_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        files.atomic_write_bytes(tmp_path / "new.pb", b"x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "new.pb") == expected


def test_current_umask_reads_without_changing_it():
    old = os.umask(0o027)
    try:
        assert files.current_umask() == 0o027
        assert files.current_umask() == 0o027
    finally:
        os.umask(old)


@pytest.mark.tf
def test_state_file_with_absolute_paths_stays_absolute_and_readable_after_a_rewrite(tmp_path, umask_022):
    import tensorflow as tf

    seed = factory.make_seed_run(tmp_path / "run", steps=(100, 200, 300))
    path = Path(seed.directory, "checkpoint")
    assert f'"{seed.directory}/model.ckpt-300"' in path.read_text()  # TF1 Saver writes absolute paths
    os.chmod(path, 0o644)

    # What a prune of model.ckpt-100 writes.
    write_state_file(seed.directory, latest="model.ckpt-300", all_prefixes=["model.ckpt-200", "model.ckpt-300"])

    text = path.read_text()
    assert text == (f'model_checkpoint_path: "{seed.directory}/model.ckpt-300"\n'
                    f'all_model_checkpoint_paths: "{seed.directory}/model.ckpt-200"\n'
                    f'all_model_checkpoint_paths: "{seed.directory}/model.ckpt-300"\n')
    assert mode(path) == 0o644
    assert tf.train.latest_checkpoint(seed.directory) == f"{seed.directory}/model.ckpt-300"
    assert read_state_file(seed.directory).all_prefixes == ["model.ckpt-200", "model.ckpt-300"]


def test_state_file_with_relative_paths_stays_relative(tmp_path):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-2"\n')
    write_state_file(str(tmp_path), latest="ckpt-2", all_prefixes=["ckpt-1", "ckpt-2"])
    assert (tmp_path / "checkpoint").read_text() == (
        'model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-2"\n'
    )


def test_state_file_through_a_symlinked_directory_keeps_the_spelling_it_had(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    (real / "checkpoint").write_text(f'model_checkpoint_path: "{link}/ckpt-2"\n')
    write_state_file(str(real), latest="ckpt-2", all_prefixes=["ckpt-2"])
    assert (real / "checkpoint").read_text().startswith(f'model_checkpoint_path: "{link}/ckpt-2"\n')


@pytest.mark.tf
def test_frozen_export_is_world_readable_under_umask_022(tmp_path, umask_022):
    from persistence.freeze import freeze_checkpoint

    seed = factory.make_seed_run(tmp_path / "run", steps=(10,))
    target = tmp_path / "exports" / "probs.pb"
    freeze_checkpoint(os.path.join(seed.directory, seed.latest), os.path.join(seed.directory, seed.meta_prefix + ".meta"),
                      str(target), outputs=[seed.output_node])
    assert mode(target) == 0o644

    os.chmod(target, 0o640)  # the operator narrowed it; a re-freeze keeps that
    freeze_checkpoint(os.path.join(seed.directory, seed.latest), os.path.join(seed.directory, seed.meta_prefix + ".meta"),
                      str(target), outputs=[seed.output_node])
    assert mode(target) == 0o640


# --- temporary files and their writers -------------------------------------------------------


def temp_name(target: str, owner: str) -> str:
    return f".{target}{files.TEMP_MARKER}{owner}~abc123"


def test_temp_file_names_its_writer(tmp_path):
    seen = []
    with files.atomic_writer(tmp_path / "probs.pb", owner="job17") as handle:
        seen = [n for n in os.listdir(tmp_path) if files.TEMP_MARKER in n]
        handle.write(b"x")
    assert len(seen) == 1 and files.temp_file_owner(seen[0]) == "job17"
    with files.atomic_writer(tmp_path / "probs.pb") as handle:
        (name,) = [n for n in os.listdir(tmp_path) if files.TEMP_MARKER in n]
        handle.write(b"y")
    assert files.temp_file_owner(name) == files.process_owner()


def test_cleanup_removes_only_files_of_writers_that_ended(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = files.process_owner()
    names = {
        "live_process": temp_name("a.pb", live),
        "dead_process": temp_name("b.pb", files.process_owner(dead.pid)),
        "other_host": temp_name("c.pb", f"pid{dead.pid}@some-other-host"),
        "running_job": temp_name("d.pb", "job1"),
        "ended_job": temp_name("e.pb", "job2"),
        "unowned_new": ".f.pb.partial-q1w2e3",
        "unowned_old": ".g.pb.partial-r4t5y6",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    old = time.time() - files.UNOWNED_TEMP_MAX_AGE - 60
    os.utime(tmp_path / names["unowned_old"], (old, old))

    removed = files.remove_stale_temp_files(tmp_path, owner_ended={"job1": False, "job2": True}.get)

    assert sorted(removed) == sorted([names["dead_process"], names["ended_job"], names["unowned_old"]])
    left = set(os.listdir(tmp_path))
    assert {names[k] for k in ("live_process", "other_host", "running_job", "unowned_new")} == left


def test_copied_run_keeps_base_names_when_the_absolute_paths_point_elsewhere(tmp_path):
    # A run copied from another place: its absolute paths are stale, base names stay right.
    src = tmp_path / "old"
    src.mkdir()
    (src / "checkpoint").write_text(f'model_checkpoint_path: "{src}/ckpt-2"\n')
    dst = tmp_path / "new"
    shutil.copytree(src, dst)
    write_state_file(str(dst), latest="ckpt-2", all_prefixes=["ckpt-2"])
    assert (dst / "checkpoint").read_text() == 'model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-2"\n'
