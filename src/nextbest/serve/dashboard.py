"""The web dashboard at ``/dashboard`` and the blocks its pages and the reports are made of.

A page is a function ``build(ctx: PageContext) -> list[Block]`` registered with :func:`page`;
the blocks are KPI tiles (:class:`Metrics`), Plotly charts (:class:`Chart`), tables
(:class:`Table`) and notes (:class:`Note`). :func:`render` turns blocks into one HTML page, the
same for the dashboard (plotly.js served by nextbest from the plotly package, no CDN) and for
the self-contained report (plotly.js inlined). Filters travel as query parameters (``from``,
``to``, ``segment``, ``channel``, ``campaign``, ``date``, ``customer``), so every view has an
address.

The service never holds the DuckDB warehouse: a page opens it read-only for the time of the
request (:func:`read_warehouse`); while a batch job writes, the page says the warehouse is busy.
Rendered pages are cached for a minute per address.

Access: a key with the ``profiles`` scope (the ``Authorization`` header, or ``?key=`` once,
which sets a cookie), or local mode (``nextbest serve --local``, loopback only).
"""

from __future__ import annotations

import html
import importlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import ibis
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from nextbest.config import load_config
from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError, DataError

__all__ = [
    "PAGES",
    "Block",
    "Chart",
    "Filters",
    "Metrics",
    "Note",
    "Page",
    "PageContext",
    "Table",
    "dashboard_router",
    "load_pages",
    "page",
    "plotly_js_path",
    "read_warehouse",
    "render",
]

_CACHE_S = 60.0
_PAGE_MODULES = (
    "nextbest.serve.pages_insight",
    "nextbest.serve.pages_engine",
    "nextbest.serve.pages_customer",  # its page is registered by pages_engine, last
)
_COOKIE = "nextbest_key"


@dataclass(frozen=True)
class Filters:
    """What a page shows: a period, a segment, a channel, a campaign and day, a customer."""

    start: date | None = None
    end: date | None = None  # exclusive
    segment: str | None = None
    channel: str | None = None
    campaign: str | None = None
    day: date | None = None
    customer: str | None = None

    @classmethod
    def from_query(cls, query: dict[str, str]) -> Filters:
        def when(key: str) -> date | None:
            text = (query.get(key) or "").strip()
            if not text:
                return None
            try:
                return date.fromisoformat(text)
            except ValueError:
                raise ConfigError(f"{key}: expected a date YYYY-MM-DD, got {text!r}") from None

        def text(key: str) -> str | None:
            value = (query.get(key) or "").strip()
            return value[:200] or None

        return cls(
            when("from"),
            when("to"),
            text("segment"),
            text("channel"),
            text("campaign"),
            when("date"),
            text("customer"),
        )

    def query(self) -> dict[str, str]:
        pairs = {
            "from": self.start,
            "to": self.end,
            "segment": self.segment,
            "channel": self.channel,
            "campaign": self.campaign,
            "date": self.day,
            "customer": self.customer,
        }
        return {k: str(v) for k, v in pairs.items() if v is not None}

    def span(self) -> tuple[datetime | None, datetime | None]:
        """The period as UTC datetimes (``end`` exclusive)."""

        def at(d: date | None) -> datetime | None:
            return None if d is None else datetime(d.year, d.month, d.day, tzinfo=UTC)

        return at(self.start), at(self.end)


@dataclass
class Metrics:
    """KPI tiles: label -> (value text, trend text or None)."""

    items: dict[str, tuple[str, str | None]]
    title: str = ""


@dataclass
class Chart:
    title: str
    figure: Any  # a plotly Figure
    note: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class Note:
    text: str  # plain text, escaped when rendered
    kind: str = "info"  # info, warning


Block = Metrics | Chart | Table | Note


@dataclass
class PageContext:
    """What a page builder may read: the workspace folder, the filters, the service."""

    root: Path
    filters: Filters
    service: Any = None  # nextbest.serve.app.Service when served, None in reports
    _warehouse: Warehouse | None = field(default=None, repr=False)

    @property
    def warehouse(self) -> Warehouse:
        if self._warehouse is None:
            raise DataError("this page has no warehouse open")
        return self._warehouse


@dataclass(frozen=True)
class Page:
    slug: str
    title: str
    build: Callable[[PageContext], list[Block]]
    filters: tuple[str, ...]  # which filter inputs the page shows
    needs_warehouse: bool = True


PAGES: dict[str, Page] = {}


