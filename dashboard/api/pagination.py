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

    def order_by(self) -> list:
        return [F(k.lookup).desc(nulls_last=True) if k.descending else F(k.lookup).asc(nulls_last=True)
                for k in self.keys]

    def after(self, values: list) -> Q:
        """Rows that sort after a row whose keys are ``values``."""
        result = Q(pk__in=[])
        equal = Q()
        for key, value in zip(self.keys, values, strict=True):
            if value is not None:
                beyond = Q(**{f"{key.lookup}__{'lt' if key.descending else 'gt'}": value})
                if key.nullable:
                    beyond |= Q(**{f"{key.lookup}__isnull": True})
                result |= equal & beyond
                equal &= Q(**{key.lookup: value})
            else:  # NULLs sort last: nothing sorts after one on this key
                equal &= Q(**{f"{key.lookup}__isnull": True})
        return result

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
    """One page of ``queryset`` in ``ordering``: ``limit`` items after ``cursor`` and the next cursor."""
    rows = queryset.order_by(*ordering.order_by())
    if cursor:
        rows = rows.filter(ordering.after(decode_cursor(ordering, cursor)))
    page = list(rows[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return {
        "items": [item(row) for row in page],
        "next": encode_cursor(ordering, ordering.values_of(page[-1])) if more else None,
    }
