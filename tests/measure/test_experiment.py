"""Experiment analysis on Hillstrom (against the CSV) and on the simulator (CUPED, sample ratio).

The workspaces are built once per test process and reopened by the ROI and CLI tests
(:func:`hillstrom_root`, :func:`holdout_sim_root`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.errors import DataError
from nextbest.measure import analyze_experiment
from nextbest.simulate import SimConfig, simulate
from tests.conftest import shared_data

HILLSTROM = "Kevin_Hillstrom_MineThatData_E-MailAnalytics_DataMiningChallenge_2008.03.20.csv"
ARMS = ("No E-Mail", "Mens E-Mail", "Womens E-Mail")
SIM = SimConfig(n_customers=10_000, days=21, seed=11, holdout_share=0.2)


def _built(root: Path, build: Callable[[Workspace, Path], None]) -> Path:
    """``root`` once ``build(workspace)`` has run there (once per test process)."""
    if not (root / "ready").exists():
        ws = Workspace.init(root / "ws")
        try:
            build(ws, root)
        finally:
            ws.close()
        (root / "ready").touch()
    return root


def hillstrom_root(factory: pytest.TempPathFactory) -> Path:
    """A workspace with Hillstrom ingested (``ROOT/ws``); skips when the data is absent."""
    path = shared_data("hillstrom", HILLSTROM)

    def build(ws: Workspace, _: Path) -> None:
        ingest(ws.warehouse, [path], ws.config.ingest, fmt="hillstrom")

    return _built(factory.getbasetemp() / "hillstrom", build)


def holdout_sim_root(factory: pytest.TempPathFactory) -> Path:
    """10,000 simulated members over 21 days with a 20% daily holdout: ``ROOT/sim``, ``ROOT/ws``."""

    def build(ws: Workspace, root: Path) -> None:
        simulate(SIM, root / "sim")
        ingest(ws.warehouse, [root / "sim"], ws.config.ingest)

    return _built(factory.getbasetemp() / "holdout-sim", build)


@pytest.fixture(scope="module")
def hillstrom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    ws = Workspace.open(hillstrom_root(tmp_path_factory) / "ws")
    yield ws
    ws.close()


@pytest.fixture(scope="module")
def csv() -> pd.DataFrame:
    return pd.read_csv(shared_data("hillstrom", HILLSTROM))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, Path]]:
    root = holdout_sim_root(tmp_path_factory)
    ws = Workspace.open(root / "ws")
    yield ws, root / "sim"
    ws.close()


# -- Hillstrom ---------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_hillstrom_arms_and_lifts_match_the_csv(hillstrom: Workspace, csv: pd.DataFrame) -> None:
    a = analyze_experiment(
        hillstrom.warehouse, "hillstrom-2008", ["visit", "conversion", "revenue"]
    )
    assert (a.control, a.arms, a.unit, a.units) == ("No E-Mail", list(ARMS), "customer", 64_000)
    by = csv.groupby("segment")
    # published: visits 18.3% / 15.1% / 10.6%, conversion 1.25% / 0.88% / 0.57%, spend per
    # customer $1.42 / $1.08 / $0.65 (men's, women's, no e-mail)
    published = {
        "visit": (0.106, 0.183, 0.151, 3),
        "conversion": (0.0057, 0.0125, 0.0088, 4),
        "revenue": (0.65, 1.42, 1.08, 2),
    }
    for metric, column in (("visit", "visit"), ("conversion", "conversion"), ("revenue", "spend")):
        m = a.metric(metric)
        assert m.binary == (metric != "revenue")
        for arm, want in zip(ARMS, published[metric][:3], strict=True):
            r = m.arm(arm)
            values = by.get_group(arm)[column]
            assert r.n == len(values)
            assert r.estimate.value == pytest.approx(values.mean(), rel=1e-12)
            assert round(r.estimate.value, published[metric][3]) == pytest.approx(want)
            assert r.estimate.low < r.estimate.value < r.estimate.high
        control = by.get_group("No E-Mail")[column]
        p_values = []
        for arm in ARMS[1:]:
            c = m.comparison(arm)
            treated = by.get_group(arm)[column]
            assert c.lift.absolute.value == pytest.approx(treated.mean() - control.mean())
            assert c.lift.relative.value == pytest.approx(treated.mean() / control.mean() - 1)
            if metric == "revenue":
                ref = stats.ttest_ind(treated, control, equal_var=False)
                ci = ref.confidence_interval(0.95)
                assert (c.lift.absolute.low, c.lift.absolute.high) == pytest.approx(
                    (ci.low, ci.high)
                )
            else:
                table = [
                    [treated.sum(), len(treated) - treated.sum()],
                    [control.sum(), len(control) - control.sum()],
                ]
                ref_p = stats.chi2_contingency(table, correction=False)[1]
                assert c.lift.test.p_value == pytest.approx(ref_p, rel=1e-8)
            p_values.append(c.lift.test.p_value)
        # Holm over the two e-mails: the smaller p doubled, the larger kept (if above it)
        low, high = sorted(p_values)
        adjusted = {c.lift.test.p_value: c.p_adjusted for c in m.comparisons}
        assert adjusted[low] == pytest.approx(min(1, 2 * low))
        assert adjusted[high] == pytest.approx(max(min(1, 2 * low), high))
        assert m.variance_reduction is None and "CUPED not applied" in m.notes[0]
    visit = a.metric("visit")
    # the men's e-mail: +7.66 points of visits (72% relative), the women's +4.52 points
    assert round(visit.comparison("Mens E-Mail").lift.absolute.value, 4) == 0.0766
    assert round(visit.comparison("Womens E-Mail").lift.absolute.value, 4) == 0.0452
    counts = csv.segment.value_counts()
    srm = a.sample_ratio
    assert srm.observed == {arm: int(counts[arm]) for arm in ARMS}
    assert srm.p_value == pytest.approx(stats.chisquare(counts.to_numpy()).pvalue)
    assert not srm.mismatch


@pytest.mark.shared_data
def test_hillstrom_sequential_p_values_are_never_below_the_fixed_ones(hillstrom: Workspace) -> None:
    a = analyze_experiment(hillstrom.warehouse, "hillstrom-2008", ["visit"], sequential=True)
    for c in a.metric("visit").comparisons:
        assert c.sequential is not None and c.sequential.looks == 1
        assert c.lift.test.p_value < c.sequential.p_value < 1e-30  # still overwhelming
        assert c.sequential.low < c.lift.absolute.value < c.sequential.high


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "hillstrom"},
            "unknown experiment 'hillstrom'; expected one of the experiments logged in "
            "decisions: hillstrom-2008 (64,000 customers, 3 arms)",
        ),
        (
            {"metrics": ["spend"]},
            "unknown metric 'spend'; expected one of conversion, revenue, margin, visit, open, "
            "click",
        ),
        (
            {"metrics": ["margin"]},
            "metric 'margin' needs the cost of what was bought: products.cost or offers.margin, "
            "and no purchase has either; load them, or use revenue",
        ),
        (
            {"control": "Mens"},
            "control arm 'Mens' is not an arm of 'hillstrom-2008'; arms: ['Mens E-Mail', "
            "'No E-Mail', 'Womens E-Mail']",
        ),
    ],
)
def test_bad_requests_are_named(hillstrom: Workspace, kwargs: dict, message: str) -> None:
    args = {"name": "hillstrom-2008", "metrics": ["visit"], **kwargs}
    with pytest.raises(DataError) as info:
        analyze_experiment(hillstrom.warehouse, args.pop("name"), args.pop("metrics"), **args)
    assert str(info.value) == message


# -- the simulator: CUPED with pre-period spend, sample ratio, truth --------------------------


def _units(sim_dir: Path, window: pd.Timedelta, pre: pd.Timedelta) -> pd.DataFrame:
    """Per assignment, revenue and visits after and before it, straight from the files."""
    d = pd.read_parquet(sim_dir / "decisions.parquet")
    e = pd.read_parquet(sim_dir / "events.parquet", columns=["customer_id", "ts", "type", "amount"])
    u = d.groupby(["customer_id", "ts"]).arm.min().reset_index()
    j = u.merge(e[e.type.isin(["purchase", "visit"])], on="customer_id", suffixes=("", "_e"))
    post = (j.ts_e >= j.ts) & (j.ts_e <= j.ts + window)
    before = (j.ts_e < j.ts) & (j.ts_e >= j.ts - pre)
    j["revenue"] = np.where(post & (j.type == "purchase"), j.amount, 0.0)
    j["pre_revenue"] = np.where(before & (j.type == "purchase"), j.amount, 0.0)
    j["visit"] = post & (j.type == "visit")
    j["pre_visit"] = before & (j.type == "visit")
    sums = j.groupby(["customer_id", "ts"])[["revenue", "pre_revenue", "visit", "pre_visit"]]
    agg = sums.agg({"revenue": "sum", "pre_revenue": "sum", "visit": "max", "pre_visit": "sum"})
    return u.merge(agg.reset_index(), on=["customer_id", "ts"], how="left").fillna(0)


def _reduction(frame: pd.DataFrame, y: str, x: str) -> float:
    """CUPED by hand: theta minimising the variance of the difference of arm means, and the
    share of that variance it removes."""
    arms = [g for _, g in frame.groupby("arm")]
    cov = sum(np.cov(g[y].astype(float), g[x].astype(float))[0, 1] / len(g) for g in arms)
    var_x = sum(g[x].astype(float).var() / len(g) for g in arms)
    var_y = sum(g[y].astype(float).var() / len(g) for g in arms)
    return float(cov**2 / var_x / var_y)


def test_cuped_with_pre_period_spend_reduces_variance_without_bias(
    sim: tuple[Workspace, Path],
) -> None:
    ws, sim_dir = sim
    a = analyze_experiment(
        ws.warehouse, "daily_holdout", ["revenue", "visit"], window_days=1, pre_days=14
    )
    assert (a.control, a.arms, a.unit) == ("holdout", ["holdout", "mailed"], "assignment")
    ref = _units(sim_dir, pd.Timedelta(days=1), pd.Timedelta(days=14))
    assert a.units == len(ref)
    for metric in ("revenue", "visit"):
        m = a.metric(metric)
        mailed = ref[ref.arm == "mailed"][metric].astype(float)
        held = ref[ref.arm == "holdout"][metric].astype(float)
        c = m.comparison("mailed")
        assert c.lift.absolute.value == pytest.approx(mailed.mean() - held.mean())
        # the variance reduction achieved, computed independently from the simulator's files
        assert m.variance_reduction == pytest.approx(_reduction(ref, metric, f"pre_{metric}"))
        assert m.variance_reduction is not None and m.variance_reduction > 0
        assert c.cuped is not None and c.cuped.absolute.se < c.lift.absolute.se
        # no bias: the adjusted lift's interval holds the unadjusted estimate
        assert c.cuped.absolute.covers(c.lift.absolute.value)
    # spend barely persists from day to day in the simulator; visits do
    revenue, visit = (a.metric(k).variance_reduction for k in ("revenue", "visit"))
    assert revenue is not None and visit is not None and revenue < 0.01 < visit


def test_sample_ratio_uses_the_logged_holdout_share(sim: tuple[Workspace, Path]) -> None:
    ws, _ = sim
    a = analyze_experiment(
        ws.warehouse, "daily_holdout", ["conversion"], window_days=1, cuped=False
    )
    srm = a.sample_ratio
    n = sum(srm.observed.values())
    assert srm.expected == pytest.approx({"holdout": 0.2 * n, "mailed": 0.8 * n})
    assert not srm.mismatch
    wrong = analyze_experiment(
        ws.warehouse,
        "daily_holdout",
        ["conversion"],
        window_days=1,
        cuped=False,
        weights={"holdout": 0.21, "mailed": 0.79},
    )
    assert wrong.sample_ratio.mismatch
    # the conversion lift's interval holds the true effect of the e-mail on buying that day
    emails = pd.read_parquet(sim[1] / "truth" / "emails.parquet")
    truth = float(emails[emails.mailed].uplift.mean())
    lift = a.metric("conversion").comparison("mailed").lift.absolute
    assert lift.covers(truth)
