"""``nextbest report``: every dashboard page in one HTML file that asks the network for nothing.

The browser half (the file opened in Chromium, its requests recorded) is in test_dashboard.py.
"""

from __future__ import annotations

import json
import re
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import plotly.graph_objects as go
import pytest
from typer.testing import CliRunner

import nextbest.cli.report  # noqa: F401 - registers the command
import nextbest.serve.report as report_module
from nextbest.cli.main import app
from nextbest.serve.dashboard import (
    PAGES,
    Chart,
    Filters,
    Note,
    Page,
    PageContext,
    build_blocks,
    load_pages,
    plotly_js_path,
)
from nextbest.serve.report import build_report, inline_plotly_js
from tests.serve.conftest import Shop

load_pages()


class _Parsed(HTMLParser):
    """What a report is made of: its headings, chart figures and every outward reference."""

    def __init__(self) -> None:
        super().__init__()
        self.h1: list[str] = []
        self.h2: list[str] = []
        self.charts: list[tuple[str, dict]] = []  # (the heading before it, its figure)
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()
        self._text: list[str] | None = None
        self._tag = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = dict(attrs)
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            if values.get(name):
                self.refs.append((tag, name, str(values[name])))
        if "chart" in (values.get("class") or "").split():
            heading = self.h2[-1] if self.h2 else ""
            self.charts.append((heading, json.loads(values["data-figure"] or "{}")))
        if tag in ("h1", "h2"):
            self._text, self._tag = [], tag

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._text is not None and tag == self._tag:
            (self.h1 if tag == "h1" else self.h2).append("".join(self._text))
            self._text = None


def _parse(text: str) -> _Parsed:
    parsed = _Parsed()
    parsed.feed(text)
    return parsed


@pytest.fixture(scope="module")
def report(shop: Shop) -> str:
    return build_report(shop.root)


def test_the_report_holds_every_page_with_the_charts_the_pages_build(
    shop: Shop, report: str
) -> None:
    parsed = _parse(report)
    today = date.today().isoformat()
    # the first heading is the title: the workspace's name and the day it was made
    assert parsed.h1[0] == f"nextbest report: {shop.root.name}, {today}"
    assert f"<title>nextbest report: {shop.root.name}, {today}</title>" in report
    assert parsed.h1[1:] == [p.title for p in PAGES.values()]
    assert len(PAGES) >= 9  # overview, funnels, segments, basket, models, decisions, ...
    # the same charts, in the same order and with the same traces, as the pages build
    expected = []
    for p in PAGES.values():
        for block in build_blocks(p.slug, PageContext(shop.root, Filters())):
            if isinstance(block, Chart):
                fig = json.loads(block.figure.to_json())
                expected.append((block.title, [t.get("type") for t in fig["data"]]))
    drawn = [(title, [t.get("type") for t in fig["data"]]) for title, fig in parsed.charts]
    assert drawn == expected
    assert len(drawn) >= 10
    assert all(fig["data"] for _, fig in parsed.charts)


def test_the_report_is_self_contained(report: str) -> None:
    parsed = _parse(report)
    # nothing is fetched: no src, href or form action anywhere but data: addresses (an icon)
    assert [r for r in parsed.refs if not r[2].startswith("data:")] == []
    assert not parsed.tags & {"img", "iframe", "object", "embed", "base", "form"}
    styles = " ".join(re.findall(r"<style>(.*?)</style>", report, re.S))
    assert "url(" not in styles and "@import" not in styles
    # plotly.js is inlined whole, in the head
    code = plotly_js_path().read_text(encoding="utf-8")
    head = report[: report.index("</head>")]
    assert code in head
    assert len(report) > len(code)


def test_report_filters_reach_every_page(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[PageContext] = []

    def probe(ctx: PageContext) -> list:
        seen.append(ctx)
        figure = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
        return [Note(f"probe for {ctx.filters.campaign}"), Chart("Probe chart", figure)]

    monkeypatch.setitem(PAGES, "probe", Page("probe", "Probe page", probe, (), False))
    text = build_report(
        shop.root,
        campaign="web-reco",
        day=date(2026, 1, 11),
        filters=Filters(start=date(2026, 1, 3), end=date(2026, 1, 9), campaign="other"),
    )
    (ctx,) = seen
    # --campaign and --date win over the filters'; the period is kept; no service in a report
    assert ctx.filters == Filters(
        start=date(2026, 1, 3), end=date(2026, 1, 9), campaign="web-reco", day=date(2026, 1, 11)
    )
    assert ctx.service is None and ctx.root == shop.root
    parsed = _parse(text)
    assert parsed.h1[-1] == "Probe page"
    assert parsed.charts[-1][0] == "Probe chart"
    assert parsed.charts[-1][1]["data"][0]["y"] == [1, 2]
    assert "probe for web-reco" in text
    intro = "from 2026-01-03; to (exclusive) 2026-01-09; campaign web-reco; day 2026-01-11"
    assert intro in text


def test_a_closing_script_tag_in_plotly_js_is_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "plotly.min.js"
    fake.write_text('var a = "</script><b>"; var b = "</SCRIPT >";', encoding="utf-8")
    monkeypatch.setattr(report_module, "plotly_js_path", lambda: fake)
    inline_plotly_js.cache_clear()
    try:
        tag = inline_plotly_js()
    finally:
        inline_plotly_js.cache_clear()
    assert tag == '<script>var a = "<\\/script><b>"; var b = "<\\/SCRIPT >";</script>'
    assert tag.lower().count("</script") == 1


def test_report_command(shop: Shop, tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "out" / "shop.html"
    args = ["report", "-w", str(shop.root), "--out", str(target)]
    chosen = ["--campaign", "daily-email", "--date", "2026-01-11", "--json"]
    done = runner.invoke(app, [*args, *chosen])
    assert done.exit_code == 0, done.output
    info = json.loads(done.stdout)
    assert info == {"out": str(target), "bytes": target.stat().st_size}
    text = target.read_text(encoding="utf-8")
    assert "campaign daily-email; day 2026-01-11" in text
    assert _parse(text).h1[1:] == [p.title for p in PAGES.values()]
    shown = runner.invoke(app, [*args, "--from", "2026-01-02", "--to", "2026-01-06"])
    assert shown.exit_code == 0, shown.output
    assert f"Report written to {target} (" in shown.stdout and " MB)" in shown.stdout
    assert "from 2026-01-02; to (exclusive) 2026-01-06" in target.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "r.pdf"], "--out: expected a file name ending in .html, got 'r.pdf'"),
        (
            ["--out", "r.html", "--date", "Tuesday"],
            "--date: expected a date such as 2026-03-01, got 'Tuesday'",
        ),
        (
            ["--out", "r.html", "--from", "2026-01-05", "--to", "2026-01-05"],
            "--to: expected a day after --from (2026-01-05), got 2026-01-05",
        ),
    ],
)
def test_report_command_refuses_bad_options(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["report", "-w", str(shop.root), *extra])
    assert done.exit_code == 1
    assert message in " ".join(done.output.split())
    assert not (tmp_path / "r.html").exists()
