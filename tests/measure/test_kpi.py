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
