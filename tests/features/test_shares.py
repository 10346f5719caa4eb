"""Category and brand shares: hand-computed, point-in-time, and Complete Journey against pandas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError
from nextbest.features import customer_features, preference_shares, share_columns
from tests.conftest import load_texts

AS_OF = datetime(2024, 6, 1, tzinfo=UTC)

CUSTOMERS = """customer_id,signup_ts
c1,2023-01-01T00:00:00Z
c2,2024-01-01T00:00:00Z
c3,2023-01-01T00:00:00Z
c4,2024-07-01T00:00:00Z
"""
PRODUCTS = "product_id,category,brand\np1,shoes,Acme\np2,bags,Acme\np3,shoes,\np4,,\n"
OFFERS = "offer_id,kind,category,brand\no1,sale,hats,Bolt\no2,sale,,\n"
# c1: p1 x2 (shoes, Acme), p2 (bags, Acme), o1 without a product (hats, Bolt), p3 (shoes, no
# brand), p4 with o2 (no category, no brand: left out), one line 400 days back (out of the
# window), one at the date (not seen), a view (not a purchase). c2: one line of p2. c3 bought
# nothing. c4 signs up after the date.
EVENTS = """event_id,customer_id,ts,type,product_id,offer_id,amount
e1,c1,2024-05-01T00:00:00Z,purchase,p1,,10
e2,c1,2024-05-02T00:00:00Z,purchase,p1,o1,10
e3,c1,2024-04-01T00:00:00Z,purchase,p2,,10
e4,c1,2024-03-01T00:00:00Z,purchase,,o1,10
e5,c1,2024-02-01T00:00:00Z,purchase,p3,,10
e6,c1,2024-02-02T00:00:00Z,purchase,p4,o2,10
e7,c1,2023-04-28T00:00:00Z,purchase,p2,,10
e8,c1,2024-06-01T00:00:00Z,purchase,p2,,10
e9,c1,2024-05-20T00:00:00Z,view,p2,,
e10,c2,2024-05-20T00:00:00Z,purchase,p2,,10
e11,c4,2024-05-20T00:00:00Z,purchase,p2,,10
"""


@pytest.fixture
def shop(workspace: Workspace) -> Workspace:
    files = {
        "customers.csv": CUSTOMERS,
        "products.csv": PRODUCTS,
        "offers.csv": OFFERS,
        "events.csv": EVENTS,
    }
    return load_texts(workspace, files)


def _long(ws: Workspace, level: str) -> dict[tuple[str, str], tuple[int, float]]:
    rows = preference_shares(ws.warehouse, AS_OF, level).to_pyarrow().to_pylist()
    assert {r["level"] for r in rows} <= {level}
    return {(r["customer_id"], r["value"]): (r["lines"], r["share"]) for r in rows}


def test_shares_match_hand_computed_values(shop: Workspace) -> None:
    # c1's category lines: shoes e1 e2 e5, bags e3, hats e4 (e6 has none): 5 lines.
    assert _long(shop, "category") == {
        ("c1", "shoes"): (3, pytest.approx(3 / 5)),
        ("c1", "bags"): (1, pytest.approx(1 / 5)),
        ("c1", "hats"): (1, pytest.approx(1 / 5)),
        ("c2", "bags"): (1, 1.0),
    }
    # Brands: e1 e2 e3 Acme (e2's product wins over its offer), e4 Bolt; e5 e6 have none.
    assert _long(shop, "brand") == {
        ("c1", "Acme"): (3, pytest.approx(3 / 4)),
        ("c1", "Bolt"): (1, pytest.approx(1 / 4)),
        ("c2", "Acme"): (1, 1.0),
    }
    # A shorter window: only May (e1, e2) and c2's line.
    short = preference_shares(shop.warehouse, AS_OF, "category", days=45).to_pandas()
    assert short[["customer_id", "value", "lines"]].values.tolist() == [
        ["c1", "shoes", 2],
        ["c2", "bags", 1],
    ]


def test_wide_shares_one_row_per_member_with_zeros_for_buyers(shop: Workspace) -> None:
    wide = share_columns(shop.warehouse, AS_OF).to_pandas().set_index("customer_id")
    assert list(wide.index) == ["c1", "c2", "c3"]  # c4 signs up after the date
    assert list(wide.columns) == [
        "share_category_bags",
        "share_category_hats",
        "share_category_shoes",
    ]
    assert wide.loc["c1"].tolist() == pytest.approx([0.2, 0.2, 0.6])
    assert wide.loc["c2"].tolist() == [1.0, 0.0, 0.0]
    assert wide.loc["c3"].isna().all()  # bought nothing: undefined, not zero
    some = share_columns(shop.warehouse, AS_OF, "brand", values=["Bolt", "Zed"]).to_pandas()
    assert some.share_brand_Bolt.tolist()[:2] == [0.25, 0.0]
    assert some.share_brand_Zed.tolist()[:2] == [0.0, 0.0]
    with pytest.raises(ConfigError, match="level: expected one of category, brand, got 'colour'"):
        preference_shares(shop.warehouse, AS_OF, "colour")


def test_top_share_of_the_360_is_the_largest_share(shop: Workspace) -> None:
    f = customer_features(shop.warehouse, AS_OF).to_pandas().set_index("customer_id")
    for level in ("category", "brand"):
        long = preference_shares(shop.warehouse, AS_OF, level).to_pandas()
        top = long.groupby("customer_id").head(1).set_index("customer_id")
        assert (top.value == f.loc[top.index, f"top_{level}"]).all()
        assert top.share.tolist() == pytest.approx(f.loc[top.index, f"top_{level}_share"].tolist())


_event = st.tuples(
    st.sampled_from(["c1", "c2"]),
    st.integers(min_value=-400 * 24, max_value=-1),  # hours before the date
    st.sampled_from(["purchase", "purchase", "view", "return"]),
    st.sampled_from(["p1", "p2", "p3", "p4", ""]),
    st.sampled_from(["o1", "o2", ""]),
)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.lists(_event, max_size=15),
    after=st.lists(_event.map(lambda e: (e[0], -e[1] - 1, *e[2:])), min_size=1, max_size=10),
)
def test_property_events_after_the_date_never_change_shares(
    tmp_path_factory: pytest.TempPathFactory, before: list, after: list
) -> None:
    ws = Workspace.init(tmp_path_factory.mktemp("pit"))
    (ws.root / "customers.csv").write_text(
        "customer_id,signup_ts\nc1,2023-01-01T00:00:00Z\nc2,2023-01-01T00:00:00Z\n"
    )
    (ws.root / "products.csv").write_text(PRODUCTS)
    (ws.root / "offers.csv").write_text(OFFERS)

    def write(name: str, rows: list, start: int) -> Path:
        lines = ["event_id,customer_id,ts,type,product_id,offer_id,amount"]
        for i, (c, hours, kind, product, offer) in enumerate(rows):
            ts = (AS_OF + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
            lines.append(f"x{start + i},{c},{ts},{kind},{product},{offer},10")
        path = ws.root / name
        path.write_text("\n".join(lines) + "\n")
        return path

    def snapshot() -> list[pd.DataFrame]:
        return [
            preference_shares(ws.warehouse, AS_OF, "category").to_pandas(),
            preference_shares(ws.warehouse, AS_OF, "brand").to_pandas(),
            share_columns(ws.warehouse, AS_OF, values=["shoes", "bags", "hats"]).to_pandas(),
        ]

    names = ("customers.csv", "products.csv", "offers.csv")
    ingest(
        ws.warehouse,
        [*(ws.root / n for n in names), write("events_a.csv", before, 0)],
        ws.config.ingest,
    )
    first = snapshot()
    for frame in first[:2]:
        if len(frame):
            assert frame.groupby("customer_id").share.sum().tolist() == pytest.approx(
                [1.0] * frame.customer_id.nunique()
            )
    ingest(ws.warehouse, [write("events_b.csv", after, 1000)], ws.config.ingest)
    for a, b in zip(first, snapshot(), strict=True):
        pd.testing.assert_frame_equal(a, b)
    ws.close()


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    from tests.conftest import shared_data

    folder = shared_data("completejourney")
    ws = Workspace.init(tmp_path_factory.mktemp("cj") / "ws")
    ingest(ws.warehouse, [folder], ws.config.ingest, fmt="completejourney")
    yield ws, folder
    ws.close()


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("level", "column"), [("category", "product_category"), ("brand", "brand")]
)
def test_complete_journey_shares_match_an_independent_pandas_computation(
    journey: tuple[Workspace, Path], level: str, column: str
) -> None:
    ws, folder = journey
    as_of = datetime(2017, 10, 1, tzinfo=UTC)
    got = preference_shares(ws.warehouse, as_of, level, days=180).to_pandas()
    tx = pd.read_csv(folder / "transactions_sample.csv.gz", dtype=str)
    products = pd.read_csv(folder / "products.csv.gz", dtype=str)
    tx["ts"] = pd.to_datetime(tx.transaction_timestamp, format="%Y-%m-%dT%H:%M:%S%z", utc=True)
    seen = tx[(tx.ts < as_of) & (tx.ts >= as_of - timedelta(days=180))]
    lines = seen.merge(products[["product_id", column]], on="product_id")  # catalogue lines
    lines = lines.dropna(subset=[column])
    counts = lines.groupby(["household_id", column]).size().rename("lines").reset_index()
    counts["share"] = counts.lines / counts.groupby("household_id").lines.transform("sum")
    counts["customer_id"] = "cj-" + counts.household_id
    expected = counts.set_index(["customer_id", column]).sort_index()
    mine = got.set_index(["customer_id", "value"]).sort_index()
    assert len(mine) == len(expected) and len(mine) > (1_000 if level == "brand" else 20_000)
    assert mine.index.tolist() == expected.index.tolist()
    assert mine.lines.tolist() == expected.lines.tolist()
    assert mine.share.to_numpy() == pytest.approx(expected.share.to_numpy())
    per_customer = got.groupby("customer_id").share.sum()
    assert per_customer.to_numpy() == pytest.approx(1.0)
