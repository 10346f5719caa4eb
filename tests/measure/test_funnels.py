"""KPIs by group, funnels and acquisition profitability against hand-computed values."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError
from nextbest.measure import acquisition_profitability, funnel, kpis_by
from tests.conftest import load_texts

CUSTOMERS = """customer_id,region,acquisition_channel
c1,north,organic
c2,north,referral
c3,south,organic
"""
EVENTS = """event_id,customer_id,ts,type,product_id,quantity,amount
e1,c1,2024-03-01T08:00:00Z,email_sent,,,
e2,c1,2024-03-01T09:00:00Z,email_open,,,
e3,c1,2024-03-01T09:01:00Z,email_click,,,
e4,c1,2024-03-01T09:02:00Z,visit,,,
e5,c1,2024-03-01T09:03:00Z,view,p1,,
e6,c1,2024-03-01T09:04:00Z,add_to_cart,p1,2,
e7,c1,2024-03-01T09:05:00Z,purchase,p1,2,50
e8,c2,2024-03-01T08:00:00Z,email_sent,,,
e9,c2,2024-03-01T10:00:00Z,email_open,,,
e10,c2,2024-03-02T10:00:00Z,visit,,,
e11,c2,2024-03-02T10:05:00Z,purchase,,1,20
e12,c2,2024-03-02T11:00:00Z,referral,,,
e13,c3,2024-03-01T08:00:00Z,email_sent,,,
e14,c3,2024-03-01T12:00:00Z,unsubscribe,,,
"""


@pytest.fixture
def shop(workspace: Workspace) -> Workspace:
    files = {
        "customers.csv": CUSTOMERS,
        "products.csv": "product_id,cost\np1,10\n",
        "events.csv": EVENTS,
    }
    return load_texts(workspace, files)


def test_funnels_count_strict_member_days(shop: Workspace) -> None:
    email = funnel(shop.warehouse, "email")
    assert [(s.step, s.count) for s in email] == [
        ("sent", 3),
        ("opened", 2),
        ("clicked", 1),
        ("visited", 1),
        ("carted", 1),
        ("bought", 1),
    ]
    assert email[1].drop_off == pytest.approx(1 / 3)
    assert email[2].drop_off == pytest.approx(1 / 2)
    assert email[-1].share_of_start == pytest.approx(1 / 3)
    site = funnel(shop.warehouse, "site")
    # c2's visit and purchase on 2 March skip the view step, so the funnel stops there.
    assert [(s.step, s.count) for s in site] == [
        ("visit", 2),
        ("view", 1),
        ("cart", 1),
        ("purchase", 1),
    ]


def test_kpis_by_region(shop: Workspace) -> None:
    rows = {r["group"]: r for r in kpis_by(shop.warehouse, "region").to_pyarrow().to_pylist()}
    north, south = rows["north"], rows["south"]
    assert (north["members"], north["orders"], north["revenue"]) == (2, 2, 70)
    assert north["margin"] == 30  # 50 - 2 x 10; c2's line has no product cost
    assert north["revenue_per_member"] == 35 and north["aov"] == 35
    assert north["conversion"] == 1.0 and north["open_rate"] == 1.0
    assert north["click_rate"] == 0.5 and north["click_to_open"] == 0.5
    assert (south["members"], south["orders"], south["unsubscribe_rate"]) == (1, 0, 1.0)
    with pytest.raises(ConfigError, match="--by: expected one of segment, channel"):
        kpis_by(shop.warehouse, "colour")


def test_acquisition_profitability(shop: Workspace) -> None:
    rows = acquisition_profitability(shop.warehouse).to_pyarrow().to_pylist()
    by = {r["acquisition_channel"]: r for r in rows}
    assert by["organic"]["members"] == 2
    assert by["organic"]["revenue_per_member"] == 25 and by["organic"]["margin_per_member"] == 15
    assert by["referral"]["revenue_per_member"] == 20
    assert by["referral"]["referrals_per_member"] == 1.0


@pytest.mark.shared_data
def test_store_kpis_on_complete_journey_match_pandas(workspace: Workspace) -> None:
    import pandas as pd

    from tests.conftest import shared_data

    folder = shared_data("completejourney")
    ingest(workspace.warehouse, [folder], workspace.config.ingest, fmt="completejourney")
    store = {
        r["group"]: r for r in kpis_by(workspace.warehouse, "channel").to_pyarrow().to_pylist()
    }["store"]
    tx = pd.read_csv(folder / "transactions_sample.csv.gz", dtype=str)
    catalogue = set(pd.read_csv(folder / "products.csv.gz", dtype=str).product_id)
    tx = tx[tx.product_id.isin(catalogue)]  # the 222 quarantined lines are not in the warehouse
    redeemed = pd.read_csv(folder / "coupon_redemptions.csv", dtype=str)
    assert store["orders"] == tx.basket_id.nunique()
    assert store["revenue"] == pytest.approx(tx.sales_value.astype(float).sum())
    assert store["aov"] == pytest.approx(store["revenue"] / store["orders"])
    assert store["members"] == len(set(tx.household_id) | set(redeemed.household_id))


# Funnels by segment, segment profiles and baskets of a period --------------------------------

# As of 1 March: c2 is "new" (R5 F1 M1), c1 "lost" (R1 F1 M5), c3 "inactive".
SEG_EVENTS = """event_id,customer_id,ts,type,product_id,quantity,amount,basket_id
h1,c1,2024-02-20T10:00:00Z,purchase,p1,1,100,
h2,c2,2024-02-25T10:00:00Z,purchase,p2,1,10,
e1,c1,2024-03-01T08:00:00Z,email_sent,,,,
e2,c2,2024-03-01T08:00:00Z,email_sent,,,,
e3,c3,2024-03-01T08:00:00Z,email_sent,,,,
e4,c1,2024-03-01T09:00:00Z,email_open,,,,
e5,c2,2024-03-01T09:00:00Z,email_open,,,,
e6,c1,2024-03-01T09:01:00Z,email_click,,,,
e7,c1,2024-03-01T09:02:00Z,visit,,,,
e8,c1,2024-03-01T09:03:00Z,view,p1,,,
e9,c1,2024-03-01T09:04:00Z,add_to_cart,p1,1,,
e10,c1,2024-03-01T09:05:00Z,purchase,p1,1,40,b1
e11,c1,2024-03-01T09:05:00Z,purchase,p2,1,60,b1
e12,c2,2024-03-02T10:00:00Z,visit,,,,
e13,c2,2024-03-02T10:01:00Z,view,p2,,,
e14,c2,2024-03-02T10:05:00Z,purchase,p4,1,8,
e15,c3,2024-03-02T11:00:00Z,purchase,p3,1,5,
e16,c3,2024-03-03T11:00:00Z,purchase,p1,1,40,
e17,,2024-03-03T12:00:00Z,purchase,p1,1,40,
e18,,2024-03-03T12:00:00Z,purchase,p3,1,5,r9
e19,,2024-03-03T12:00:00Z,purchase,p2,1,60,r9
e20,c1,2024-03-06T11:00:00Z,purchase,p3,1,5,
"""
SEG_PRODUCTS = "product_id,category\np1,shoes\np2,bags\np3,hats\np4,\n"


@pytest.fixture
def segmented(workspace: Workspace) -> Workspace:
    signup = "2023-01-01T00:00:00Z"
    files = {
        "customers.csv": f"customer_id,signup_ts\nc1,{signup}\nc2,{signup}\nc3,{signup}\n",
        "products.csv": SEG_PRODUCTS,
        "events.csv": SEG_EVENTS,
    }
    return load_texts(workspace, files)


def test_funnel_by_segment_splits_the_member_days_by_segment_at_the_start(
    segmented: Workspace,
) -> None:
    from datetime import UTC, datetime

    from nextbest.measure.funnels import funnel_by_segment

    start, end = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 4, tzinfo=UTC)
    email = funnel_by_segment(segmented.warehouse, "email", start, end)
    assert list(email) == ["new", "lost", "inactive"]  # SEGMENTS order
    counts = {seg: [s.count for s in steps] for seg, steps in email.items()}
    assert counts == {
        "new": [1, 1, 0, 0, 0, 0],  # c2 visits on the 2nd, another member-day
        "lost": [1, 1, 1, 1, 1, 1],
        "inactive": [1, 0, 0, 0, 0, 0],
    }
    whole = funnel(segmented.warehouse, "email", start, end)
    assert [s.count for s in whole] == [sum(c) for c in zip(*counts.values(), strict=True)]
    site = funnel_by_segment(segmented.warehouse, "site", start, end)
    assert [s.count for s in site["new"]] == [1, 1, 0, 0]
    assert site["new"][2].drop_off == 1.0
    assert [s.count for s in site["inactive"]] == [0, 0, 0, 0]
    assert site["inactive"][0].share_of_start is None


def test_segment_profiles(segmented: Workspace) -> None:
    from datetime import UTC, datetime

    from nextbest.measure.funnels import segment_profiles

    rows = segment_profiles(segmented.warehouse, datetime(2024, 3, 1, tzinfo=UTC)).to_pandas()
    assert rows.segment.tolist() == ["new", "lost", "inactive"]
    new, lost, inactive = rows.to_dict("records")
    assert (new["customers"], new["frequency"], new["monetary"]) == (1, 1, 10)
    assert new["recency_days"] == pytest.approx(5 - 10 / 24)  # bought 25 Feb, 10:00
    assert lost["monetary"] == 100 and lost["revenue_share"] == pytest.approx(100 / 110)
    assert inactive["monetary"] == 0 and pd.isna(inactive["recency_days"])
    assert rows.share.tolist() == pytest.approx([1 / 3] * 3)
    assert rows.revenue_share.sum() == pytest.approx(1)


@pytest.mark.parametrize(
    ("per", "events", "level", "expected"),
    [
        # b1; c2's p4 has no category; c3's two days; r9 (anonymous, with a receipt id);
        # the anonymous line without a receipt id is left out.
        (
            "order",
            ("purchase",),
            "category",
            [{"bags", "shoes"}, {"hats"}, {"shoes"}, {"bags", "hats"}],
        ),
        ("order", ("purchase",), "product", [{"p1", "p2"}, {"p4"}, {"p3"}, {"p1"}, {"p2", "p3"}]),
        ("member", ("purchase",), "category", [{"bags", "shoes"}, {"hats", "shoes"}]),
        ("member", ("view",), "category", [{"shoes"}, {"bags"}]),
    ],
)
def test_period_baskets(
    segmented: Workspace,
    per: str,
    events: tuple[str, ...],
    level: str,
    expected: list[set[str]],
) -> None:
    from datetime import UTC, datetime

    from nextbest.measure.funnels import period_baskets

    start, end = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 4, tzinfo=UTC)
    b = period_baskets(segmented.warehouse, start, end, level=level, per=per, events=events)
    m = b.matrix.tocsr()
    found = [set(b.items[m.indices[m.indptr[i] : m.indptr[i + 1]]]) for i in range(b.n_baskets)]
    assert sorted(map(sorted, found)) == sorted(map(sorted, expected))


def test_period_baskets_rejects_an_unknown_kind(segmented: Workspace) -> None:
    from nextbest.measure.funnels import period_baskets

    with pytest.raises(ConfigError, match="per: expected one of order, member, got 'week'"):
        period_baskets(segmented.warehouse, per="week")
    with pytest.raises(ConfigError, match="level: expected one of product, category, brand"):
        period_baskets(segmented.warehouse, level="colour")


# Cross-sell over member baskets ---------------------------------------------------------------

# One line a member-day, as the simulator's orders: same-order baskets have one item each.
# m1, m2: shoes and bags; m3: hats; m4: shoes; m5: a line without a category.
MEMBER_EVENTS = """event_id,customer_id,ts,type,product_id
e1,m1,2024-03-01T10:00:00Z,purchase,p1
e2,m1,2024-03-05T10:00:00Z,purchase,p2
e3,m2,2024-03-02T10:00:00Z,purchase,p2
e4,m2,2024-03-09T10:00:00Z,purchase,p1
e5,m2,2024-03-10T10:00:00Z,purchase,p1
e6,m3,2024-03-03T10:00:00Z,purchase,p3
e7,m4,2024-03-04T10:00:00Z,purchase,p1
e8,m5,2024-03-04T10:00:00Z,purchase,p4
e9,m3,2024-03-04T10:00:00Z,view,p1
"""


@pytest.fixture
def members_shop(workspace: Workspace) -> Workspace:
    files = {
        "customers.csv": "customer_id\nm1\nm2\nm3\nm4\nm5\n",
        "products.csv": SEG_PRODUCTS,
        "events.csv": MEMBER_EVENTS,
    }
    return load_texts(workspace, files)


def test_member_cross_sell_finds_what_order_baskets_cannot(members_shop: Workspace) -> None:
    from nextbest.measure.funnels import member_cross_sell, period_baskets
    from nextbest.models import association_rules, frequent_itemsets

    wh = members_shop.warehouse
    orders = period_baskets(wh, per="order")
    assert orders.matrix.getnnz(axis=1).max() == 1  # single-line orders: no pair at all
    assert association_rules(frequent_itemsets(orders, 0.01), 0.01).empty
    found = member_cross_sell(wh, min_members=2)
    # 4 member baskets (m5's line has no category): shoes 3/4, bags 2/4, hats 1/4, and
    # {shoes, bags} 2/4; min_members 2 sets the support floor at 2/4, so hats is out.
    assert (found.baskets, found.multi) == (4, 2)
    rules = {
        (next(iter(r.antecedents)), next(iter(r.consequents))): r for r in found.rules.itertuples()
    }
    assert set(rules) == {("bags", "shoes"), ("shoes", "bags")}
    bags_shoes, shoes_bags = rules[("bags", "shoes")], rules[("shoes", "bags")]
    assert (bags_shoes.members, bags_shoes.support, bags_shoes.confidence) == (2, 0.5, 1.0)
    assert bags_shoes.lift == pytest.approx(1 / 0.75)
    assert shoes_bags.confidence == pytest.approx(2 / 3)
    assert shoes_bags.lift == pytest.approx((2 / 3) / 0.5)
    assert member_cross_sell(wh, min_members=3).rules.empty  # {shoes, bags}: 2 members
    assert member_cross_sell(wh, min_members=2, min_lift=1.5).rules.empty  # lift 1.33
    none = member_cross_sell(wh, datetime(2025, 1, 1, tzinfo=UTC))
    assert (none.baskets, none.multi, len(none.rules)) == (0, 0, 0)


def test_member_cross_sell_on_the_simulator_matches_pandas(
    sim_workspace: tuple[Workspace, Path],
) -> None:
    """What the demo prints: non-empty at the defaults, and the same rules as pandas finds.

    Simulated orders are nearly all one line, so same-order baskets give nothing; over members
    the categories are bought nearly independently (lifts about 1: the rules are about as
    strong as chance; sales draw their category uniformly and few members buy twice).
    """
    import pyarrow.parquet as pq

    from nextbest.measure.funnels import member_cross_sell, period_baskets
    from nextbest.models import association_rules, frequent_itemsets

    ws, sim = sim_workspace
    orders = period_baskets(ws.warehouse, per="order")
    assert (orders.matrix.getnnz(axis=1) > 1).mean() < 0.01  # orders of one category
    support = max(0.005, 4 / orders.n_baskets)  # the thresholds of member_cross_sell
    assert association_rules(frequent_itemsets(orders, support, 2), 0.05, 1.0).empty
    found = member_cross_sell(ws.warehouse)
    assert len(found.rules) >= 2, (found.baskets, found.multi)
    ev = pq.read_table(sim / "events.parquet", columns=["customer_id", "type", "product_id"])
    products = pq.read_table(sim / "products.parquet", columns=["product_id", "category"])
    lines = ev.to_pandas().query("type == 'purchase'").merge(products.to_pandas())
    sets = lines.groupby("customer_id").category.agg(frozenset)
    n = len(sets)
    assert (found.baskets, found.multi) == (n, int((sets.map(len) > 1).sum()))
    single = pd.Series([c for s in sets for c in s]).value_counts()
    pairs = pd.Series([(a, b) for s in sets for a in s for b in s if a != b]).value_counts()
    expected = {}
    for (a, b), both in pairs.items():
        conf = both / single[a]
        lift = conf / (single[b] / n)
        if both >= max(0.005 * n, 4) and conf >= 0.05 and lift >= 1.0:
            expected[(a, b)] = (both, conf, lift)
    got = {
        (next(iter(r.antecedents)), next(iter(r.consequents))): (r.members, r.confidence, r.lift)
        for r in found.rules.itertuples()
    }
    assert set(got) == set(expected)
    for key, (both, conf, lift) in expected.items():
        assert got[key] == (both, pytest.approx(conf), pytest.approx(lift))
