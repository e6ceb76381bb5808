"""The meta-graph outline the freeze and verify forms use, read without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from persistence.files import UnsafeFile
from persistence.graphoutline import GraphOutline, OutlineTooLarge, _outline_message_class

REPO = Path(__file__).resolve().parents[2]

# A meta graph in text format, with fields the outline's schema does not know (meta_info_def,
# attr): they are skipped, not refused.
META_TEXT = """
meta_info_def { tags: "serve" }
graph_def {
  node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } }
  node { name: "w" op: "VariableV2" }
  node { name: "w/read" op: "Identity" input: "w" }
  node { name: "logits" op: "MatMul" input: "x" input: "w/read" }
  node { name: "probs" op: "Softmax" input: "logits" }
}
"""


def _binary(path: Path) -> Path:
    meta = _outline_message_class()()
    for name, op, inputs in [("x", "Placeholder", []), ("w", "VariableV2", []), ("probs", "Softmax", ["x", "w"])]:
        node = meta.graph_def.node.add(name=name, op=op)
        node.input.extend(inputs)
    path.write_bytes(meta.SerializeToString())
    return path


def test_outline_reads_text_format_and_skips_unknown_fields(tmp_path):
    path = tmp_path / "model.meta"
    path.write_text(META_TEXT)

    outline = GraphOutline.read(path)

    assert outline.ops["probs"] == "Softmax"
    assert outline.suggestions[0] == "probs"
    assert outline.placeholders == ["x"] and outline.variables == ["w"]


def test_outline_reads_binary(tmp_path):
    outline = GraphOutline.read(_binary(tmp_path / "model.meta"))

    assert list(outline.ops) == ["x", "w", "probs"] and outline.suggestions == ["probs"]


def test_unknown_names_are_reported_with_near_matches_and_a_count(tmp_path):
    path = tmp_path / "model.meta"
    path.write_text(META_TEXT)
    outline = GraphOutline.read(path)

    assert outline.unknown_nodes_message(["probs:0", "^logits"]) is None
    message = outline.unknown_nodes_message(["prob", "a", "b", "c"], matched=2)
    assert message.startswith("Unknown output") or message[0].isupper()
    assert "prob" in message and "and 2 more unknown name(s)" in message
    assert outline.unknown_variables_message(["w"]) is None
    assert "x" in outline.unknown_variables_message(["x"])


def test_outline_refuses_garbage_links_fifos_and_oversized_files(tmp_path):
    garbage = tmp_path / "garbage.meta"
    garbage.write_bytes(b"\xff\xfe not a graph")
    with pytest.raises(ValueError, match="garbage.meta is not a MetaGraphDef"):
        GraphOutline.read(garbage)

    real = _binary(tmp_path / "real.meta")
    link = tmp_path / "link.meta"
    link.symlink_to(real)
    # The resolved path is read: a link inside the roots was already checked by the caller.
    assert GraphOutline.read(link).suggestions == ["probs"]

    fifo = tmp_path / "fifo.meta"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFile, match="not a regular file"):
        GraphOutline.read(fifo)

    with pytest.raises(OutlineTooLarge):
        GraphOutline.read(real, max_bytes=4)
    with pytest.raises(FileNotFoundError):
        GraphOutline.read(tmp_path / "absent.meta")


def test_outline_never_imports_tensorflow(tmp_path):
    path = tmp_path / "model.meta"
    path.write_text(META_TEXT)
    code = (
        "import sys\n"
        "from persistence.graphoutline import GraphOutline\n"
        f"assert GraphOutline.read({str(path)!r}).suggestions\n"
        "assert not any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules), 'tensorflow'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_dashboard_neither_parses_protobufs_nor_names_tensorflow_errors():
    pattern = ("google.protobuf", "__module__", "DataLossError", "OpError", "NotFoundError")
    offenders = [
        f"{path.relative_to(REPO)}: {word}"
        for path in (REPO / "dashboard").rglob("*.py")
        for word in pattern
        if word in path.read_text(encoding="utf-8").replace("FileNotFoundError", "")
    ]
    assert offenders == []
