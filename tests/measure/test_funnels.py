"""KPIs by group, funnels and acquisition profitability against hand-computed values."""

from __future__ import annotations

import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError
from nextbest.measure import acquisition_profitability, funnel, kpis_by

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
    for name, text in files.items():
        (workspace.root / name).write_text(text)
    results = ingest(
        workspace.warehouse, [workspace.root / n for n in files], workspace.config.ingest
    )
    assert all(r.total("quarantined") == 0 for r in results)
    return workspace


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