def page(
    slug: str, title: str, *, filters: tuple[str, ...] = (), needs_warehouse: bool = True
) -> Callable[[Callable[[PageContext], list[Block]]], Callable[[PageContext], list[Block]]]:
    """Register a page builder under ``/dashboard/<slug>``, in the order of registration."""

    def register(build: Callable[[PageContext], list[Block]]) -> Callable[..., list[Block]]:
        PAGES[slug] = Page(slug, title, build, filters, needs_warehouse)
        return build

    return register


@contextmanager
def read_warehouse(root: Path) -> Iterator[Warehouse]:
    """The workspace's warehouse, read-only, for the time of one page."""
    config = load_config(root / "nextbest.toml")
    path = Path(config.warehouse.path)
    path = path if path.is_absolute() else root / path
    try:
        con = ibis.duckdb.connect(str(path), read_only=True)
        con.raw_sql("SET enable_progress_bar = false")  # DuckDB's own bars would print
    except Exception as exc:  # the driver's lock error: a batch job is writing
        raise DataError(
            f"the warehouse is busy ({type(exc).__name__}): a batch job is writing; try again "
            "when it ends"
        ) from None
    try:
        yield Warehouse(con)
    finally:
        con.disconnect()


def load_pages() -> dict[str, Page]:
    """Import the page modules (they register themselves) and give the pages in order."""
    for module in _PAGE_MODULES:
        importlib.import_module(module)
    rank = {m: i for i, m in enumerate(_PAGE_MODULES)}
    # the header lists the modules' pages in this order, whatever was imported first
    ordered = sorted(PAGES.values(), key=lambda p: rank.get(p.build.__module__, len(rank)))
    PAGES.clear()
    PAGES.update((p.slug, p) for p in ordered)
    return PAGES


def plotly_js_path() -> Path:
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise DataError(f"plotly.js is missing from the plotly package ({path})")
    return path


