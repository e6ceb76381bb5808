"""Keyset ("cursor") pagination: ``{"items": [...], "next": "<cursor>" | null}``.

A cursor holds the sort key of the last item returned; the next page is what sorts after it,
found by the index on that key. OFFSET would make page 20 of a 10,000-checkpoint run read and
throw away 9,500 rows, and would skip or repeat rows when checkpoints are recorded meanwhile.
NULL keys (a checkpoint without a step) sort last in either direction.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import F, Q, QuerySet

from .problems import ApiProblem

MAX_LIMIT = 500
DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class Key:
    """One column of a sort: ``lookup`` as the ORM spells it, ``attr`` as read from a row."""

    lookup: str
    descending: bool = False
    nullable: bool = False

    @property
    def attr(self) -> str:
        return self.lookup.replace("__", ".")


@dataclass(frozen=True)
class Ordering:
    name: str  # stored in the cursor: a cursor of another ordering is refused, not misread
    keys: Sequence[Key]

    def _sort(self, start: int) -> list:
        """The sort by ``keys[start:]``; key ``start`` holds no NULL where it is used (filtered out,
        or the key is not nullable), so it is sorted as its index is, without NULLS LAST."""
        terms = []
        for i, key in enumerate(self.keys[start:]):
            nulls_last = True if key.nullable and i else None
            terms.append(F(key.lookup).desc(nulls_last=nulls_last) if key.descending
                         else F(key.lookup).asc(nulls_last=nulls_last))
        return terms

    def stretches(self, values: list | None) -> list[tuple[Q, list]]:
        """The rows after a row whose keys are ``values`` (every row when None), as consecutive
        stretches of the order: a condition and the sort within it, each an index range.

        One condition ``a > x OR (a = x AND b > y) OR a IS NULL`` is no index range: PostgreSQL
        reads and sorts every row of the run for it. Read one after the other instead, ``a = x
        AND b > y`` (the rest of the tie), ``a > x``, then ``a IS NULL`` (NULLs sort last) each
        start where the cursor is and stop once the page is full.
        """
        first = self.keys[0]
        if values is None:
            if not first.nullable:
                return [(Q(), self._sort(0))]
            return [(Q(**{f"{first.lookup}__isnull": False}), self._sort(0)),
                    (Q(**{f"{first.lookup}__isnull": True}), self._sort(1))]
        stretches = []
        for i in reversed(range(len(self.keys))):
            equal = Q()
            for key, value in zip(self.keys[:i], values[:i], strict=True):
                equal &= Q(**{f"{key.lookup}__isnull": True}) if value is None else Q(**{key.lookup: value})
            key, value = self.keys[i], values[i]
            if value is None:  # NULLs sort last: nothing sorts after one on this key
                continue
            stretches.append((equal & Q(**{f"{key.lookup}__{'lt' if key.descending else 'gt'}": value}),
                              self._sort(i)))
            if key.nullable:
                stretches.append((equal & Q(**{f"{key.lookup}__isnull": True}), self._sort(i + 1)))
        return stretches

    def values_of(self, row: Any) -> list:
        """The keys of ``row``: a model instance, or a dict from ``values()``."""
        if isinstance(row, dict):
            return [row[key.lookup] for key in self.keys]
        values = []
        for key in self.keys:
            value = row
            for part in key.attr.split("."):
                value = getattr(value, part)
            values.append(value)
        return values


def encode_cursor(ordering: Ordering, values: list) -> str:
    raw = json.dumps([ordering.name, values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(ordering: Ordering, cursor: str) -> list:
    try:
        name, values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        valid = (name == ordering.name and isinstance(values, list) and len(values) == len(ordering.keys)
                 and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        valid = False
    if not valid:
        raise ApiProblem(400, "The cursor is not one this list returned (or belongs to another ordering): "
                              "start again without one.", kind="invalid-cursor", field="cursor")
    return values


def paginate(queryset: QuerySet, ordering: Ordering, limit: int, cursor: str | None,
             item: Callable[[Any], dict]) -> dict:
    """One page of ``queryset`` in ``ordering``: ``limit`` items after ``cursor`` and the next cursor.

    One query per stretch read (``Ordering.stretches``): one or two for most pages, at most one
    per key and one per nullable key.
    """
    page: list = []
    for condition, sort in ordering.stretches(decode_cursor(ordering, cursor) if cursor else None):
        page += queryset.filter(condition).order_by(*sort)[: limit + 1 - len(page)]
        if len(page) > limit:
            break
    more = len(page) > limit
    page = page[:limit]
    return {
        "items": [item(row) for row in page],
        "next": encode_cursor(ordering, ordering.values_of(page[-1])) if more else None,
    }
