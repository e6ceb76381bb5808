"""The step-over-step heatmap: variables x consecutive pairs of checkpoints, coloured by relative change.

Relative changes differ by orders of magnitude between variables (a bias moves 10 % a step while
an embedding moves 0.01 %), so one colour scale for the whole table shows the big movers and
leaves every other row a flat pale band. By default each variable is therefore scaled to its own
largest change, which shows when *that* variable moved; the absolute scale (one colour per decade,
the same for every row) and a log option are a click away. Every cell opens the pairwise
comparison of its two checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlencode

from django.http import QueryDict
from django.urls import reverse

from dashboard.models import Comparison

# Heatmap colours: a sequential yellow-orange-red scale, light = barely moving, dark = moving a
# lot. On the absolute scale one colour per decade of relative change, so the legend is exact and
# readable without hovering; on the per-variable scales the same nine colours are nine equal bands.
DECADES = [
    (1e-6, "#ffffd9", "< 10⁻⁶"),
    (1e-5, "#fff3b0", "10⁻⁶ – 10⁻⁵"),
    (1e-4, "#fed976", "10⁻⁵ – 10⁻⁴"),
    (1e-3, "#feb24c", "10⁻⁴ – 10⁻³"),
    (1e-2, "#fd8d3c", "0.001 – 0.01"),
    (1e-1, "#f03b20", "0.01 – 0.1"),
    (1.0, "#bd0026", "0.1 – 1"),
    (10.0, "#800026", "1 – 10"),
    (math.inf, "#3f0013", "≥ 10"),
]
DARK_FROM = 5  # index of the first colour that needs white text
SPECIAL = {
    "zero": ("#eaecf0", "0", "no change"),
    "from_zero": ("#7a5af8", "↑0", "moved away from all zeros (no ratio)"),
    "not_finite": ("#101828", "NaN", "NaN or Inf"),
    "not_comparable": ("#ffffff", "×", "not comparable (only on one side, shape or dtype changed)"),
    "absent": ("#ffffff", "", "absent from both"),
}


@dataclass(frozen=True)
class Scale:
    """How values become colours: per variable or absolute, linear or logarithmic."""

    per_variable: bool = True
    log: bool = False

    @classmethod
    def from_query(cls, query: QueryDict) -> Scale:
        return cls(per_variable=query.get("scale", "variable") != "absolute", log=query.get("log") == "1")

    @property
    def absolute_decades(self) -> bool:
        return not self.per_variable

    def query(self, **changes: bool) -> str:
        scale = Scale(**{"per_variable": self.per_variable, "log": self.log, **changes})
        return "?" + urlencode({"scale": "variable" if scale.per_variable else "absolute", "log": "1" if scale.log else ""})


def _num(value: float) -> str:
    magnitude = abs(value)
    return f"{value:.3e}" if magnitude >= 1e5 or (magnitude < 1e-3 and value != 0) else f"{value:.4g}"


def _band(value: float, low: float, high: float, log: bool) -> int:
    """Which of the nine colours ``value`` gets between the row's ``low`` and ``high`` (all > 0)."""
    if log:
        value, low, high = math.log10(value), math.log10(low), math.log10(high)
    if high <= low:
        return len(DECADES) - 1
    fraction = (value - low) / (high - low)
    return min(len(DECADES) - 1, max(0, int(fraction * len(DECADES))))


def _cell(value: float | None, l2_diff: float | None, note: str | None, *, band: int | None) -> dict:
    if value is not None:
        if value == 0:
            color, text, _ = SPECIAL["zero"]
            return {"color": color, "text": text, "title": "0 (no change)", "dark": False}
        index = band if band is not None else next(i for i, (upper, _, _) in enumerate(DECADES) if value < upper)
        return {"color": DECADES[index][1], "text": "", "title": f"{value:.3g}", "dark": index >= DARK_FROM}
    if note == Comparison.NOTE_ABSENT:
        kind = "absent"
    elif note == Comparison.NOTE_NOT_FINITE:
        kind = "not_finite"
    elif note == "A is all zeros" and l2_diff is not None:
        kind = "from_zero"
    else:
        kind = "not_comparable"
    color, text, title = SPECIAL[kind]
    if note and kind == "not_comparable":
        title = note
    if kind == "from_zero":
        title = f"{title}; L2 diff {l2_diff:.3g}"
    return {"color": color, "text": text, "title": title, "dark": kind in ("from_zero", "not_finite")}


