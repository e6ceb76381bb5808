"""A job's parameters and result as tables people read, and how long it took.

Job params and results are JSON written by the job bodies; their shapes differ per kind and grow
over time, so they are rendered generically: a dict becomes a two-column table, a list of dicts a
table with one column per key, a list of plain values one line. Known keys that name rows of
ours (checkpoint and export ids) become links.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

MAX_ROWS = 200  # a result with more rows is cut, with the count, rather than making a huge page
MAX_DEPTH = 3


def _label(key: str) -> str:
    return str(key).replace("_", " ")


def _scalar(value: Any) -> SafeString:
    if value is None:
        return mark_safe('<span class="muted">—</span>')
    if isinstance(value, bool):
        return mark_safe("yes" if value else "no")
    if isinstance(value, float):
        return format_html("{}", f"{value:.6g}")
    return format_html("{}", value)


def _link(key: str, value: Any, links: dict[str, str]) -> SafeString | None:
    url = links.get(key)
    if url and isinstance(value, int | str):
        return format_html('<a href="{}">{}</a>', url, value)
    if key == "export" and isinstance(value, dict) and isinstance(value.get("id"), int):
        return format_html(
            '<a href="{}">export #{}</a> <code>{}</code>',
            reverse("export", args=[value["id"]]), value["id"], value.get("path", ""),
        )
    return None


def _render(value: Any, depth: int, links: dict[str, str]) -> SafeString:
    if isinstance(value, dict):
        if not value:
            return mark_safe('<span class="muted">none</span>')
        if depth >= MAX_DEPTH:
            return format_html("<code>{}</code>", value)
        rows = format_html_join(
            "", '<tr><th scope="row">{}</th><td>{}</td></tr>',
            ((_label(k), _link(k, v, links) or _render(v, depth + 1, links)) for k, v in value.items()),
        )
        return format_html('<table class="readable"><tbody>{}</tbody></table>', rows)
    if isinstance(value, list | tuple):
        if not value:
            return mark_safe('<span class="muted">none</span>')
        if all(isinstance(item, dict) for item in value) and depth < MAX_DEPTH:
            columns = list(dict.fromkeys(k for item in value for k in item))
            shown = value[:MAX_ROWS]
            head = format_html_join("", "<th>{}</th>", ((_label(c),) for c in columns))
            body = format_html_join(
                "", "<tr>{}</tr>",
                ((format_html_join("", "<td>{}</td>", ((_render(item.get(c), depth + 1, {}),) for c in columns)),)
                 for item in shown),
            )
            more = format_html('<p class="muted">… and {} more</p>', len(value) - len(shown)) if len(value) > len(shown) else ""
            return format_html('<table class="readable"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>{}',
                               head, body, more)
        return format_html_join(", ", "{}", ((_render(item, depth + 1, {}),) for item in value[:MAX_ROWS]))
    return _scalar(value)


@register.simple_tag
def readable(value: Any, job: Any = None) -> SafeString:
    """``value`` (a job's params or result) as nested tables; ids of our rows link to their pages."""
    links: dict[str, str] = {}
    if job is not None and job.run_id:
        run_name = job.run.name
        # Only keys whose checkpoint is in the job's own run (a comparison's A may be elsewhere).
        for key in ("checkpoint", "restore_from", "source"):
            source = value.get(key) if isinstance(value, dict) else None
            if isinstance(source, int):
                links[key] = reverse("checkpoint", args=[run_name, source])
    if isinstance(value, dict) and isinstance(value.get("a"), int) and isinstance(value.get("b"), int):
        # A comparison's result names both sides; the pair's page is where it is shown.
        links["comparison"] = f"{reverse('compare')}?a={value['a']}&b={value['b']}"
    return _render(value, 0, links)


@register.filter
def duration(job: Any) -> str:
    """How long a job ran (or has been running): '0.4 s', '12 s', '3 min 05 s', '1 h 02 min'."""
    if job.started_at is None:
        return "—"
    end = job.ended_at or timezone.now()
    seconds = max(0.0, (end - job.started_at).total_seconds())
    if seconds < 10:
        text = f"{seconds:.1f} s"
    elif seconds < 60:
        text = f"{seconds:.0f} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    else:
        text = f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return text if job.ended_at else f"{text} so far"


@register.filter
def waited(job: Any) -> str:
    """Time between asking and starting (the queue wait), in the same units as ``duration``."""
    if job.started_at is None or job.created_at is None:
        return "—"
    seconds = max(0.0, (job.started_at - job.created_at).total_seconds())
    return f"{seconds:.1f} s" if seconds < 60 else str(dt.timedelta(seconds=int(seconds)))
