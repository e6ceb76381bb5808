"""Keyset pagination for the pages' long lists: ``?after=CURSOR``, ``?before=CURSOR``, ``?last=1``.

A cursor holds the sort keys of a row at the edge of the page shown (the last key is always the
unique id, so equal times, sizes or metric values never make a row repeat or vanish); the next
page is read from the index on those keys as a range that starts there, so page 1,000 costs what
page 1 costs, where OFFSET reads and throws away every row before it. The page therefore knows
no page number: it links to the first, previous, next and last pages, and shows a total the caller
reads cheaply (a cached count, a count of a short list, or ``count_at_most``: "more than N").

A nullable first key (a checkpoint without a step) sorts last in either direction: those rows
form a second segment, ordered by the remaining keys, read by its own index range when the
first runs out. A cursor that does not decode, belongs to another ordering or points past the
end gives a page anyway (the first or the last), never an error.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import F, QuerySet
from django.db.models.fields.tuple_lookups import Tuple, TupleGreaterThan, TupleLessThan
from django.db.models.lookups import GreaterThan, LessThan
from django.http import QueryDict


class _RowAfter(TupleGreaterThan):
    # A row-value comparison, ``(a, b, id) > (x, y, z)``, on SQLite too (row values since 3.15):
    # Django spells it there as nested ORs, which SQLite's planner cannot turn into an index range.
    def as_sql(self, compiler, connection):
        return GreaterThan.as_sql(self, compiler, connection)


class _RowBefore(TupleLessThan):
    def as_sql(self, compiler, connection):
        return LessThan.as_sql(self, compiler, connection)


INT, FLOAT, TIME, TEXT = "int", "float", "time", "text"


@dataclass(frozen=True)
class Order:
    """A sort: ``keys`` (ORM names, the last one unique) all ascending or all descending.

    ``kinds`` says how each key travels in a cursor (``INT``, ``FLOAT``, ``TIME``, ``TEXT``);
    ``nullable`` that the first key may be NULL (such rows come last).
    """

    name: str
    keys: Sequence[str]
    kinds: Sequence[str]
    descending: bool = False
    nullable: bool = False

    def _order_by(self, keys: Sequence[str], backward: bool) -> list:
        down = self.descending != backward
        return [F(k).desc() if down else F(k).asc() for k in keys]

    def _beyond(self, keys: Sequence[str], values: list, backward: bool):
        lookup = _RowBefore if self.descending != backward else _RowAfter
        return lookup(Tuple(*keys), values)

    def segments(self, backward: bool) -> list[int]:
        order = [0, 1] if self.nullable else [0]
        return order[::-1] if backward else order

    def segment_rows(self, queryset: QuerySet, segment: int, start: list | None, backward: bool) -> QuerySet:
        """The rows of ``segment`` (0: first key set, 1: first key NULL) in order, from ``start``
        (the keys of the segment's own, exclusive) or from the segment's edge."""
        keys = list(self.keys)
        if self.nullable:
            queryset = queryset.filter(**{f"{keys[0]}__isnull": bool(segment)})
            if segment:
                keys = keys[1:]
        if start is not None:
            queryset = queryset.filter(self._beyond(keys, start, backward))
        return queryset.order_by(*self._order_by(keys, backward))

    def position(self, row: Any) -> tuple[int, list]:
        values = [getattr(row, k) for k in self.keys]
        if self.nullable and values[0] is None:
            return 1, values[1:]
        return 0, values

    def encode(self, row: Any) -> str:
        segment, values = self.position(row)
        values = [v.isoformat() if isinstance(v, dt.datetime) else v for v in values]
        return pack_cursor([self.name, segment, values])

    def decode(self, cursor: str) -> tuple[int, list] | None:
        """The segment and keys a cursor holds; None when it is not one of this ordering's."""
        try:
            name, segment, values = unpack_cursor(cursor)
            if name != self.name or segment not in self.segments(False) or not isinstance(values, list):
                return None
            kinds = list(self.kinds[1:] if segment else self.kinds)
            if len(values) != len(kinds):
                return None
            return segment, [_parse(kind, value) for kind, value in zip(kinds, values, strict=True)]
        except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
            return None


def _parse(kind: str, value: Any) -> Any:
    if isinstance(value, bool):
        raise TypeError("a cursor key is never a boolean")
    if kind == INT and isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    if kind == FLOAT and isinstance(value, int | float) and abs(value) != float("inf") and value == value:
        return float(value)
    if kind == TIME and isinstance(value, str) and len(value) <= 40:
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("a cursor time has its zone")
        return parsed
    if kind == TEXT and isinstance(value, str) and len(value) <= 1024:
        return value
    raise TypeError(f"not a {kind}")


@dataclass
class Page:
    """One page of rows and the cursors of its neighbours (templates: ``partials/keyset_pagination.html``)."""

    rows: list
    total: int | None = None
    total_cap: int | None = None  # ``total`` counted no further than one past this
    next_cursor: str | None = None
    previous_cursor: str | None = None
    extra: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __bool__(self) -> bool:
        return bool(self.rows)

    @property
    def has_next(self) -> bool:
        return self.next_cursor is not None

    @property
    def has_previous(self) -> bool:
        return self.previous_cursor is not None

    @property
    def has_other_pages(self) -> bool:
        return self.has_next or self.has_previous

    @property
    def total_exceeds_cap(self) -> bool:
        return self.total is not None and self.total_cap is not None and self.total > self.total_cap


def pack_cursor(fields: list) -> str:
    """A cursor for a link: ``fields`` as compact JSON in URL-safe base64 without padding."""
    raw = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unpack_cursor(cursor: str) -> Any:
    """The fields of ``pack_cursor``; ValueError, TypeError or binascii.Error for anything else."""
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def count_at_most(queryset: QuerySet, cap: int) -> Callable[[], int]:
    """A count of ``queryset`` that stops one past ``cap`` (pass ``total_cap=cap`` to ``paginate``).

    A plain COUNT reads every matching index entry, so it grows with a log that only grows; past
    the cap the page says "more than" instead.
    """
    return lambda: queryset.order_by()[: cap + 1].count()


def _read(order: Order, queryset: QuerySet, size: int, start: tuple[int, list] | None, backward: bool,
          null_rows: bool) -> list:
    """Up to ``size`` rows from ``start`` (exclusive; None: from the edge) in the direction asked,
    crossing into the NULL segment when the first runs out: one query per segment read."""
    rows: list = []
    segments = order.segments(backward)
    for segment in segments:
        if segment == 1 and not null_rows:
            continue
        if start is not None and segment != start[0]:
            if segment in segments[: segments.index(start[0])]:
                continue  # a segment wholly behind the cursor
            keys = None
        else:
            keys = start[1] if start is not None else None
        rows.extend(order.segment_rows(queryset, segment, keys, backward)[: size - len(rows)])
        if len(rows) >= size:
            break
    return rows


def paginate(queryset: QuerySet, order: Order, query: QueryDict, size: int,
             total: int | Callable[[], int] | None = None, *, null_rows: bool = True,
             total_cap: int | None = None) -> Page:
    """The page ``query`` asks for (``after``, ``before``, ``last``) of ``queryset`` in ``order``.

    Reads ``size + 1`` rows (the extra one says whether there is more), plus one query per extra
    segment, plus a second read only when a cursor led nowhere (its rows were deleted).
    ``null_rows=False``: the caller knows no row has a NULL first key (the NULL segment is not read).
    """
    after = order.decode(query["after"]) if query.get("after") else None
    before = order.decode(query["before"]) if query.get("before") else None
    if before is not None or (query.get("last") and after is None):
        rows = _read(order, queryset, size + 1, before, backward=True, null_rows=null_rows)
        more_behind = len(rows) > size
        rows = rows[:size][::-1]
        if len(rows) < size and before is not None:
            # Fewer than a page before the cursor: rows were deleted meanwhile; show the first page.
            return paginate(queryset, order, QueryDict(), size, total, null_rows=null_rows, total_cap=total_cap)
        page = Page(rows, next_cursor=order.encode(rows[-1]) if rows and before is not None else None,
                    previous_cursor=order.encode(rows[0]) if more_behind else None)
    else:
        rows = _read(order, queryset, size + 1, after, backward=False, null_rows=null_rows)
        more = len(rows) > size
        rows = rows[:size]
        if not rows and after is not None:
            # A cursor past the end (the rows after it were deleted): the last page.
            return paginate(queryset, order, QueryDict("last=1"), size, total, null_rows=null_rows,
                            total_cap=total_cap)
        page = Page(rows, next_cursor=order.encode(rows[-1]) if more else None,
                    previous_cursor=order.encode(rows[0]) if rows and after is not None else None)
    page.total = total() if callable(total) else total
    page.total_cap = total_cap
    return page
