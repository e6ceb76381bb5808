"""``Checkpoint.objects.insert_many`` stores exactly what the ORM would, however values are shared."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.core.serializers.json import DjangoJSONEncoder

from dashboard.models import Checkpoint, Run
from dashboard.models.checkpoint import _json_dumps

FIELDS = ["prefix", "step", "saved_at", "status", "format", "files", "has_own_meta", "size_bytes", "variables",
          "variable_count", "fingerprint", "problems", "recorded_at", "metrics", "latest_in", "meta_source_id"]


def _rows(run: Run, n: int) -> list[dict]:
    shared_variables = [{"name": "w", "shape": [2], "dtype": "float32", "bytes": 8}]
    other_variables = [{"name": "b", "shape": [], "dtype": "int64", "bytes": 8}]
    recorded_at = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    rows = []
    for i in range(n):
        rows.append({
            "run_id": run.pk, "prefix": f"model.ckpt-{i}", "step": i if i % 7 else None,
            "saved_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i, microseconds=i),
            "status": "incomplete" if i % 5 == 0 else "present", "format": "tf1",
            "files": [{"name": f"model.ckpt-{i}.index", "size": 100 + i}, {"name": f"dé-{i}\n", "size": i}],
            "has_own_meta": i % 2 == 0, "size_bytes": 104 + 2 * i,
            # One list object for most rows (as discovery hands out), an equal copy for some,
            # another list for others, and empty lists that are each a new object.
            "variables": (shared_variables if i % 3 else [dict(v) for v in shared_variables]) if i % 4
            else other_variables,
            "variable_count": 1,
            "fingerprint": f"tf1:{i:024x}",
            "problems": [f"missing data shard {i}"] if i % 5 == 0 else [],
            "recorded_at": recorded_at if i % 6 else recorded_at + dt.timedelta(hours=1),
            **({"metrics": {"loss": 1 / (i + 1), "note": "ü"}} if i % 9 == 0 else {}),
        })
    return rows


@pytest.mark.django_db
def test_rows_read_back_as_given_with_shared_distinct_empty_and_missing_values(tmp_path):
    run = Run.objects.create(name="inserted", directory=str(tmp_path))
    rows = _rows(run, 23)
    Checkpoint.objects.insert_many(rows, batch_size=10)  # three batches, the last one short

    stored = {c["prefix"]: c for c in Checkpoint.objects.filter(run=run).values(*FIELDS)}
    assert len(stored) == len(rows)
    for row in rows:
        got = stored[row["prefix"]]
        expected = {**row, "metrics": row.get("metrics", {}), "latest_in": [], "meta_source_id": None}
        assert {name: got[name] for name in FIELDS} == {name: expected[name] for name in FIELDS}, row["prefix"]


@pytest.mark.django_db
def test_a_key_only_some_rows_give_takes_the_default_in_the_others(tmp_path):
    run = Run.objects.create(name="linked", directory=str(tmp_path))
    rows = _rows(run, 4)
    Checkpoint.objects.insert_many(rows[:1])
    source = Checkpoint.objects.get(run=run, prefix="model.ckpt-0")
    rows[2]["meta_source_id"] = source.pk  # only this row names a source
    Checkpoint.objects.insert_many(rows[1:])

    links = dict(Checkpoint.objects.filter(run=run).values_list("prefix", "meta_source_id"))
    assert links == {"model.ckpt-0": None, "model.ckpt-1": None, "model.ckpt-2": source.pk, "model.ckpt-3": None}


@pytest.mark.parametrize("value", [
    [], {}, "", "plain", "é\n\"\\", 0, -12345678901234567890, 1.5, 1e-7, float("nan"), float("inf"), True, None,
    [{"name": "a.index", "size": 3}, {"name": "ü", "size": 0}], {"nested": {"list": [1, [2, {"x": None}]]}},
    {1: "int key", "z": False},
])
def test_json_text_is_what_json_dumps_gives(value):
    assert _json_dumps(None)(value) == json.dumps(value)


def test_json_text_with_an_encoder_of_its_own_is_what_that_encoder_gives():
    value = {"at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)}
    assert _json_dumps(DjangoJSONEncoder)(value) == json.dumps(value, cls=DjangoJSONEncoder)
    with pytest.raises(TypeError):
        _json_dumps(None)(value)
