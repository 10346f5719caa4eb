"""The insight pages (overview, funnels, segments, basket) against pandas on the warehouse.

Every number checked here is recomputed from the warehouse's tables with pandas, not read back
from the core function the page calls; the RFM segment of a member (features.rfm, tested in
tests/features) is the only core result the checks reuse, to pick the members of a segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import combinations
from typing import Any

import pandas as pd
import pytest

from nextbest.features import rfm
from nextbest.serve import pages_insight  # noqa: F401  (registers the pages)
from nextbest.serve.dashboard import (
    PAGES,
    Block,
    Chart,
    Filters,
    Metrics,
    Note,
    PageContext,
    Table,
    build_blocks,
    read_warehouse,
)
from tests.serve.conftest import Shop

SLUGS = ["overview", "funnels", "segments", "basket"]
START, END = date(2026, 1, 6), date(2026, 1, 11)  # the shop's last 5 days; members have RFM
LATE = datetime(2026, 1, 6, tzinfo=UTC)


@dataclass
class Tables:
    events: pd.DataFrame
    products: pd.DataFrame
    customers: pd.DataFrame
    last_day: date


@pytest.fixture(scope="module")
def tables(shop: Shop) -> Tables:
    with read_warehouse(shop.root) as wh:
        ev = wh.table("events").to_pandas()
        products = wh.table("products").to_pandas()
        customers = wh.table("customers").to_pandas()
    ev["day"] = ev.ts.dt.tz_convert("UTC").dt.date
    return Tables(ev, products, customers, ev.day.max())


def blocks_of(shop: Shop, slug: str, **filters: Any) -> list[Block]:
    return build_blocks(slug, PageContext(shop.root, Filters(**filters)))


def chart(blocks: list[Block], title: str) -> Chart:
    found = [b for b in blocks if isinstance(b, Chart) and b.title.startswith(title)]
    assert found, f"no chart {title!r} in {[getattr(b, 'title', b) for b in blocks]}"
    return found[0]


def trace(c: Chart, name: str) -> list[Any]:
    return next(t for t in c.figure.data if t.name == name).y  # type: ignore[no-any-return]


def segment_of(shop: Shop, as_of: datetime) -> pd.Series:
    with read_warehouse(shop.root) as wh:
        s = rfm(wh, as_of).select("customer_id", "segment").to_pandas()
    return s.set_index("customer_id").segment


def revenue_by_day(ev: pd.DataFrame, days: list[date]) -> list[float]:
    sign = ev.type.map({"purchase": 1.0, "return": -1.0}).fillna(0.0)
    per_day = (ev.amount.fillna(0) * sign).groupby(ev.day).sum()
    return [float(per_day.get(d, 0.0)) for d in days]


def in_period(ev: pd.DataFrame, start: date, end: date) -> pd.DataFrame:
    return ev[(ev.day >= start) & (ev.day < end)]


def calendar(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]


# Every page ----------------------------------------------------------------------------------


def test_pages_are_registered_in_order() -> None:
    slugs = list(PAGES)
    assert [s for s in slugs if s in SLUGS] == SLUGS
    assert slugs.index("overview") == 0


@pytest.mark.parametrize("slug", SLUGS)
def test_page_builds_without_warnings_and_its_charts_carry_data(shop: Shop, slug: str) -> None:
    blocks = blocks_of(shop, slug)
    warnings = [b.text for b in blocks if isinstance(b, Note) and b.kind == "warning"]
    assert warnings == []
    charts = [b for b in blocks if isinstance(b, Chart)]
    assert len(charts) >= {"overview": 3, "funnels": 4, "segments": 3, "basket": 2}[slug]
    for c in charts:
        assert c.figure.layout.margin.t == 30, c.title
        points = [len(v) for t in c.figure.data for v in (t.x, t.y, getattr(t, "z", None)) if v]
        assert points and max(points) > 0, c.title
        assert sum(points) < 5_000, c.title


def test_bad_filters_are_warnings_not_errors(shop: Shop) -> None:
    [note] = blocks_of(shop, "overview", segment="champs")
    assert note.kind == "warning" and "segment: expected one of champions" in note.text
    [note] = blocks_of(shop, "funnels", start=END, end=START)
    assert note.kind == "warning" and "must be before To" in note.text


# Overview ------------------------------------------------------------------------------------


def test_overview_defaults_to_the_last_28_days_and_matches_pandas(
    shop: Shop, tables: Tables
) -> None:
    blocks = blocks_of(shop, "overview")
    end = tables.last_day + timedelta(days=1)
    days = calendar(end - timedelta(days=28), end)
    ev = tables.events
    money = chart(blocks, "Revenue and margin per day")
    assert list(money.figure.data[0].x) == [d.isoformat() for d in days]
    assert trace(money, "revenue") == pytest.approx(revenue_by_day(ev, days))
    buys = ev[ev.type == "purchase"].merge(tables.products[["product_id", "cost"]], "left")
    buys = buys[buys.cost.notna()]
    margin = (buys.amount - buys.quantity.fillna(1) * buys.cost).groupby(buys.day).sum()
    assert trace(money, "margin") == pytest.approx([float(margin.get(d, 0)) for d in days])
    active = chart(blocks, "Active members and conversion")
    buyers = ev[ev.type == "purchase"].groupby("day").customer_id.nunique()
    assert list(trace(active, "active members")) == [int(buyers.get(d, 0)) for d in days]
    rates = chart(blocks, "E-mail rates per day")
    sent = ev[ev.type == "email_sent"].groupby("day").size()
    opens = ev[ev.type == "email_open"].groupby("day").size()
    expected = [opens.get(d, 0) / sent[d] if d in sent.index else None for d in days]
    drawn = trace(rates, "open rate")
    assert [pd.isna(x) for x in drawn] == [x is None for x in expected]  # no e-mail, no rate
    assert [x for x in drawn if pd.notna(x)] == pytest.approx([x for x in expected if x])
    [tiles] = [b for b in blocks if isinstance(b, Metrics)]
    revenue, trend = tiles.items["Revenue"]
    assert float(revenue.replace(",", "")) == pytest.approx(sum(revenue_by_day(ev, days)), abs=0.01)
    assert "previous 28 days" in str(trend)
    assert int(tiles.items["Active members"][0]) == ev[ev.type == "purchase"].customer_id.nunique()
    assert set(tiles.items) == {
        "Revenue",
        "Margin",
        "Conversion",
        "Open rate",
        "Click rate",
        "Unsubscribe rate",
        "Active members",
    }


def test_overview_trend_compares_with_the_period_before(shop: Shop, tables: Tables) -> None:
    blocks = blocks_of(shop, "overview", start=START, end=END)
    [tiles] = [b for b in blocks if isinstance(b, Metrics)]
    ev = tables.events
    now = sum(revenue_by_day(ev, calendar(START, END)))
    before = sum(revenue_by_day(ev, calendar(START - (END - START), START)))
    assert tiles.items["Revenue"][1] == f"{(now - before) / before:+.1%} vs previous 5 days"
    sent = in_period(ev, START, END).type.eq("email_sent").sum()
    opens = in_period(ev, START, END).type.eq("email_open").sum()
    assert tiles.items["Open rate"][0] == f"{opens / sent:.2%}"


def test_segment_and_channel_filters_change_the_overview(shop: Shop, tables: Tables) -> None:
    days = calendar(START, END)
    ev = in_period(tables.events, START, END)
    whole = trace(chart(blocks_of(shop, "overview", start=START, end=END), "Revenue"), "revenue")
    # the segment (as of the period's start) with the most revenue in the period
    seg = segment_of(shop, LATE)
    by_member = ev.assign(segment=ev.customer_id.map(seg))
    totals = {s: sum(revenue_by_day(g, days)) for s, g in by_member.groupby("segment")}
    top = max((s for s in totals if s != "inactive"), key=lambda s: abs(totals[s]))
    assert totals[top] != 0
    blocks = blocks_of(shop, "overview", start=START, end=END, segment=top)
    filtered = trace(chart(blocks, "Revenue"), "revenue")
    assert filtered == pytest.approx(revenue_by_day(by_member[by_member.segment == top], days))
    assert filtered != pytest.approx(whole)
    [tiles] = [b for b in blocks if isinstance(b, Metrics)]
    assert float(tiles.items["Revenue"][0].replace(",", "")) == pytest.approx(totals[top], abs=0.01)
    app = blocks_of(shop, "overview", start=START, end=END, channel="app")
    in_app = trace(chart(app, "Revenue"), "revenue")
    assert in_app == pytest.approx(revenue_by_day(ev[ev.channel == "app"], days))
    assert 0 < sum(in_app) < sum(whole)
    email = blocks_of(shop, "overview", start=START, end=END, channel="email")
    assert sum(trace(chart(email, "Revenue"), "revenue")) == 0  # no purchase is an e-mail's


# Funnels -------------------------------------------------------------------------------------


def strict_funnel(ev: pd.DataFrame, kinds: list[str]) -> list[int]:
    ev = ev[ev.customer_id.notna()]
    flags = pd.crosstab([ev.customer_id, ev.day], ev.type).reindex(columns=kinds, fill_value=0) > 0
    return flags.cumprod(axis=1).sum().astype(int).tolist()


EMAIL = ["email_sent", "email_open", "email_click", "visit", "add_to_cart", "purchase"]
SITE = ["visit", "view", "add_to_cart", "purchase"]


def test_funnel_counts_and_drop_off_match_pandas(shop: Shop, tables: Tables) -> None:
    blocks = blocks_of(shop, "funnels", start=START, end=END)
    ev = in_period(tables.events, START, END)
    for title, kinds in (("E-mail funnel", EMAIL), ("Site funnel", SITE)):
        fig = chart(blocks, title).figure
        counts = strict_funnel(ev, kinds)
        assert list(fig.data[0].x) == counts
        assert counts[0] > counts[-1] > 0
        drop = 1 - counts[1] / counts[0]
        assert f"(drop-off {drop:.1%})" in fig.data[0].text[1]


def test_funnels_by_segment_match_pandas(shop: Shop, tables: Tables) -> None:
    ev = in_period(tables.events, START, END)
    seg = segment_of(shop, LATE)
    ev = ev.assign(segment=ev.customer_id.map(seg))
    blocks = blocks_of(shop, "funnels", start=START, end=END)
    grouped = chart(blocks, "E-mail funnel by segment").figure
    assert len(grouped.data) == ev.segment.nunique() >= 3
    for bars in grouped.data:
        name = bars.name.split(" (")[0]
        counts = strict_funnel(ev[ev.segment == name], EMAIL)
        assert list(bars.y) == pytest.approx([c / counts[0] for c in counts])
    top = ev[ev.segment.ne("inactive") & ev.type.eq("visit")].segment.value_counts().index[0]
    filtered = blocks_of(shop, "funnels", start=START, end=END, segment=top)
    site = chart(filtered, "Site funnel").figure
    assert list(site.data[0].x) == strict_funnel(ev[ev.segment == top], SITE)


# Segments ------------------------------------------------------------------------------------


def test_rfm_grid_profiles_and_migration_match_pandas(shop: Shop, tables: Tables) -> None:
    blocks = blocks_of(shop, "segments", start=START, end=END)
    as_of, before = pd.Timestamp(END, tz="UTC"), pd.Timestamp(START, tz="UTC")
    ev, customers = tables.events, tables.customers
    buys = ev[(ev.type == "purchase") & (ev.ts < as_of) & (ev.ts >= as_of - pd.Timedelta(365, "D"))]
    members = customers[customers.signup_ts.isna() | (customers.signup_ts < as_of)]
    buyers = buys[buys.customer_id.isin(members.customer_id)]
    grid = chart(blocks, "RFM grid").figure.data[0]
    z = pd.DataFrame(grid.z)
    assert int(z.values.sum()) == buyers.customer_id.nunique() > 0
    spend = pd.DataFrame(grid.customdata).fillna(0)
    assert float((z * spend).values.sum()) == pytest.approx(buyers.amount.sum(), abs=0.05 * len(z))
    [profiles] = [b for b in blocks if isinstance(b, Table)]
    rows = {r[0]: r for r in profiles.rows}
    assert sum(r[1] for r in rows.values()) == len(members)
    assert rows["inactive"][1] == len(members) - buyers.customer_id.nunique()
    migration = chart(blocks, "Segment migration").figure.data[0]
    matrix = pd.DataFrame(migration.text, index=list(migration.y), columns=list(migration.x))
    shares = pd.DataFrame(migration.z, index=matrix.index, columns=matrix.columns)
    assert shares.sum(axis=1).tolist() == pytest.approx([1.0] * len(shares), abs=1e-3)
    present = customers[customers.signup_ts.isna() | (customers.signup_ts < before)]
    assert int(matrix.values.sum()) == len(present)
    earlier = ev[(ev.type == "purchase") & (ev.ts < before)].customer_id
    assert int(matrix.loc["inactive"].sum()) == len(present) - earlier.nunique()
    assert int(matrix.sum(axis=1).drop("inactive").sum()) == earlier.nunique() > 0


# Basket --------------------------------------------------------------------------------------


def test_basket_rules_are_lifts_recomputed_from_the_baskets(shop: Shop, tables: Tables) -> None:
    blocks = blocks_of(shop, "basket")
    [note] = [b for b in blocks if isinstance(b, Note)]
    assert "one member viewed" in note.text  # the shop's orders are single-line
    ev = tables.events
    start = tables.last_day - timedelta(days=27)
    views = in_period(ev[ev.type == "view"], start, tables.last_day + timedelta(days=1))
    views = views.merge(tables.products[["product_id", "category"]], on="product_id")
    baskets = views.dropna(subset=["category"]).groupby("customer_id").category.agg(frozenset)
    n = len(baskets)
    assert f"{n:,} baskets" in note.text

    def support(*items: str) -> float:
        return sum(1 for b in baskets if set(items) <= b) / n

    [rules] = [b for b in blocks if isinstance(b, Table)]
    assert rules.columns == ["antecedents", "consequents", "support", "confidence", "lift"]
    assert len(rules.rows) > 0
    lifts = [r[4] for r in rules.rows]
    assert lifts == sorted(lifts, reverse=True)
    for a, c, s, conf, lift in rules.rows:
        assert s == pytest.approx(support(a, c))
        assert conf == pytest.approx(support(a, c) / support(a))
        assert lift == pytest.approx(support(a, c) / (support(a) * support(c)))
        assert lift >= 1 and s * n >= 2
    network = chart(blocks, "Rule network").figure
    edges = [t for t in network.data if t.mode == "lines"]
    assert len(edges) == len({frozenset((r[0], r[1])) for r in rules.rows})
    widths = [t.line.width for t in edges]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    heat = chart(blocks, "Cross-sell lift").figure.data[0]
    cells = pd.DataFrame(heat.z, index=list(heat.y), columns=list(heat.x))
    pairs = [(a, b) for a, b in combinations(sorted(cells.index), 2) if pd.notna(cells.at[a, b])]
    assert pairs
    for a, b in pairs[:10]:
        assert cells.at[a, b] == pytest.approx(support(a, b) / (support(a) * support(b)), abs=1e-3)
