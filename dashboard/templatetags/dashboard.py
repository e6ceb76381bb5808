"""Small presentation helpers: human sizes and times, sortable column headers, status badges, the
pin form, and the run page's history rows."""

from __future__ import annotations

import datetime as dt
import html
import math
from decimal import ROUND_HALF_UP, Decimal
from decimal import Context as DecimalContext

from django import template
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.template.context import Context
from django.template.defaultfilters import floatformat
from django.template.defaulttags import CsrfTokenNode
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

_FOUR_PLACES = Decimal("0.0001")
_TWENTY_EIGHT_DIGITS = DecimalContext(prec=28)


def four_places(value: object) -> str:
    """What ``value|floatformat:4`` writes, at a fraction of its cost: a history page shows
    hundreds of metric values, and the filter's localisation machinery was a tenth of its time."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not math.isfinite(value)):
        return floatformat(value, 4)
    # The filter rounds the shortest decimal that reads back as the float, half up (0.00015 -> 0.0002).
    number = Decimal(repr(value))
    _, digits, exponent = number.as_tuple()
    if len(digits) + abs(exponent) > 200:  # the filter writes such a number as it is
        return floatformat(value, 4)
    # Every integer digit and the four places must fit the precision (quantize refuses otherwise); a
    # context of our own rather than localcontext(), whose set-up cost as much as the rounding.
    adjusted = number.adjusted()
    context = _TWENTY_EIGHT_DIGITS if adjusted <= 22 else DecimalContext(prec=adjusted + 6)
    text = f"{number.quantize(_FOUR_PLACES, ROUND_HALF_UP, context):f}"
    return "0.0000" if text == "-0.0000" else text


@register.filter
def size(num_bytes: int | None) -> str:
    """Decimal units, as disks and cloud buckets report them: 2.3 MB, 1.1 GB."""
    if num_bytes is None:
        return "—"
    value = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"


@register.simple_tag
def when(moment: dt.datetime | None) -> str:
    """'3 hours ago', with the exact local time on hover and in a machine-readable attribute."""
    if moment is None:
        return mark_safe('<span class="muted">never</span>')
    local = timezone.localtime(moment)
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        moment.isoformat(),
        local.strftime("%Y-%m-%d %H:%M:%S %Z"),
        naturaltime(moment),
    )


@register.simple_tag(takes_context=True)
def sort_link(context, key: str, label: str) -> str:
    """A column header that sorts by ``key``, toggling direction when it is already the sort."""
    current = context.get("sort", "")
    if current == key:
        target, arrow, aria = f"-{key}", " ▲", "ascending"
    elif current == f"-{key}":
        target, arrow, aria = key, " ▼", "descending"
    else:
        target, arrow, aria = f"-{key}", "", "none"
    # A metric's name can hold any character: the link is query-encoded, not only HTML-escaped.
    return format_html('<a href="?{}" aria-sort="{}">{}{}</a>', urlencode({"sort": target}), aria, label, arrow)


STATUS_STYLE = {
    "present": "ok",
    "verified": "ok",
    "incomplete": "warn",
    "corrupt": "bad",
    "missing": "bad",
    "pruned": "muted",
    "rotated": "muted",
    "queued": "muted",
    "running": "info",
    "finished": "ok",
    "failed": "bad",
    "canceled": "muted",
}


@register.simple_tag
def status_badge(status: str) -> str:
    return format_html('<span class="badge {}">{}</span>', STATUS_STYLE.get(status, "muted"), status)


@register.filter
def latest_label(state_files: list[str] | None) -> str:
    """'latest (state file)' for TensorFlow's default state file, else the state files by name.

    A directory can hold several state files (``latest_filename=``): then which one matters.
    """
    names = list(state_files or [])
    if names == ["checkpoint"]:
        return "latest (state file)"
    return f"latest (state file{'s' if len(names) > 1 else ''} {', '.join(names)})"


@register.simple_tag(takes_context=True)
def pin_form(context: Context, c, next_url: str, as_button: bool = False) -> str:
    """Pin / unpin checkpoint ``c`` (maintainers), coming back to ``next_url``; ``as_button``: a
    button that opens the reason field. Its action is ``c.pin_url`` when the page computed it."""
    action = getattr(c, "pin_url", None) or reverse("checkpoint-pin", args=[context["run"].name, c.pk])
    return _pin_form(c, action, next_url, CsrfTokenNode().render(context), as_button)


def _escaped(value: object) -> str:
    """What ``conditional_escape`` returns, without its check for lazy translations on every call:
    the values of a row are model fields, numbers and fragments made here, never lazy."""
    return value.__html__() if hasattr(value, "__html__") else html.escape(str(value))


def _html(template: str, *args: object, **kwargs: object) -> SafeString:
    """``format_html`` (every value escaped) at the cost of ``str.format``: a history page makes
    hundreds of these fragments."""
    return SafeString(template.format(*map(_escaped, args), **{k: _escaped(v) for k, v in kwargs.items()}))


def _pin_form(c, action: str, next_url: str, csrf_input: str, as_button: bool = False) -> SafeString:
    if c.pinned:
        return _html(
            '<form method="post" action="{}" class="inline pin-form">{}\n'
            '  <input type="hidden" name="action" value="unpin"><input type="hidden" name="next" value="{}">\n'
            '  <button type="submit" class="secondary outline" title="Pinned: {}">Unpin</button>\n'
            "</form>", action, csrf_input, next_url, c.pin_reason)
    if not c.on_disk:
        return SafeString()
    return _html(
        '<details class="pin-form{}">\n'
        "  <summary{}>Pin…</summary>\n"
        '  <form method="post" action="{}" class="inline">{}\n'
        '    <input type="hidden" name="action" value="pin"><input type="hidden" name="next" value="{}">\n'
        '    <input type="text" name="reason" required maxlength="255" placeholder="Why keep it? e.g. shipped as v3"'
        ' aria-label="Reason to pin {}">\n'
        '    <button type="submit">Pin</button>\n'
        "  </form>\n"
        "</details>",
        SafeString(" pin-button" if as_button else ""),
        SafeString(' role="button" class="secondary outline"' if as_button else ""),
        action, csrf_input, next_url, c.prefix)


_ROW = """      <tr class="status-{status}">
        <td>{compare}</td>
        <td class="num"><a href="{url}">{step}</a></td>
        <td><a href="{url}"><code>{prefix}</code></a></td>
        <td>{saved}</td>
        <td class="num">{size}</td>
        {metrics}
        <td class="badges">{badges}
        </td>{pin}
      </tr>
