"""Customer 360: hand-computed values, point-in-time correctness, and CDNOW against pandas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.features import customer_features, training_set
from tests.conftest import cdnow_master, load_texts

AS_OF = datetime(2024, 6, 1, tzinfo=UTC)

CUSTOMERS = """customer_id,signup_ts
c1,2024-01-01T00:00:00Z
c2,2024-05-01T00:00:00Z
c3,2024-07-01T00:00:00Z
"""
OFFERS = "offer_id,kind,category,brand,discount\no1,sale,shoes,Acme,0.5\no2,sale,bags,Bolt,0.3\n"
EVENTS = """event_id,customer_id,ts,type,offer_id,channel,amount,basket_id
e1,c1,2024-05-31T00:00:00Z,purchase,o1,web,30,b1
e2,c1,2024-05-31T00:00:00Z,purchase,o1,web,20,b1
e3,c1,2024-04-01T00:00:00Z,purchase,o2,app,50,b2
e4,c1,2023-01-01T00:00:00Z,purchase,,store,100,b3
e5,c1,2024-05-30T00:00:00Z,email_sent,,email,,
e6,c1,2024-05-29T00:00:00Z,email_sent,,email,,
e7,c1,2024-05-30T01:00:00Z,email_open,,email,,
e8,c1,2024-05-30T01:05:00Z,email_click,,email,,
e9,c1,2024-05-31T00:00:00Z,visit,,web,,
e10,c1,2024-05-31T00:00:00Z,add_to_cart,o1,web,,
e11,c1,2024-05-20T00:00:00Z,add_to_cart,o2,app,,
e12,c1,2024-05-21T00:00:00Z,add_to_cart,o2,app,,
e13,c1,2024-05-25T00:00:00Z,return,o1,web,20,
e14,c2,2024-05-15T00:00:00Z,referral,,,,
e15,c2,2024-06-01T00:00:00Z,purchase,o1,web,99,b9
e16,c2,2024-06-05T00:00:00Z,purchase,o1,web,10,b10
e17,c1,2024-05-22T00:00:00Z,add_to_cart,o2,app,,
"""


@pytest.fixture
def shop(workspace: Workspace) -> Workspace:
    files = {"customers.csv": CUSTOMERS, "offers.csv": OFFERS, "events.csv": EVENTS}
    return load_texts(workspace, files)


def test_features_match_hand_computed_values(shop: Workspace) -> None:
    f = customer_features(shop.warehouse, AS_OF).to_pandas().set_index("customer_id")
    assert list(f.index) == ["c1", "c2"]  # c3 signs up after the date
    c1 = f.loc["c1"]
    assert c1.tenure_days == pytest.approx(152)
    assert c1.recency_days == pytest.approx(1)
    assert (c1.frequency_30, c1.frequency_90, c1.frequency_365, c1.frequency_all) == (1, 2, 2, 3)
    assert (c1.monetary_30, c1.monetary_90, c1.monetary_all) == (50, 100, 200)
    assert c1.aov == pytest.approx(200 / 3)
    assert c1.emails_sent_30 == 2 and c1.open_rate_30 == 0.5 and c1.click_rate_30 == 0.5
    assert c1.click_to_open_30 == 1.0
    assert c1.visits_30 == 1
    # 365 days of visits and purchases: web e1, e2, e9; app e3.
    assert (c1.share_web, c1.share_app, c1.share_store) == (0.75, 0.25, 0.0)
    assert c1.cart_abandonment == pytest.approx(1 / 4)  # 4 carts, 3 purchase lines
    assert c1.returns_365 == 1 and c1.return_rate == pytest.approx(1 / 3)
    assert c1.discount_sensitivity == pytest.approx((0.5 + 0.5 + 0.3) / 3)
    assert (c1.top_category, c1.top_category_share) == ("shoes", pytest.approx(2 / 3))
    assert c1.top_brand == "Acme"
    assert c1.days_since_contact == pytest.approx(2)
    c2 = f.loc["c2"]
    assert c2.referrals_made == 1 and c2.frequency_all == 0  # e15 is at the date: not seen
    assert pd.isna(c2.recency_days) and pd.isna(c2.aov)


def test_training_labels_come_from_the_future(shop: Workspace) -> None:
    t = training_set(shop.warehouse, AS_OF).to_pandas().set_index("customer_id")
    assert bool(t.loc["c2", "purchase_next_14d"]) and not t.loc["c1", "purchase_next_14d"]
    assert bool(t.loc["c1", "no_purchase_next_90d"])
    assert t.loc["c2", "frequency_all"] == 0  # the label's purchases are not features


_offset = st.integers(min_value=-400 * 24, max_value=-1)  # hours before the date
_event = st.tuples(
    st.sampled_from(["c1", "c2"]),
    _offset,
    st.sampled_from(["purchase", "email_sent", "email_open", "visit", "add_to_cart", "return"]),
    st.floats(min_value=1, max_value=500, allow_nan=False).map(lambda x: round(x, 2)),
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.lists(_event, max_size=15),
    after=st.lists(_event.map(lambda e: (e[0], -e[1] - 1, e[2], e[3])), min_size=1, max_size=10),
)
def test_property_events_after_the_date_never_change_features(
    tmp_path_factory: pytest.TempPathFactory, before: list, after: list
) -> None:
    ws = Workspace.init(tmp_path_factory.mktemp("pit"))
    (ws.root / "customers.csv").write_text(
        "customer_id,signup_ts\nc1,2023-01-01T00:00:00Z\nc2,2023-01-01T00:00:00Z\n"
    )

    def write(name: str, rows: list, start: int) -> Path:
        lines = ["event_id,customer_id,ts,type,amount"]
        for i, (c, hours, kind, amount) in enumerate(rows):
            ts = (AS_OF + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
            lines.append(f"x{start + i},{c},{ts},{kind},{amount}")
        path = ws.root / name
        path.write_text("\n".join(lines) + "\n")
        return path

    ingest(
        ws.warehouse,
        [ws.root / "customers.csv", write("events_a.csv", before, 0)],
        ws.config.ingest,
    )
    first = customer_features(ws.warehouse, AS_OF).to_pandas()
    ingest(ws.warehouse, [write("events_b.csv", after, 1000)], ws.config.ingest)
    second = customer_features(ws.warehouse, AS_OF).to_pandas()
    pd.testing.assert_frame_equal(first, second)
    ws.close()


@pytest.mark.shared_data
def test_cdnow_rfm_inputs_match_an_independent_pandas_computation(workspace: Workspace) -> None:
    raw = cdnow_master(workspace)
    as_of = datetime(1997, 10, 1, tzinfo=UTC)
    f = customer_features(workspace.warehouse, as_of).to_pandas().set_index("customer_id")
    seen = raw[raw.ts < as_of]
    expected = seen.groupby("customer_id").agg(
        frequency_all=("ts", "size"), monetary_all=("dollar_value", "sum"), last=("ts", "max")
    )
    expected["recency_days"] = (as_of - expected["last"]).dt.days.astype(float)
    got = f.loc[expected.index]
    assert len(expected) == 23_570  # all of the cohort bought in Q1 1997
    assert (got.frequency_all == expected.frequency_all).all()
    assert got.monetary_all.to_numpy() == pytest.approx(expected.monetary_all.to_numpy())
    assert got.recency_days.to_numpy() == pytest.approx(expected.recency_days.to_numpy())
