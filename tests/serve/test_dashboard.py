"""The dashboard in a real browser: ``nextbest serve`` as a process, Chromium driven by Playwright.

Chromium is Debian's (/usr/bin/chromium, installed by build-aux/ensure-chromium.sh, which
``make test`` runs first); nothing is downloaded. Every page must load with its charts drawn and
nothing in the console; a screenshot of each is kept in build/test-artifacts/dashboard/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from nextbest.data.workspace import Workspace
from nextbest.decide import Explanation, explain, load_campaign
from nextbest.serve.dashboard import load_pages
from nextbest.serve.report import build_report
from nextbest.serve.security import KeyStore
from nextbest.serve.settings import ServeSettings
from tests.serve.conftest import DAY, Shop
from tests.serve.test_http import Server, _free_port

pytestmark = pytest.mark.slow

PAGES = load_pages()

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTEFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "dashboard"
UNDRAWN = """() => Array.from(document.querySelectorAll('.chart'))
    .map((el, i) => el.querySelector('.main-svg') === null ? i : -1).filter(i => i >= 0)"""


@dataclass
class DashboardServer(Server):
    """``nextbest serve`` with one worker, in local mode or not."""

    local: bool = False
    workers: int = 1

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        log = self.root / f"server-{port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nextbest", "serve", "--workspace", str(self.root)]
            + ["--port", port, "--workers", str(self.workers)]
            + (["--local"] if self.local else []),
            env={**os.environ, "NO_COLOR": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            start_new_session=True,  # its own process group: stop() reaches every worker
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(log.read_text())
            time.sleep(0.2)
        raise TimeoutError(f"the server did not become ready in 60 s: {log.read_text()}")


@dataclass
class Servers:
    local: DashboardServer  # --local: no key needed
    keyed: DashboardServer  # keys only


@pytest.fixture(scope="module")
def servers(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("dashboard") / "ws"
    shutil.copytree(shop.root, root)
    store = KeyStore(ServeSettings().db_path(root))
    keys = {s: store.create(f"test-{s}", [s])[1] for s in ("profiles", "decide")}
    both = Servers(
        DashboardServer(root, f"http://127.0.0.1:{_free_port()}", keys, local=True),
        DashboardServer(root, f"http://127.0.0.1:{_free_port()}", keys),
    )
    try:
        with ThreadPoolExecutor(2) as pool:  # start together; a failure is raised here
            list(pool.map(DashboardServer.start, (both.local, both.keyed)))
        yield both
    finally:
        both.local.stop()
        both.keyed.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard's browser tests need Debian's chromium; run "
            "'sh build-aux/ensure-chromium.sh' (as root it installs it; 'make test' runs it)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclass
class Visit:
    """A browser tab, with what it asked for and what went wrong in it."""

    page: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    def goto(self, url: str) -> Any:
        response = self.page.goto(url, wait_until="load")
        if response is not None and response.ok:
            self.wait_drawn()
        return response

    def wait_drawn(self) -> None:
        """Until the page's script has run (``data-ready``) and Plotly has drawn every chart
        (or 10 s have passed: :meth:`undrawn` then says which are not)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.page.wait_for_function("() => document.body.dataset.ready === '1'", timeout=20_000)
        with contextlib.suppress(PlaywrightTimeout):
            self.page.wait_for_function(f"() => ({UNDRAWN})().length === 0", timeout=10_000)

    def undrawn(self) -> list[int]:
        """The positions of the charts with no plot drawn in them."""
        return list(self.page.evaluate(UNDRAWN))

    def figures(self) -> list[dict[str, Any]]:
        """What each chart draws, from its ``data-figure``."""
        specs = self.page.eval_on_selector_all(".chart", "els => els.map(e => e.dataset.figure)")
        return [json.loads(s) for s in specs]


@pytest.fixture
def visit(browser: Any) -> Iterator[Visit]:
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    tab = Visit(context.new_page())

    def on_console(message: Any) -> None:
        if message.type == "error":
            tab.errors.append(f"console: {message.text} at {message.location}")

    tab.page.on("console", on_console)
    tab.page.on("pageerror", lambda exc: tab.errors.append(f"page error: {exc}"))
    tab.page.on("request", lambda request: tab.requests.append(request.url))
    yield tab
    context.close()


