"""Each public dataset in ../shared/data loads into the warehouse with its published counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextbest.data.ingest import LoadResult, ingest
from nextbest.data.workspace import Workspace
from nextbest.measure.kpi import headline_kpis
from tests.conftest import shared_data

pytestmark = pytest.mark.shared_data


def load(ws: Workspace, path: Path, fmt: str, quarantined: int = 0) -> LoadResult:
    (result,) = ingest(ws.warehouse, [path], ws.config.ingest, fmt=fmt)
    assert result.status == "loaded", result.message
    assert result.total("quarantined") == quarantined, result.problems
    return result


def test_hillstrom_loads_64000_customers_in_three_arms(workspace: Workspace) -> None:
    path = shared_data(
        "hillstrom",
        "Kevin_Hillstrom_MineThatData_E-MailAnalytics_DataMiningChallenge_2008.03.20.csv",
    )
    load(workspace, path, "hillstrom")
    wh = workspace.warehouse
    assert wh.count("customers") == 64_000
    d = wh.table("decisions")
    arms = {
        r["arm"]: r["n"] for r in d.group_by("arm").aggregate(n=d.count()).to_pyarrow().to_pylist()
    }
    assert arms == {"Mens E-Mail": 21_307, "Womens E-Mail": 21_387, "No E-Mail": 21_306}
    # Published figures: visit 0.146781, conversion 0.009031, spend 1.050908 per customer.
    k = headline_kpis(wh)
    assert k.visits == round(0.146781 * 64_000)
    assert k.orders == 578
    assert k.revenue / 64_000 == pytest.approx(1.050908, abs=5e-7)
    # The outcomes are linked to their decisions.
    ev = wh.table("events")
    linked = ev.filter(ev.type == "visit").join(d, "decision_id")
    assert linked.count().execute() == k.visits


def test_cdnow_master_then_sample_adds_nothing(workspace: Workspace) -> None:
    result = load(workspace, shared_data("cdnow", "CDNOW_master.txt"), "cdnow")
    wh = workspace.warehouse
    ev = wh.table("events")
    assert ev.count().execute() == 69_659
    assert ev.customer_id.nunique().execute() == 23_570
    assert wh.count("customers") == 23_570
    assert ev.amount.sum().execute() == pytest.approx(2_500_315.63, abs=0.005)
    assert result.tables["events"].loaded == 69_659
    sample = load(workspace, shared_data("cdnow", "CDNOW_sample.txt"), "cdnow")
    assert sample.tables["events"].read == 6_919
    assert sample.tables["events"].loaded == 0
    assert sample.tables["events"].skipped == 6_919
    assert ev.count().execute() == 69_659


def _baskets(ws: Workspace) -> tuple[int, int]:
    ev = ws.warehouse.table("events")
    agg = ev.aggregate(baskets=ev.basket_id.nunique(), items=ev.product_id.nunique())
    row = agg.to_pyarrow().to_pylist()[0]
    return row["baskets"], row["items"]


def test_groceries_baskets(workspace: Workspace) -> None:
    load(workspace, shared_data("groceries", "groceries.csv"), "baskets")
    assert _baskets(workspace) == (9_835, 169)
    assert workspace.warehouse.count("events") == 43_367


@pytest.mark.slow
def test_fimi_retail_baskets(workspace: Workspace) -> None:
    load(workspace, shared_data("retail_fimi", "retail.dat"), "baskets")
    assert _baskets(workspace) == (88_162, 16_470)
    assert workspace.warehouse.count("events") == 908_576


@pytest.mark.parametrize(
    ("policy", "campaign", "clicks"),
    [
        ("random", "men", 46),
        ("random", "women", 46),
        ("bts", "men", 69),
        ("bts", "women", 46),
        ("random", "all", None),
        ("bts", "all", None),
    ],
)
def test_open_bandit_logs_load_as_decisions_with_propensities(
    workspace: Workspace, policy: str, campaign: str, clicks: int | None
) -> None:
    path = shared_data("open_bandit", policy, campaign, f"{campaign}.csv")
    load(workspace, path, "obd")
    wh = workspace.warehouse
    d = wh.table("decisions")
    assert d.count().execute() == 10_000
    assert d.propensity.isnull().sum().execute() == 0
    assert set(d.slot.to_pyarrow().unique().to_pylist()) == {1, 2, 3}
    ev = wh.table("events")
    n_clicks = ev.filter(ev.type == "click").count().execute()
    if clicks is not None:
        assert n_clicks == clicks
    if policy == "random" and campaign != "all":
        items = {"men": 34, "women": 46}[campaign]
        assert d.propensity.max().execute() == pytest.approx(1 / items)
        assert wh.count("offers") == items


def test_complete_journey(workspace: Workspace) -> None:
    # 222 of the 75,000 transaction lines name 5 products missing from the published product
    # table: they are quarantined, not dropped, and everything else loads.
    result = load(workspace, shared_data("completejourney"), "completejourney", quarantined=222)
    events = result.tables["events"]
    assert events.read == 75_000 + 2_102
    wh = workspace.warehouse
    q = wh.table("quarantine")
    assert q.field.to_pyarrow().unique().to_pylist() == ["product_id"]
    assert q.received.nunique().execute() == 5
    ev = wh.table("events")
    purchases = ev.filter(ev.type == "purchase")
    assert purchases.count().execute() == 75_000 - 222
    quarantined_sales = sum(float(json.loads(r)["amount"]) for r in q.row.to_pyarrow().to_pylist())
    total = purchases.amount.sum().execute() + quarantined_sales
    assert total == pytest.approx(233_935.24, abs=0.005)
    assert purchases.customer_id.nunique().execute() == 2_374
    assert ev.filter(ev.type == "coupon_redemption").count().execute() == 2_102
    d = wh.table("decisions")
    assert d.count().execute() == 6_589
    assert d.offer_id.nunique().execute() == 27
    assert wh.count("products") == 92_331
    first = purchases.ts.min().execute()
    assert first.isoformat().startswith("2017-01-01T12:30")  # 07:30 -05:00 in UTC


def test_every_public_dataset_loads_twice_without_change(workspace: Workspace) -> None:
    path = shared_data("groceries", "groceries.csv")
    load(workspace, path, "baskets")
    before = workspace.warehouse.counts()
    (again,) = ingest(workspace.warehouse, [path], workspace.config.ingest, fmt="baskets")
    assert again.status == "already loaded"
    assert workspace.warehouse.counts() == before
