"""RFM: scores and segments by hand on a fixture, and on CDNOW against pandas."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.features import rfm, rfm_migration
from tests.conftest import cdnow_master

AS_OF = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture
def shop(workspace: Workspace) -> Workspace:
    # b1..b5 last bought 1..5 days before the date; b1 and b2 bought 3 times, b5 twice.
    rows = ["event_id,customer_id,ts,type,amount"]
    plan = {"b1": [1, 40, 80], "b2": [2, 41, 81], "b3": [3], "b4": [4], "b5": [5, 300]}
    spend = {"b1": 100, "b2": 90, "b3": 10, "b4": 20, "b5": 30}
    for c, days in plan.items():
        for i, d in enumerate(days):
            day = (AS_OF - pd.Timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ")
            rows.append(f"{c}-{i},{c},{day},purchase,{spend[c]}")
    (workspace.root / "customers.csv").write_text(
        "customer_id\n" + "\n".join([*plan, "idle"]) + "\n"
    )
    (workspace.root / "events.csv").write_text("\n".join(rows) + "\n")
    ingest(
        workspace.warehouse,
        [workspace.root / "customers.csv", workspace.root / "events.csv"],
        workspace.config.ingest,
    )
    return workspace


def test_scores_codes_segments_and_ranking_by_hand(shop: Workspace) -> None:
    r = rfm(shop.warehouse, AS_OF).to_pandas().set_index("customer_id")
    # Recency: percent ranks 1, .75, .5, .25, 0 -> scores 5, 4, 3, 2, 1.
    assert r.loc[["b1", "b2", "b3", "b4", "b5"], "r"].tolist() == [5, 4, 3, 2, 1]
    # Frequency 3, 3, 1, 1, 2: ties share a score (percent rank .75 -> 4, 0 -> 1, .5 -> 3).
    assert r.loc[["b1", "b2", "b3", "b4", "b5"], "f"].tolist() == [4, 4, 1, 1, 3]
    # Monetary 300, 270, 10, 20, 60.
    assert r.loc[["b1", "b2", "b3", "b4", "b5"], "m"].tolist() == [5, 4, 1, 2, 3]
    assert r.loc["b1", "code"] == "545"
    assert r.segment.to_dict() == {
        "b1": "champions",
        "b2": "champions",
        "b3": "promising",
        "b4": "hibernating",
        "b5": "at_risk",
        "idle": "inactive",
    }
    assert r.loc[["b1", "b2", "b5", "b4", "b3"], "value_rank"].tolist() == [1, 2, 3, 4, 5]


def test_migration_counts_every_customer_once(shop: Workspace) -> None:
    m = rfm_migration(shop.warehouse, datetime(2024, 5, 1, tzinfo=UTC), AS_OF).to_pandas()
    assert m.customers.sum() == 6
    moved = {(a, b): n for a, b, n in m.itertuples(index=False)}
    assert moved[("inactive", "promising")] == 1  # b3 bought for the first time in between


@pytest.mark.shared_data
def test_cdnow_scores_match_pandas(workspace: Workspace) -> None:
    raw = cdnow_master(workspace)
    as_of = datetime(1998, 1, 1, tzinfo=UTC)
    got = rfm(workspace.warehouse, as_of).to_pandas().set_index("customer_id")
    seen = raw[(raw.ts < as_of) & (raw.ts >= as_of - pd.Timedelta(days=365))]
    agg = seen.groupby("customer_id").agg(
        n=("ts", "size"), m=("dollar_value", "sum"), last=("ts", "max")
    )
    agg["rec"] = (as_of - agg["last"]).dt.total_seconds()

    def score(values: pd.Series) -> pd.Series:
        pct = (values.rank(method="min") - 1) / (len(values) - 1)
        return np.minimum(np.floor(pct * 5).astype(int) + 1, 5)

    expected = pd.DataFrame({"r": score(-agg.rec), "f": score(agg.n), "m": score(agg.m.round(2))})
    buyers = got.loc[expected.index]
    assert (buyers.r == expected.r).all()
    assert (buyers.f == expected.f).all()
    assert (buyers.m.to_numpy() == expected.m.to_numpy()).all()
    assert (got.segment == "inactive").sum() == 23_570 - len(expected)