def test_the_dashboard_has_the_issue_pages() -> None:
    expected = ["overview", "funnels", "segments", "basket", "models", "decisions"]
    expected += ["experiments", "loop", "customer"]
    assert [s for s in PAGES if s in expected] == expected


@pytest.mark.parametrize("slug", list(PAGES))
def test_every_page_loads_with_its_charts_drawn_and_no_console_error(
    servers: Servers, visit: Visit, slug: str
) -> None:
    srv = servers.local
    response = visit.goto(f"{srv.url}/dashboard/{slug}")
    assert response is not None and response.status == 200
    assert visit.page.evaluate("document.body.dataset.ready") == "1"
    assert visit.page.title() == f"nextbest: {PAGES[slug].title}"
    assert visit.page.inner_text("h1") == PAGES[slug].title
    assert visit.undrawn() == [], f"charts of {slug} with no plot drawn"
    # plotly.js and everything else come from nextbest itself: no CDN
    assert f"{srv.url}/dashboard/static/plotly.min.js" in visit.requests
    assert [u for u in visit.requests if not u.startswith(srv.url + "/")] == []
    visit.page.screenshot(path=str(_artefact(f"{slug}.png")), full_page=True)
    assert visit.errors == []


def test_filters_change_the_overview_charts(servers: Servers, visit: Visit) -> None:
    srv = servers.local
    visit.goto(f"{srv.url}/dashboard/overview")
    before = visit.figures()
    assert len(before) >= 3, "the overview draws its daily charts"
    days = before[0]["data"][0]["x"]  # revenue per day over the default period
    assert {"2026-01-04", "2026-01-07"} <= set(days)
    visit.page.fill("#filters input[name=from]", "2026-01-04")
    visit.page.fill("#filters input[name=to]", "2026-01-08")
    with visit.page.expect_navigation():
        visit.page.click("#filters button[type=submit]")
    visit.wait_drawn()
    assert "from=2026-01-04" in visit.page.url and "to=2026-01-08" in visit.page.url
    assert visit.page.input_value("#filters input[name=from]") == "2026-01-04"
    after = visit.figures()
    assert len(after) == len(before)
    # the period is now the four days asked for, each with the revenue it had before
    revenue = after[0]["data"][0]
    assert revenue["x"] == ["2026-01-04", "2026-01-05", "2026-01-06", "2026-01-07"]
    was = dict(zip(days, before[0]["data"][0]["y"], strict=True))
    assert revenue["y"] == pytest.approx([was[d] for d in revenue["x"]])
    # a segment keeps its members' revenue only: less on some day, more on none
    visit.page.fill("#filters input[name=segment]", "champions")
    with visit.page.expect_navigation():
        visit.page.click("#filters button[type=submit]")
    visit.wait_drawn()
    assert "segment=champions" in visit.page.url
    champions = visit.figures()[0]["data"][0]
    assert champions["x"] == revenue["x"]
    assert champions["y"] != revenue["y"]
    assert all(c <= r + 1e-9 for c, r in zip(champions["y"], revenue["y"], strict=True))
    assert visit.errors == []


@pytest.fixture(scope="module")
def explained(shop: Shop) -> dict[str, Explanation]:
    """The batch day's explanation, as 'nextbest explain' gives it, of a member who was sent
    offers and of one who was left out (the page must show the same)."""
    ws = Workspace.open(shop.root)
    try:
        spec = load_campaign(shop.root / "campaign.toml")
        ids = ws.warehouse.table("customers").order_by("customer_id").customer_id.to_pandas()
        found: dict[str, Explanation] = {}
        for cid in ids.iloc[:40]:
            got = explain(ws, spec, str(cid), DAY)
            kind = "chosen" if any(e.status == "chosen" for e in got.offers) else "excluded"
            if kind == "excluded" and not all(e.status == "excluded" for e in got.offers):
                continue
            found.setdefault(kind, got)
            if len(found) == 2:
                return found
    finally:
        ws.close()
    raise AssertionError(f"no member mailed and one left out among the first 40: {found}")


