"""Headline KPIs against hand-computed truth."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.measure.kpi import headline_kpis

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
    for name, text in files.items():
        (workspace.root / name).write_text(text)
    results = ingest(
        workspace.warehouse, [workspace.root / n for n in files], workspace.config.ingest
    )
    assert all(r.total("quarantined") == 0 for r in results)
    return workspace


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
