"""Campaign ROI on a simulated holdout campaign: money against pandas, effects against the truth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from nextbest.data.workspace import Workspace
from nextbest.decide import load_campaign, parse_campaign
from nextbest.errors import ConfigError
from nextbest.measure import campaign_roi
from nextbest.measure.roi import verdict
from nextbest.measure.stats import Estimate, power_rates
from tests.measure.test_experiment import holdout_sim_root

DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, Path]]:
    root = holdout_sim_root(tmp_path_factory)
    ws = Workspace.open(root / "ws")
    yield ws, root / "sim"
    ws.close()


def _campaign(path: Path, paid: dict[str, float], expected_value: float = 500.0) -> Path:
    offers = "".join(f'[offers."{o}"]\nredemption_cost = {c}\n' for o, c in paid.items())
    path.write_text(
        f"""[campaign]
name = "sim-daily"

[campaign.experiment]
name = "daily_holdout"
holdout = 0.2
arms = {{ mailed = 1.0 }}

[campaign.hypothesis]
metric = "conversion"
expected_lift = 0.5
minimum_detectable_effect = 0.3
expected_value = {expected_value}
window_days = 1

{offers}"""
    )
    return path


def test_roi_money_matches_pandas_and_the_effect_matches_the_truth(
    sim: tuple[Workspace, Path], tmp_path: Path
) -> None:
    ws, sim_dir = sim
    d = pd.read_parquet(sim_dir / "decisions.parquet")
    e = pd.read_parquet(sim_dir / "events.parquet")
    products = pd.read_parquet(sim_dir / "products.parquet")
    offers = pd.read_parquet(sim_dir / "offers.parquet")
    buys = e[e.type == "purchase"].merge(products[["product_id", "cost"]], on="product_id")
    buys["margin"] = buys.amount - buys.quantity.fillna(1) * buys.cost
    # purchases of an offer within a day of a mailed decision that showed it to the buyer
    sent = d[(d.arm == "mailed") & d.offer_id.notna()].merge(offers[["offer_id", "unit_cost"]])
    shown = sent[["customer_id", "offer_id", "ts"]]
    hit = buys.merge(shown, on=["customer_id", "offer_id"], suffixes=("", "_d"))
    hit = hit[(hit.ts >= hit.ts_d) & (hit.ts <= hit.ts_d + DAY)].drop_duplicates("event_id")
    paid = dict(zip(hit.offer_id.value_counts().index[:2], (3.0, 1.5), strict=True))
    hit = hit[hit.offer_id.isin(list(paid))]
    r = campaign_roi(ws.warehouse, _campaign(tmp_path / "c.toml", paid))
    assert (r.control, r.treated_arms, r.unit, r.window_days) == (
        "holdout",
        ["mailed"],
        "assignment",
        1,
    )

    # units, margin and revenue per assignment over the day after it, by pandas
    units = d.groupby(["customer_id", "ts"]).arm.min().reset_index()
    j = units.merge(
        buys[["customer_id", "ts", "amount", "margin"]], on="customer_id", suffixes=("", "_e")
    )
    j = j[(j.ts_e >= j.ts) & (j.ts_e <= j.ts + DAY)]
    sums = j.groupby(["customer_id", "ts"])[["amount", "margin"]].sum().reset_index()
    units = units.merge(sums, how="left").fillna({"amount": 0.0, "margin": 0.0})
    mean = units.groupby("arm")[["amount", "margin"]].mean()
    n_t = int((units.arm == "mailed").sum())
    assert (r.n_treated, r.n_control) == (n_t, int((units.arm == "holdout").sum()))
    inc_margin = mean.margin["mailed"] - mean.margin["holdout"]
    assert r.incremental_margin.value == pytest.approx(inc_margin)
    assert r.incremental_revenue.value == pytest.approx(
        mean.amount["mailed"] - mean.amount["holdout"]
    )
    assert r.total_incremental_margin.value == pytest.approx(n_t * inc_margin)

    # cost: unit cost per offer sent, redemption cost per purchase of a paid offer
    assert r.sends == len(sent)
    assert r.send_cost == pytest.approx(sent.unit_cost.sum())
    assert r.redemptions == len(hit) > 0
    assert r.redemption_cost == pytest.approx(hit.offer_id.map(paid).sum())
    cost = r.send_cost + r.redemption_cost
    assert r.roi is not None
    assert r.roi.value == pytest.approx((n_t * inc_margin - cost) / cost)
    assert r.roi.low == pytest.approx((r.total_incremental_margin.low - cost) / cost)

    # against the simulator's truth: the true effect of the e-mail on buying that day, and
    # (with the margin of an average purchase of the mailed) the incremental margin it makes
    emails = pd.read_parquet(sim_dir / "truth" / "emails.parquet")
    uplift = emails[emails.mailed].uplift.astype(float)
    assert r.lift is not None and r.lift.absolute.covers(float(uplift.mean()))
    per_purchase = j[j.arm == "mailed"].margin.mean()
    assert r.total_incremental_margin.covers(float(uplift.sum() * per_purchase))
    assert r.total_incremental_margin.low > 0 and r.incremental_margin.low > 0

    # against the hypothesis: +50% expected, measured well above zero and holding 50%
    assert r.lift.relative.low > 0 and r.lift.relative.high > 0.5
    assert r.verdict == "met" and r.value_verdict == "met"
    assert not r.sample_ratio.mismatch
    assert r.detectable_effect is not None
    n_eq = 2 / (1 / r.n_treated + 1 / r.n_control)
    control_rate = r.lift.absolute.value / r.lift.relative.value  # (t - c) / (t / c - 1) = c
    power = power_rates(control_rate, r.detectable_effect * control_rate, int(n_eq))
    assert power == pytest.approx(0.8, abs=1e-3)
    assert any("underpowered" in note for note in r.notes)  # 30% MDE needs more than 21 days
    too_much = campaign_roi(ws.warehouse, _campaign(tmp_path / "v.toml", paid, 50_000.0))
    assert too_much.value_verdict == "not met"


@pytest.mark.parametrize(
    ("low", "high", "expected", "outcome"),
    [
        (0.01, 0.08, 0.05, "met"),
        (0.06, 0.09, 0.05, "met"),  # above the expectation: met
        (0.01, 0.04, 0.05, "not met"),  # real but smaller than expected
        (-0.04, 0.03, 0.05, "not met"),
        (-0.01, 0.08, 0.05, "inconclusive"),
    ],
)
def test_verdicts(low: float, high: float, expected: float, outcome: str) -> None:
    assert verdict(Estimate((low + high) / 2, 0.01, low, high, 0.95), expected) == outcome


@pytest.mark.parametrize(
    ("hypothesis", "message"),
    [
        (
            'metric = "conversion"\nexpected_lift = 0.05\nlift = 2\n',
            "unknown key 'campaign.hypothesis.lift'",
        ),
        (
            'metric = "conversion"\n',
            "give expected_lift (relative), expected_absolute_lift or both",
        ),
        ('metric = "sales"\nexpected_lift = 0.05\n', "'campaign.hypothesis.metric'"),
        ('metric = "visit"\nexpected_lift = -0.1\n', "'campaign.hypothesis.expected_lift'"),
        ('metric = "visit"\nexpected_lift = 0.1\nalpha = 1.5\n', "'campaign.hypothesis.alpha'"),
    ],
)
def test_bad_hypotheses_are_named(tmp_path: Path, hypothesis: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[campaign]\nname = "c"\n[campaign.hypothesis]\n{hypothesis}')
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    assert message in str(info.value)


def test_roi_needs_an_experiment(sim: tuple[Workspace, Path]) -> None:
    ws, _ = sim
    spec = parse_campaign({"campaign": {"name": "plain"}})
    with pytest.raises(ConfigError) as info:
        campaign_roi(ws.warehouse, spec)
    assert str(info.value) == (
        "campaign 'plain' has no [campaign.experiment]: ROI is measured against its holdout; "
        "add an experiment with a holdout share"
    )