def _table_rows(visit: Visit, title: str) -> list[list[str]]:
    table = visit.page.locator(f"xpath=//h2[text()='{title}']/following-sibling::table[1]")
    rows = table.locator("tr").all()[1:]  # after the header
    return [[c.strip() for c in r.locator("td").all_inner_texts()] for r in rows]


def test_the_customer_page_explains_the_next_best_action(
    servers: Servers, visit: Visit, explained: dict[str, Explanation]
) -> None:
    srv = servers.local
    mailed = explained["chosen"]
    response = visit.goto(f"{srv.url}/dashboard/customer?customer={mailed.customer_id}")
    assert response is not None and response.status == 200
    assert visit.page.input_value("#filters input[name=customer]") == mailed.customer_id
    chosen = sorted((e for e in mailed.offers if e.status == "chosen"), key=lambda e: e.slot)
    rows = _table_rows(visit, "Next best action")
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (e.offer_id, "chosen", str(e.slot)) for e in chosen
    ]
    # the others, each with why it lost: its reduced value against the lowest chosen
    others = {r[0]: r for r in _table_rows(visit, "Why not the others")}
    not_chosen = [e for e in mailed.offers if e.status == "not chosen"]
    assert set(others) == {e.offer_id for e in not_chosen}
    first = not_chosen[0]
    assert others[first.offer_id][2] == "not chosen"
    assert "; ".join(first.reasons) in others[first.offer_id][-1]
    assert "below the lowest chosen" in others[first.offer_id][-1]
    # a member left out: no offer, and every offer excluded with its rule
    left_out = explained["excluded"]
    visit.goto(f"{srv.url}/dashboard/customer?customer={left_out.customer_id}")
    assert _table_rows(visit, "Next best action") == []
    assert f"No offer of daily-email was chosen for {left_out.customer_id}" in (
        visit.page.inner_text("main")
    )
    reasons = {r[0]: r[-1] for r in _table_rows(visit, "Why not the others")}
    assert set(reasons) == {e.offer_id for e in left_out.offers}
    for e in left_out.offers:  # its rules, then any binding constraint with its shadow price
        assert reasons[e.offer_id].startswith("; ".join(e.reasons)), (e, reasons[e.offer_id])
    visit.page.screenshot(path=str(_artefact("customer-explained.png")), full_page=True)
    assert visit.errors == []


def test_without_local_mode_the_dashboard_needs_a_profiles_key(
    servers: Servers, visit: Visit
) -> None:
    srv = servers.keyed
    refused = httpx.get(f"{srv.url}/dashboard/overview", timeout=10)
    assert refused.status_code == 401
    assert "needs a key with the scope 'profiles'" in refused.json()["error"]["message"]
    wrong = httpx.get(f"{srv.url}/dashboard/overview", params={"key": srv.keys["decide"]})
    assert wrong.status_code == 403
    # ?key= once opens the dashboard and leaves a cookie for the next pages
    response = visit.goto(f"{srv.url}/dashboard?key={srv.keys['profiles']}")
    assert response is not None and response.status == 200
    assert visit.page.url.startswith(f"{srv.url}/dashboard/overview")
    again = visit.goto(f"{srv.url}/dashboard/funnels")
    assert again is not None and again.status == 200
    assert visit.page.inner_text("h1") == PAGES["funnels"].title
    assert visit.errors == []


def test_the_report_opens_offline_with_its_charts_drawn(
    servers: Servers, visit: Visit, tmp_path: Path
) -> None:
    target = tmp_path / "report.html"
    target.write_text(build_report(servers.local.root), encoding="utf-8")
    size = target.stat().st_size
    print(f"report: {size:,} bytes ({size / 1e6:.1f} MB), {len(PAGES)} pages")
    url = target.as_uri()
    response = visit.page.goto(url, wait_until="load")
    assert response is not None and response.ok
    visit.wait_drawn()
    assert visit.requests == [url]  # the file itself, nothing else
    assert visit.page.locator(".chart").count() >= 10
    assert visit.undrawn() == []
    assert visit.page.locator("h1").all_inner_texts()[1:] == [p.title for p in PAGES.values()]
    visit.page.screenshot(path=str(_artefact("report.png")), full_page=False)
    assert visit.errors == []


def _artefact(name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    return ARTEFACTS / name