"""
_FROM_STEP = ('<td class="num"><span title="No value was logged at this checkpoint\'s step; this one was logged at'
              ' step {}, in its save interval">{} <small class="muted metric-from">from step {}</small></span></td>')
_EXPORTED = SafeString('<span class="badge ok">exported</span>')
_OWN_META = SafeString('<span class="badge muted" title="has its own .meta graph">meta</span>')


@register.simple_tag(takes_context=True)
def history_rows(context: Context, page, maintain: bool, next_url: str) -> SafeString:
    """The ``<tr>`` of each checkpoint of a history page (``c.url``, ``c.pin_url``, ``c.metric_values``
    and ``c.has_export`` prepared by the view); ``maintain``: with the pin column, coming back to
    ``next_url``.

    Built here, as Django admin builds its change list's cells, rather than by a template loop:
    fifty rows of a dozen cells cost the template engine most of the page's CPU (a lookup, a
    filter and an escape per value, an include per pin form). Every value is escaped all the same.
    """
    csrf_input = CsrfTokenNode().render(context) if maintain else ""
    return SafeString("".join(_history_row(c, maintain, next_url, csrf_input) for c in page))


def _history_row(c, maintain: bool, next_url: str, csrf_input: str) -> str:
    on_disk = c.on_disk
    compare = _html('<input type="checkbox" name="c" value="{}" form="compare-form" aria-label="Compare {}">',
                    c.pk, c.prefix if c.step is None else f"step {c.step}") if on_disk else SafeString()
    size_cell = size(c.size_bytes) if on_disk else _html(
        '<span class="muted files-gone" title="Its files are gone; it was {}">gone</span>', size(c.size_bytes))
    metrics = SafeString("".join(
        '<td class="num">—</td>' if value is None
        else _html('<td class="num"><span title="at step">{}</span></td>', value) if logged is None
        else _html(_FROM_STEP, logged, value, logged)
        for value, logged in c.metric_values))
    badges = []
    if c.latest_in:
        badges.append(_html('<span class="badge info" title="tf.train.latest_checkpoint returns it">{}</span>',
                            latest_label(c.latest_in)))
    gone = _html(", {}", when(c.gone_at)) if c.gone_at else ""
    if c.status == "rotated":
        badges.append(_html('<span class="badge muted">rotated out</span> <small class="muted gone-note">'
                            "by the trainer's max_to_keep{}</small>", gone))
    elif c.status == "missing":
        badges.append(_html('{} <small class="muted gone-note">files vanished unexpectedly{}</small>',
                            status_badge(c.status), gone))
    elif c.status != "present":
        badges.append(status_badge(c.status))
    if c.pinned:
        badges.append(_html('<span class="badge pin" title="{}">pinned</span>', c.pin_reason))
    if c.has_export:
        badges.append(_EXPORTED)
    if c.has_own_meta:
        badges.append(_OWN_META)
    pin = _html("\n        <td>\n{}\n</td>", _pin_form(c, c.pin_url, next_url, csrf_input)) if maintain else SafeString()
    return _html(
        _ROW, status=c.status, compare=compare, url=c.url, step="—" if c.step is None else c.step,
        prefix=c.prefix, saved=when(c.saved_at), size=size_cell, metrics=metrics,
        badges=SafeString("".join("\n          " + badge for badge in badges)), pin=pin)