def _bands(values: list[float | None], scale: Scale, overall: tuple[float, float]) -> list[int | None]:
    """The colour of each value on ``scale``; None leaves the absolute decade (or a special) to ``_cell``."""
    if scale.absolute_decades and scale.log:
        return [None] * len(values)
    positive = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if scale.per_variable:
        if not positive:
            return [None] * len(values)
        low, high = (min(positive) if scale.log else 0.0), max(positive)
    else:
        low, high = overall
    return [
        _band(v, low if scale.log else 0.0, high, scale.log)
        if v is not None and v > 0 and math.isfinite(v) and high > 0 else None
        for v in values
    ]


def _legend(scale: Scale) -> list[dict]:
    if scale.absolute_decades and scale.log:
        return [{"color": color, "label": label} for _, color, label in DECADES]
    step = 100 / len(DECADES)
    where = "the variable's" if scale.per_variable else "the table's"
    if scale.log:
        labels = ["smallest"] + ["" for _ in DECADES[1:-1]] + ["largest"]
        return [{"color": color, "label": label} for (_, color, _), label in zip(DECADES, labels, strict=True)] + [
            {"color": None, "label": f"log scale between {where} smallest and largest change"}
        ]
    return [
        {"color": color, "label": f"{i * step:.0f}–{(i + 1) * step:.0f} %"} for i, (_, color, _) in enumerate(DECADES)
    ] + [{"color": None, "label": f"of {where} largest change"}]


def heatmap(result: dict, *, scale: Scale | None = None) -> dict:
    """Rows of coloured cells (variables x consecutive pairs) from a step-over-step result."""
    scale = scale or Scale()
    checkpoints = result.get("checkpoints", [])
    compare_url = reverse("compare")
    columns = [
        {"a": checkpoints[i], "b": checkpoints[i + 1],
         "label": checkpoints[i + 1]["step"] if checkpoints[i + 1]["step"] is not None else checkpoints[i + 1]["prefix"],
         "url": f"{compare_url}?{urlencode({'a': checkpoints[i]['id'], 'b': checkpoints[i + 1]['id']})}"}
        for i in range(len(checkpoints) - 1)
    ]
    names = result.get("variables", [])
    every = [v for name in names for v in result["relative_change"][name] if v is not None and v > 0 and math.isfinite(v)]
    if scale.absolute_decades and not scale.log:
        # Linear over the whole table: the largest change is the top colour.
        overall = (0.0, max(every, default=0.0))
    else:
        overall = (min(every, default=0.0), max(every, default=0.0))
    rows = []
    for name in names:
        values = result["relative_change"][name]
        diffs = result["l2_diff"][name]
        notes = result["notes"][name]
        bands = _bands(values, scale, overall)
        cells = [
            {**_cell(values[i], diffs[i], notes[i], band=bands[i]), "url": columns[i]["url"] if i < len(columns) else ""}
            for i in range(len(values))
        ]
        last = values[-1] if values else None
        rows.append({"name": name, "cells": cells, "last": _num(last) if last is not None else "—"})
    specials = [
        {"color": c, "text": t, "label": label, "dark": kind in ("from_zero", "not_finite")}
        for kind, (c, t, label) in SPECIAL.items() if t
    ]
    return {
        "columns": columns, "rows": rows, "legend": _legend(scale), "specials": specials, "scale": scale,
        "scale_links": {
            "per_variable": scale.query(per_variable=True), "absolute": scale.query(per_variable=False),
            "toggle_log": scale.query(log=not scale.log),
        },
    }
