"""Reports: every dashboard page in one self-contained HTML file.

:func:`build_report` runs the builder of every dashboard page, in the dashboard's order
(:func:`~nextbest.serve.dashboard.load_pages`), with no service behind it, and renders the
blocks with the dashboard's own :func:`~nextbest.serve.dashboard.render`, plotly.js inlined:
the file opens anywhere, offline, and asks the network for nothing (no CDN, no web fonts, no
remote images). ``nextbest report`` is its command.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path

from nextbest.config import load_config
from nextbest.progress import NullReporter, Reporter
from nextbest.serve.dashboard import (
    Block,
    Filters,
    Note,
    PageContext,
    build_blocks,
    load_pages,
    plotly_js_path,
    render,
)

__all__ = ["build_report", "inline_plotly_js"]

_SCRIPT_END = re.compile(r"</(script)", re.IGNORECASE)


@cache
def inline_plotly_js() -> str:
    """plotly.js as an inline ``<script>`` element (any ``</script`` in it escaped)."""
    code = plotly_js_path().read_text(encoding="utf-8")
    return "<script>" + _SCRIPT_END.sub(r"<\\/\1", code) + "</script>"


def build_report(
    root: Path,
    *,
    campaign: str | None = None,
    day: date | None = None,
    filters: Filters | None = None,
    reporter: Reporter | None = None,
) -> str:
    """The HTML of a report on the workspace at ``root``: one section per dashboard page.

    Parameters
    ----------
    root
        The workspace folder. Its warehouse is opened read-only, one page at a time.
    campaign, day
        The campaign and day the campaign pages show (``--campaign``, ``--date``); they
        override those in ``filters``.
    filters
        Period, segment, channel and so on, as the dashboard's query parameters give them.
    reporter
        Told of each page as it is built.
    """
    reporter = reporter or NullReporter()
    root = Path(root)
    name = load_config(root / "nextbest.toml").workspace.name
    filters = filters or Filters()
    if campaign is not None:
        filters = replace(filters, campaign=campaign)
    if day is not None:
        filters = replace(filters, day=day)
    made = datetime.now(UTC)
    title = f"nextbest report: {name}, {made:%Y-%m-%d}"
    sections: list[tuple[str, list[Block]]] = [(title, [Note(_describe(filters, made))])]
    pages = list(load_pages().values())
    for n, p in enumerate(pages, 1):
        reporter.start(1, f"Report: page {n}/{len(pages)}, {p.title}")
        sections.append((p.title, build_blocks(p.slug, PageContext(root, filters, service=None))))
        reporter.advance()
    reporter.finish()
    return render(title, sections, plotly_js=inline_plotly_js())


def _describe(filters: Filters, made: datetime) -> str:
    shown = {
        "from": "from",
        "to": "to (exclusive)",
        "segment": "segment",
        "channel": "channel",
        "campaign": "campaign",
        "date": "day",
        "customer": "customer",
    }
    given = filters.query()
    scope = "; ".join(f"{shown[k]} {v}" for k, v in given.items()) or "all the data"
    return (
        f"Made {made:%Y-%m-%d %H:%M} UTC by 'nextbest report' from the workspace's warehouse "
        f"and models. Shows: {scope}. Pages: {', '.join(p.title for p in load_pages().values())}."
    )
