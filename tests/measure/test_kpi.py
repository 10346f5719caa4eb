"""Headline, daily and period KPIs against hand-computed truth, and KPIs by group against
independent pandas computations on CDNOW, Complete Journey and the simulator."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pandas as pd
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.measure.kpi import daily_kpis, headline_kpis, period_kpis
from tests.conftest import load_texts

EVENTS = """event_id,customer_id,ts,type,amount,basket_id
e1,c1,2024-03-01T08:00:00Z,email_sent,,
e2,c2,2024-03-01T08:00:00Z,email_sent,,
e3,c3,2024-03-01T08:00:00Z,email_sent,,
e4,c4,2024-03-01T08:00:00Z,email_sent,,
e5,c1,2024-03-01T09:00:00Z,email_open,,
e6,c2,2024-03-01T09:30:00Z,email_open,,
e7,c1,2024-03-01T09:31:00Z,email_click,,
e8,c1,2024-03-01T09:32:00Z,visit,,
e9,c2,2024-03-02T10:00:00Z,visit,,
e10,c3,2024-03-02T11:00:00Z,visit,,
e11,c4,2024-03-02T12:00:00Z,visit,,
e12,c1,2024-03-01T09:40:00Z,purchase,30.0,b1
e13,c1,2024-03-01T09:40:00Z,purchase,20.0,b1
e14,c2,2024-03-02T10:10:00Z,purchase,15.5,
e15,c1,2024-03-05T10:00:00Z,return,20.0,
e16,c4,2024-03-02T12:01:00Z,unsubscribe,,
"""


@pytest.fixture
def shop(workspace: Workspace) -> Workspace:
    (workspace.root / "customers.csv").write_text("customer_id\nc1\nc2\nc3\nc4\nc5\n")
    (workspace.root / "events.csv").write_text(EVENTS)
    results = ingest(
        workspace.warehouse,
        [workspace.root / "customers.csv", workspace.root / "events.csv"],
        workspace.config.ingest,
    )
    assert all(r.total("quarantined") == 0 for r in results)
    return workspace


def test_headline_kpis_match_hand_computed_values(shop: Workspace) -> None:
    k = headline_kpis(shop.warehouse)
    assert k.members == 5
    assert k.active_members == 2
    assert k.revenue == pytest.approx(30 + 20 + 15.5 - 20)
    assert k.orders == 2  # basket b1 (two lines) and the unbasketed purchase e14
    assert k.emails_sent == 4
    assert k.open_rate == pytest.approx(2 / 4)
    assert k.click_rate == pytest.approx(1 / 4)
    assert k.click_to_open == pytest.approx(1 / 2)
    assert k.unsubscribe_rate == pytest.approx(1 / 4)
    assert k.visits == 4
    assert k.conversion == pytest.approx(2 / 4)
    assert k.first_ts == datetime(2024, 3, 1, 8, tzinfo=UTC)


def test_headline_kpis_over_a_period(shop: Workspace) -> None:
    k = headline_kpis(
        shop.warehouse, start=datetime(2024, 3, 2, tzinfo=UTC), end=datetime(2024, 3, 3, tzinfo=UTC)
    )
    assert (k.emails_sent, k.open_rate, k.visits, k.orders) == (0, None, 3, 1)
    assert k.revenue == pytest.approx(15.5)


# Daily and period KPIs of a slice (the dashboard's overview) ---------------------------------

# Before the period c1 (100, ten days before) and c2 (10, five days before) bought: as of
# 1 March c2 is "new" (R5 F1 M1), c1 "lost" (R1 F1 M5) and c3 "inactive".
SLICE_EVENTS = """event_id,customer_id,ts,type,product_id,channel,quantity,amount,basket_id
h1,c1,2024-02-20T10:00:00Z,purchase,p1,web,1,100,
h2,c2,2024-02-25T10:00:00Z,purchase,p1,app,1,10,
d1,c1,2024-03-01T08:00:00Z,email_sent,,email,,,
d2,c2,2024-03-01T08:00:00Z,email_sent,,email,,,
d3,c3,2024-03-01T08:00:00Z,email_sent,,email,,,
d4,c1,2024-03-01T09:00:00Z,email_open,,email,,,
d5,c1,2024-03-01T09:01:00Z,email_click,,email,,,
d6,c1,2024-03-01T09:02:00Z,visit,,web,,,
d7,c1,2024-03-01T09:05:00Z,purchase,p1,web,2,50,b1
d8,c1,2024-03-01T09:05:00Z,purchase,,web,1,20,b1
d9,c2,2024-03-03T10:00:00Z,visit,,app,,,
d10,c2,2024-03-03T10:05:00Z,purchase,p1,app,1,30,
d11,c3,2024-03-03T11:00:00Z,unsubscribe,,email,,,
d12,c1,2024-03-03T12:00:00Z,return,p1,web,1,20,
a1,c3,2024-03-05T10:00:00Z,purchase,p1,web,1,999,
"""
MARCH_1, MARCH_4 = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 4, tzinfo=UTC)


@pytest.fixture
def sliced(workspace: Workspace) -> Workspace:
    files = {
        "customers.csv": "customer_id,signup_ts\nc1,2023-01-01T00:00:00Z\nc2,2023-01-01T00:00:00Z\n"
        "c3,2023-01-01T00:00:00Z\n",
        "products.csv": "product_id,cost\np1,10\n",
        "events.csv": SLICE_EVENTS,
    }
    return load_texts(workspace, files)


def test_daily_kpis_one_row_per_day_with_hand_computed_values(sliced: Workspace) -> None:
    from nextbest.measure.kpi import daily_kpis

    rows = daily_kpis(sliced.warehouse, MARCH_1, MARCH_4).to_pyarrow().to_pylist()
    assert [str(r["day"]) for r in rows] == ["2024-03-01", "2024-03-02", "2024-03-03"]
    first, empty, third = rows
    assert (first["revenue"], first["margin"], first["orders"]) == (70, 30, 1)  # b1: 2 lines
    assert (first["active_members"], first["visits"], first["emails_sent"]) == (1, 1, 3)
    assert first["conversion"] == 1.0
    assert first["open_rate"] == pytest.approx(1 / 3)
    assert first["click_rate"] == pytest.approx(1 / 3)
    assert first["unsubscribe_rate"] == 0
    assert (empty["revenue"], empty["orders"], empty["emails_sent"]) == (0, 0, 0)
    assert empty["conversion"] is None and empty["open_rate"] is None
    assert (third["revenue"], third["margin"], third["unsubscribes"]) == (10, 20, 1)
    assert third["unsubscribe_rate"] is None  # no e-mail sent that day


def test_period_kpis_count_members_once_and_slice_by_segment_and_channel(
    sliced: Workspace,
) -> None:
    from nextbest.measure.kpi import period_kpis

    wh = sliced.warehouse
    k = period_kpis(wh, MARCH_1, MARCH_4)
    assert (k.revenue, k.margin, k.orders, k.active_members) == (80, 50, 2, 2)
    assert (k.conversion, k.open_rate) == (1.0, pytest.approx(1 / 3))
    assert k.unsubscribe_rate == pytest.approx(1 / 3)
    lost = period_kpis(wh, MARCH_1, MARCH_4, segment="lost")  # c1, as of 1 March
    assert (lost.revenue, lost.margin, lost.orders, lost.emails_sent) == (50, 30, 1, 1)
    assert lost.open_rate == 1.0
    new = period_kpis(wh, MARCH_1, MARCH_4, segment="new")  # c2
    assert (new.revenue, new.orders, new.opens) == (30, 1, 0)
    inactive = period_kpis(wh, MARCH_1, MARCH_4, segment="inactive")  # c3
    assert (inactive.revenue, inactive.unsubscribe_rate) == (0, 1.0)
    app = period_kpis(wh, MARCH_1, MARCH_4, channel="app")
    assert (app.revenue, app.visits, app.orders, app.emails_sent) == (30, 1, 1, 0)
    email = period_kpis(wh, MARCH_1, MARCH_4, channel="email")
    assert (email.revenue, email.emails_sent, email.clicks, email.unsubscribes) == (0, 3, 1, 1)
    both = period_kpis(wh, MARCH_1, MARCH_4, segment="lost", channel="web")
    assert (both.revenue, both.visits) == (50, 1)
    assert period_kpis(wh, MARCH_4, datetime(2024, 3, 6, tzinfo=UTC)).revenue == 999


# KPIs on the real datasets and the simulator against independent pandas computations ----------
# (test_funnels.py checks the store channel of Complete Journey; these check the other groupings
# and the period KPIs.)


def _grouped(
    frame: pd.DataFrame, key: str, order: str = "basket_id"
) -> pd.DataFrame:  # revenue, orders per group
    return frame.groupby(key).agg(revenue=("amount", "sum"), orders=(order, "nunique"))


@pytest.fixture(scope="module")
def cdnow(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, pd.DataFrame]:
    from tests.conftest import shared_data

    path = shared_data("cdnow", "CDNOW_master.txt")
    ws = Workspace.init(tmp_path_factory.mktemp("cdnow") / "ws")
    ingest(ws.warehouse, [path], ws.config.ingest, fmt="cdnow")
    raw = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str, "date": str})
    raw["customer_id"] = "cdnow-" + raw.customer_id
    raw["ts"] = pd.to_datetime(raw.date, format="%Y%m%d", utc=True)
    raw["amount"] = raw.dollar_value
    raw["line"] = range(len(raw))  # CDNOW has no basket ids: every line is an order
    yield ws, raw
    ws.close()


# The months of the first quarter (when the cohort joins), then quarters.
PERIODS = [datetime(1997, m, 1, tzinfo=UTC) for m in (1, 2, 3, 4, 7, 10)] + [
    datetime(1998, m, 1, tzinfo=UTC) for m in (1, 4, 7)
]


@pytest.mark.shared_data
def test_cdnow_kpis_per_period_match_pandas(cdnow: tuple[Workspace, pd.DataFrame]) -> None:
    from nextbest.measure import kpis_by

    ws, raw = cdnow
    signup = raw.groupby("customer_id").ts.min()  # the reader signs customers up at first buy
    for lo, hi in pairwise(PERIODS):
        seen = raw[(raw.ts >= lo) & (raw.ts < hi)]
        revenue, orders = float(seen.amount.sum()), len(seen)
        members = int((signup < hi).sum())
        for by in ("region", "acquisition_channel"):  # CDNOW has neither: one group, unknown
            (row,) = kpis_by(ws.warehouse, by, lo, hi).to_pyarrow().to_pylist()
            assert row["group"] == "unknown"
            assert (row["members"], row["orders"]) == (members, orders), (by, lo)
            assert row["revenue"] == pytest.approx(revenue)
            assert row["aov"] == pytest.approx(revenue / orders)
            assert row["revenue_per_member"] == pytest.approx(revenue / members)
            assert row["conversion"] is None and row["open_rate"] is None  # no visits, no mail
        k = period_kpis(ws.warehouse, lo, hi)
        assert (k.orders, k.active_members) == (orders, seen.customer_id.nunique())
        assert k.revenue == pytest.approx(revenue) and k.conversion is None
        h = headline_kpis(ws.warehouse, lo, hi)
        assert (h.orders, h.active_members) == (orders, seen.customer_id.nunique())
        assert h.revenue == pytest.approx(revenue)
    # Members are those who had joined by the period's end: 7,846 for January 1997, 16,322 for
    # February, all 23,570 from March on (before the fix, every period counted 23,570).
    assert [int((signup < end).sum()) for end in PERIODS[1:4]] == [7_846, 16_322, 23_570]


@pytest.mark.shared_data
def test_cdnow_daily_kpis_match_pandas(cdnow: tuple[Workspace, pd.DataFrame]) -> None:
    ws, raw = cdnow
    lo, hi = datetime(1997, 3, 1, tzinfo=UTC), datetime(1997, 4, 1, tzinfo=UTC)
    got = daily_kpis(ws.warehouse, lo, hi).to_pandas()
    seen = raw[(raw.ts >= lo) & (raw.ts < hi)]
    expected = seen.groupby(seen.ts.dt.date).agg(
        revenue=("amount", "sum"), orders=("line", "size"), active=("customer_id", "nunique")
    )
    days = pd.to_datetime(got.day).dt.date.tolist()
    assert len(got) == 31 and days == list(expected.index)  # CDNOW sells every day
    assert got.revenue.to_numpy() == pytest.approx(expected.revenue.to_numpy())
    assert got.orders.tolist() == expected.orders.tolist()
    assert got.active_members.tolist() == expected.active.tolist()
    assert got.conversion.isna().all()


@pytest.mark.shared_data
def test_cdnow_kpis_by_segment_match_pandas(cdnow: tuple[Workspace, pd.DataFrame]) -> None:
    from nextbest.features import rfm
    from nextbest.measure import kpis_by

    ws, raw = cdnow
    lo, hi = PERIODS[3], PERIODS[4]
    got = {r["group"]: r for r in kpis_by(ws.warehouse, "segment", lo, hi).to_pyarrow().to_pylist()}
    # The grouping is rfm's (checked against pandas in tests/features/test_rfm.py); what is
    # checked here is each group's KPIs.
    segment = rfm(ws.warehouse, hi).to_pandas().set_index("customer_id").segment
    seen = raw[(raw.ts >= lo) & (raw.ts < hi)].assign(segment=lambda x: x.customer_id.map(segment))
    expected = _grouped(seen, "segment", "line")
    sizes = segment.value_counts()
    assert set(got) == set(sizes.index) and sum(r["members"] for r in got.values()) == 23_570
    for name, row in got.items():
        assert row["members"] == sizes[name]
        if name not in expected.index:
            assert (row["orders"], row["revenue"], row["aov"]) == (0, 0, None), name
            continue
        e = expected.loc[name]
        assert row["orders"] == e.orders, name
        assert row["revenue"] == pytest.approx(e.revenue)
        assert row["aov"] == pytest.approx(e.revenue / e.orders)
        assert row["revenue_per_member"] == pytest.approx(e.revenue / sizes[name])
    assert sum(r["orders"] for r in got.values()) == len(seen)


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, pd.DataFrame]:
    from tests.conftest import shared_data

    folder = shared_data("completejourney")
    ws = Workspace.init(tmp_path_factory.mktemp("cj") / "ws")
    ingest(ws.warehouse, [folder], ws.config.ingest, fmt="completejourney")
    tx = pd.read_csv(folder / "transactions_sample.csv.gz", dtype=str)
    catalogue = set(pd.read_csv(folder / "products.csv.gz", dtype=str).product_id)
    tx = tx[tx.product_id.isin(catalogue)]  # the 222 quarantined lines are not in the warehouse
    tx = tx.assign(
        customer_id="cj-" + tx.household_id,
        amount=tx.sales_value.astype(float),
        ts=pd.to_datetime(tx.transaction_timestamp, format="%Y-%m-%dT%H:%M:%S%z", utc=True),
    )
    yield ws, tx
    ws.close()


@pytest.mark.shared_data
def test_complete_journey_kpis_by_segment_match_pandas(
    journey: tuple[Workspace, pd.DataFrame],
) -> None:
    from nextbest.features import rfm
    from nextbest.measure import kpis_by

    ws, tx = journey
    lo, hi = datetime(2017, 7, 1, tzinfo=UTC), datetime(2017, 10, 1, tzinfo=UTC)
    got = {r["group"]: r for r in kpis_by(ws.warehouse, "segment", lo, hi).to_pyarrow().to_pylist()}
    segment = rfm(ws.warehouse, hi).to_pandas().set_index("customer_id").segment
    seen = tx[(tx.ts >= lo) & (tx.ts < hi)].assign(segment=lambda x: x.customer_id.map(segment))
    expected = _grouped(seen, "segment")
    sizes = segment.value_counts()
    assert len(expected) >= 5 and set(expected.index) <= set(got)
    for name, row in got.items():
        assert row["members"] == sizes[name], name
        e = expected.loc[name] if name in expected.index else None
        assert row["orders"] == (0 if e is None else e.orders), name
        assert row["revenue"] == pytest.approx(0 if e is None else e.revenue), name
        if e is not None:
            assert row["aov"] == pytest.approx(e.revenue / e.orders)
    # The whole period, by a customers column Complete Journey does not have (all unknown),
    # and as one slice of period_kpis.
    (whole,) = kpis_by(ws.warehouse, "region", lo, hi).to_pyarrow().to_pylist()
    assert whole["members"] == 2_379  # every household; none has a signup date
    assert whole["orders"] == seen.basket_id.nunique()
    assert whole["revenue"] == pytest.approx(seen.amount.sum())
    k = period_kpis(ws.warehouse, lo, hi, channel="store")
    assert (k.orders, k.active_members) == (seen.basket_id.nunique(), seen.customer_id.nunique())
    assert k.revenue == pytest.approx(seen.amount.sum()) and k.margin == 0  # no product costs


@pytest.mark.shared_data
def test_complete_journey_period_kpis_of_a_segment_match_pandas(
    journey: tuple[Workspace, pd.DataFrame],
) -> None:
    from nextbest.features import rfm

    ws, tx = journey
    lo, hi = datetime(2017, 7, 1, tzinfo=UTC), datetime(2017, 8, 1, tzinfo=UTC)
    scores = rfm(ws.warehouse, lo)
    segment = scores.to_pandas().set_index("customer_id").segment  # as of the period's start
    seen = tx[(tx.ts >= lo) & (tx.ts < hi)].assign(segment=lambda x: x.customer_id.map(segment))
    expected = _grouped(seen, "segment")
    for name in ("champions", "loyal", "at_risk"):
        k = period_kpis(ws.warehouse, lo, hi, segment=name, scores=scores)
        assert k.orders == expected.orders[name] and k.orders > 0, name
        assert k.revenue == pytest.approx(expected.revenue[name])
        assert k.active_members == seen[seen.segment == name].customer_id.nunique()
    days = daily_kpis(ws.warehouse, lo, hi, segment="champions", scores=scores).to_pandas()
    champions = seen[seen.segment == "champions"]
    by_day = champions.groupby(champions.ts.dt.date).agg(
        revenue=("amount", "sum"), orders=("basket_id", "nunique")
    )
    daily = days.set_index(pd.to_datetime(days.day).dt.date).loc[by_day.index]
    assert daily.revenue.to_numpy() == pytest.approx(by_day.revenue.to_numpy())
    assert daily.orders.tolist() == by_day.orders.tolist()
    assert days.revenue.sum() == pytest.approx(champions.amount.sum())  # no other day has any


@pytest.fixture(scope="module")
def simulated(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Workspace, dict[str, pd.DataFrame]]:
    import pyarrow.parquet as pq

    from nextbest.simulate import SimConfig, simulate

    root = tmp_path_factory.mktemp("kpisim")
    simulate(SimConfig(n_customers=2_500, days=12, seed=11), root / "sim")
    ws = Workspace.init(root / "ws")
    ingest(ws.warehouse, [root / "sim"], ws.config.ingest)
    tables = {
        t: pq.read_table(root / "sim" / f"{t}.parquet").to_pandas()
        for t in ("customers", "events", "products")
    }
    yield ws, tables
    ws.close()


@pytest.mark.parametrize("by", ["region", "acquisition_channel", "channel"])
def test_simulated_kpis_by_group_match_pandas(
    simulated: tuple[Workspace, dict[str, pd.DataFrame]], by: str
) -> None:
    """The simulator has regions, acquisition channels, visits, e-mail and product costs."""
    from nextbest.measure import kpis_by

    ws, t = simulated
    customers, ev = t["customers"], t["events"]
    lo, hi = datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 12, tzinfo=UTC)
    got = {r["group"]: r for r in kpis_by(ws.warehouse, by, lo, hi).to_pyarrow().to_pylist()}
    ev = ev[(ev.ts >= lo) & (ev.ts < hi) & ev.customer_id.notna()]
    ev = ev.merge(t["products"][["product_id", "cost"]], on="product_id", how="left")
    if by == "channel":
        ev = ev.assign(group=ev.channel.fillna("none"))
        members = ev.groupby("group").customer_id.nunique()
    else:
        ev = ev.merge(customers[["customer_id", by]].rename(columns={by: "group"}))
        members = customers[customers.signup_ts < hi].groupby(by).size()
        assert customers.signup_ts.max() >= hi  # some join after the period: not members yet
    assert set(got) == set(members.index)
    kind = ev.type
    buy = ev[kind == "purchase"]
    signed = ev.amount.fillna(0).where(kind == "purchase", -ev.amount.fillna(0))
    revenue = signed[kind.isin(["purchase", "return"])].groupby(ev.group).sum()
    margin = (buy.amount - buy.quantity.fillna(1) * buy.cost).groupby(buy.group).sum()
    orders = buy.basket_id.fillna(buy.event_id).groupby(buy.group).nunique()
    count = ev.groupby(["group", "type"]).size().unstack(fill_value=0)
    for g, row in got.items():
        assert row["members"] == members[g], g
        assert row["orders"] == orders.get(g, 0), g
        assert row["revenue"] == pytest.approx(revenue.get(g, 0.0)), g
        assert row["margin"] == pytest.approx(margin.get(g, 0.0)), g
        c = count.loc[g]
        visits, sent = c.get("visit", 0), c.get("email_sent", 0)
        assert row["conversion"] == (pytest.approx(orders.get(g, 0) / visits) if visits else None)
        if sent:
            assert row["open_rate"] == pytest.approx(c["email_open"] / sent), g
            assert row["click_rate"] == pytest.approx(c["email_click"] / sent), g
            assert row["unsubscribe_rate"] == pytest.approx(c.get("unsubscribe", 0) / sent), g
        assert row["visits_per_member"] == pytest.approx(visits / members[g]), g
    assert sum(r["orders"] for r in got.values()) >= orders.sum() > 40
