"""The prune preview's decision list a page at a time, by cursor, from the plan the preview cached.

The plan is not a query: it is a list, oldest first, held in the shared cache in chunks of
``PLAN_PAGE_SIZE`` rows per filter, under a stamp of the run's state (``views/retention.py``). A
cursor holds that stamp, the position of the row at the edge of the page shown and the row's
sort key. While the plan is the same a page is one or two chunk reads at that position, however
deep; once the run changed (a checkpoint recorded, a pin moved) the position no longer means the
same row, and the key is looked up instead in the list of each chunk's first key, so that the
next page still starts after the row last shown. A cursor that does not decode gives the first
page, never an error; ``?page=N`` of the old links is ignored the same way.
"""

from __future__ import annotations

import binascii
import bisect
from collections.abc import Callable

from django.core.cache import cache
from django.http import QueryDict

from dashboard.views.paging import Page, pack_cursor, unpack_cursor

PLAN_PAGE_SIZE = 100


class PlanRows:
    """The rows of one filter of a plan: in memory, or in the cache's chunks with a fallback."""

    def __init__(self, stamp: str, count: int, *, rows: list[dict] | None = None, chunk_key: str = "",
                 starts: list | None = None, load: Callable[[dict], dict] = dict,
                 fallback: Callable[[], list[dict]] | None = None) -> None:
        self.stamp, self.count = stamp, count
        self._rows, self._chunk_key, self._starts = rows, chunk_key, starts or []
        self._load, self._fallback = load, fallback
        self._chunks: dict[int, list[dict]] = {}

    def _chunk(self, index: int) -> list[dict]:
        if self._rows is not None:
            return self._rows[index * PLAN_PAGE_SIZE:(index + 1) * PLAN_PAGE_SIZE]
        if index not in self._chunks:
            try:
                stored = cache.get(f"{self._chunk_key}:{index}")
            except Exception:  # a cache outage must not take the page down with it
                stored = None
            if stored is None:  # evicted meanwhile: plan again, once
                self._rows = self._fallback() if self._fallback else []
                return self._chunk(index)
            self._chunks[index] = [self._load(row) for row in stored]
        return self._chunks[index]

    def slice(self, start: int, stop: int) -> list[dict]:
        """Rows ``start`` to ``stop`` (at most two chunks for a page)."""
        rows: list[dict] = []
        if start >= min(stop, self.count):  # an empty filter has no chunk to read
            return rows
        for index in range(start // PLAN_PAGE_SIZE, (max(stop, start + 1) - 1) // PLAN_PAGE_SIZE + 1):
            base = index * PLAN_PAGE_SIZE
            rows.extend(self._chunk(index)[max(start - base, 0):max(stop - base, 0)])
        return rows

    def position_of(self, key: list) -> int:
        """Where a row with ``key`` sorts: the position of the first row whose key is not below it."""
        if self._rows is not None:
            return bisect.bisect_left([r["key"] for r in self._rows], key)
        index = max(bisect.bisect_right(self._starts, key) - 1, 0)
        if index * PLAN_PAGE_SIZE >= self.count:
            return self.count
        return index * PLAN_PAGE_SIZE + bisect.bisect_left([r["key"] for r in self._chunk(index)], key)


def _encode(rows: PlanRows, show: str, position: int, row: dict) -> str:
    return pack_cursor(["plan", rows.stamp, show, position, list(row["key"])])


def _decode(cursor: str, show: str) -> tuple[str, int, list] | None:
    try:
        name, stamp, shown, position, key = unpack_cursor(cursor)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        return None
    valid = (name == "plan" and shown == show and isinstance(stamp, str) and type(position) is int
             and position >= 0 and isinstance(key, list) and len(key) == 3 and isinstance(key[2], str)
             and all(type(v) in (int, float) for v in key[:2]))
    return (stamp, position, key) if valid else None


def plan_page(rows: PlanRows, show: str, query: QueryDict) -> Page:
    """The page ``query`` asks for (``after``, ``before``, ``last``) of a plan's rows."""
    after = _decode(query["after"], show) if query.get("after") else None
    before = _decode(query["before"], show) if query.get("before") else None
    if after is not None:
        stamp, position, key = after
        start = position + 1 if stamp == rows.stamp else rows.position_of(key)
        if stamp != rows.stamp and start < rows.count and rows.slice(start, start + 1)[0]["key"] == key:
            start += 1  # the row last shown is still there: start after it
        if start >= rows.count:  # past the end (rows gone meanwhile): the last page
            start = max(rows.count - PLAN_PAGE_SIZE, 0)
    elif before is not None:
        stamp, position, key = before
        end = position if stamp == rows.stamp else rows.position_of(key)
        start = max(end - PLAN_PAGE_SIZE, 0)
    elif query.get("last"):
        start = max(rows.count - PLAN_PAGE_SIZE, 0)
    else:
        start = 0
    shown = rows.slice(start, start + PLAN_PAGE_SIZE)
    stop = start + len(shown)
    return Page(
        shown, total=rows.count,
        next_cursor=_encode(rows, show, stop - 1, shown[-1]) if shown and stop < rows.count else None,
        previous_cursor=_encode(rows, show, start, shown[0]) if shown and start > 0 else None,
    )