def build_blocks(slug: str, ctx: PageContext) -> list[Block]:
    """Run a page's builder, with the warehouse open if it needs it; errors become notes."""
    p = PAGES[slug]
    try:
        if not p.needs_warehouse:
            return p.build(ctx)
        with read_warehouse(ctx.root) as wh:
            ctx._warehouse = wh
            try:
                return p.build(ctx)
            finally:
                ctx._warehouse = None
    except (DataError, ConfigError) as exc:
        return [Note(str(exc), "warning")]


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:10px 20px;display:flex;gap:18px;flex-wrap:wrap}
header a{color:#cfd6e4;text-decoration:none}header a.on{color:#fff;font-weight:600}
main{padding:16px 24px;max-width:1300px}h1{font-size:22px;margin:8px 0 12px}
h2{font-size:16px;margin:18px 0 6px}.tiles{display:flex;gap:12px;flex-wrap:wrap}
.tile{background:#fff;border-radius:6px;padding:10px 14px;min-width:140px;
box-shadow:0 1px 2px #0002}
.tile b{display:block;font-size:20px}.tile small{color:#5a6478}
.chart{background:#fff;border-radius:6px;min-height:360px;box-shadow:0 1px 2px #0002}
table{border-collapse:collapse;background:#fff;font-size:13px}td,th{padding:4px 8px;
border-bottom:1px solid #e3e6eb;text-align:left}.note{padding:8px 12px;border-radius:6px;
background:#e8f0fe}.warning{background:#fdecea}form{display:flex;gap:10px;flex-wrap:wrap;
align-items:end;margin-bottom:8px}label{font-size:12px;display:flex;flex-direction:column}
"""

_PLOT = """
document.querySelectorAll('.chart').forEach(function (el) {
  var fig = JSON.parse(el.dataset.figure);
  Plotly.newPlot(el, fig.data, fig.layout, {responsive: true, displaylogo: false});
});
document.body.dataset.ready = "1";
"""

_FILTER_INPUTS = {
    "dates": [("from", "From", "date"), ("to", "To (exclusive)", "date")],
    "segment": [("segment", "Segment", "text")],
    "channel": [("channel", "Channel", "text")],
    "campaign": [("campaign", "Campaign", "text"), ("date", "Day", "date")],
    "customer": [("customer", "Customer id", "text")],
}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return html.escape("" if value is None else str(value))


def _block_html(block: Block, n: int) -> str:
    if isinstance(block, Metrics):
        tiles = "".join(
            f'<div class="tile"><small>{html.escape(k)}</small><b>{html.escape(v)}</b>'
            + (f"<small>{html.escape(t)}</small>" if t else "")
            + "</div>"
            for k, (v, t) in block.items.items()
        )
        head = f"<h2>{html.escape(block.title)}</h2>" if block.title else ""
        return f'{head}<div class="tiles">{tiles}</div>'
    if isinstance(block, Chart):
        spec = html.escape(block.figure.to_json(), quote=True)
        note = f"<p>{html.escape(block.note)}</p>" if block.note else ""
        return (
            f"<h2>{html.escape(block.title)}</h2>{note}"
            f'<div class="chart" id="chart-{n}" data-figure="{spec}"></div>'
        )
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in block.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in block.rows
        )
        note = f"<p>{html.escape(block.note)}</p>" if block.note else ""
        return f"<h2>{html.escape(block.title)}</h2>{note}<table><tr>{head}</tr>{body}</table>"
    return f'<p class="note {html.escape(block.kind)}">{html.escape(block.text)}</p>'


def render(
    title: str,
    sections: list[tuple[str, list[Block]]],
    *,
    plotly_js: str,
    nav: list[tuple[str, str, bool]] | None = None,
    filters: Filters | None = None,
    inputs: tuple[str, ...] = (),
) -> str:
    """One HTML page: a header (``nav``: label, address, current), a filter form, sections.

    ``plotly_js`` is a ``<script>`` tag: a ``src`` for the dashboard, the code inlined for a
    report.
    """
    links = "".join(
        f'<a href="{html.escape(href)}" class="{"on" if on else ""}">{html.escape(label)}</a>'
        for label, href, on in (nav or [])
    )
    form = ""
    if inputs and filters is not None:
        values = filters.query()
        fields = "".join(
            f'<label>{label}<input name="{name}" type="{kind}" '
            f'value="{html.escape(values.get(name, ""))}"></label>'
            for group in inputs
            for name, label, kind in _FILTER_INPUTS[group]
        )
        form = (
            f'<form method="get" id="filters">{fields}<button type="submit">Apply</button></form>'
        )
    n = 0
    body = []
    for heading, blocks in sections:
        if heading:
            body.append(f"<h1>{html.escape(heading)}</h1>")
        for block in blocks:
            body.append(_block_html(block, n))
            n += 1
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><link rel='icon' href='data:,'>"
        f"<style>{_STYLE}</style>{plotly_js}</head>"
        f"<body><header><b>nextbest</b>{links}</header><main>{form}{''.join(body)}</main>"
        f"<script>{_PLOT}</script></body></html>"
    )


def dashboard_router(root: Path, service: Any, authorise: Callable[[Request], None]) -> APIRouter:
    """The dashboard's routes; ``authorise(request)`` raises when the caller may not read."""
    load_pages()
    router = APIRouter(include_in_schema=False)
    cache: dict[str, tuple[float, str]] = {}

    @router.get("/dashboard")
    def home(request: Request) -> Response:
        authorise(request)
        first = next(iter(PAGES))
        return _with_cookie(request, RedirectResponse(f"/dashboard/{first}", status_code=307))

    @router.get("/dashboard/static/plotly.min.js")
    def plotly_js() -> FileResponse:
        return FileResponse(plotly_js_path(), media_type="text/javascript")

    @router.get("/dashboard/{slug}")
    def show(slug: str, request: Request) -> Response:
        authorise(request)
        if slug not in PAGES:
            known = ", ".join(PAGES)
            raise DataError(f"no dashboard page {slug!r}; pages: {known}")
        filters = Filters.from_query(dict(request.query_params))
        key = f"{slug}?{sorted(filters.query().items())}"
        hit = cache.get(key)
        if hit and time.monotonic() - hit[0] < _CACHE_S:
            return _with_cookie(request, HTMLResponse(hit[1]))
        p = PAGES[slug]
        blocks = build_blocks(slug, PageContext(root, filters, service))
        query = "&".join(f"{k}={v}" for k, v in filters.query().items())
        nav = [
            (q.title, f"/dashboard/{q.slug}" + (f"?{query}" if query else ""), q.slug == slug)
            for q in PAGES.values()
        ]
        text = render(
            f"nextbest: {p.title}",
            [(p.title, blocks)],
            plotly_js='<script src="/dashboard/static/plotly.min.js"></script>',
            nav=nav,
            filters=filters,
            inputs=p.filters,
        )
        cache[key] = (time.monotonic(), text)
        return _with_cookie(request, HTMLResponse(text))

    return router


def _with_cookie(request: Request, response: Response) -> Response:
    key = request.query_params.get("key")
    if key:
        response.set_cookie(_COOKIE, key, httponly=True, samesite="strict")
    return response


def figure_json(figure: Any) -> dict[str, Any]:
    """A figure as plain JSON (tests compare what a chart draws)."""
    return json.loads(figure.to_json())  # type: ignore[no-any-return]
