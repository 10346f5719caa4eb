"""Lifetime value: BG/NBD and Gamma-Gamma reproduce the published CDNOW estimates.

Truth: Fader, Hardie & Lee (2005), "Counting your customers the easy way" (BG/NBD on the
2,357-customer CDNOW sample: r 0.243, alpha 4.414, a 0.793, b 2.426, LL -9582.4), and the
lifetimes package's documented fits on the same files (standard errors, Gamma-Gamma p 6.25,
q 3.74, v 15.45, the top predicted purchasers and conditional average profits).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.errors import DataError, NotFittedError
from nextbest.models.clv import BetaGeoModel, GammaGammaModel
from nextbest.models.clv_summary import clv_summary, fit_clv
from tests.conftest import shared_data

pytestmark = pytest.mark.shared_data

PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_SE = {"r": 0.013, "alpha": 0.378, "a": 0.186, "b": 0.705}  # lifetimes' summary


def _rounded(params: dict[str, float], digits: int) -> dict[str, float]:
    return {k: round(v, digits) for k, v in params.items()}


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return pd.read_csv(shared_data("cdnow", "cdnow_customers_summary.csv"))


@pytest.fixture(scope="module")
def with_money() -> pd.DataFrame:
    return pd.read_csv(shared_data("cdnow", "cdnow_customers_summary_with_transactions.csv"))


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """CDNOW_sample.txt read independently: master id, sample id, date, CDs, dollars."""
    path = shared_data("cdnow", "CDNOW_sample.txt")
    names = ["master_id", "customer_id", "date", "cds", "amount"]
    raw = pd.read_csv(path, sep=r"\s+", header=None, names=names, dtype={"date": str})
    raw["ts"] = pd.to_datetime(raw.date, format="%Y%m%d")
    return raw


@pytest.fixture(scope="module")
def bgnbd(summary: pd.DataFrame) -> BetaGeoModel:
    return BetaGeoModel().fit(summary.frequency, summary.recency, summary["T"])


def test_bgnbd_reproduces_the_published_cdnow_estimates(bgnbd: BetaGeoModel) -> None:
    assert _rounded(bgnbd.params_, 3) == PUBLISHED
    for k, v in PUBLISHED.items():
        assert bgnbd.params_[k] == pytest.approx(v, abs=0.0005)
    assert _rounded(bgnbd.standard_errors_, 3) == PUBLISHED_SE
    assert round(bgnbd.log_likelihood_, 1) == -9582.4
    assert round(bgnbd.expected_purchases_new_customer(52), 3) == 1.444
    table = bgnbd.summary()
    assert list(table.columns) == ["parameter", "estimate", "std_error", "lower_95", "upper_95"]
    assert list(table.parameter) == ["r", "alpha", "a", "b"]
    # Wald interval of alpha: 4.414 -+ 1.96 * 0.378.
    assert table.lower_95[1] == pytest.approx(3.672, abs=0.001)
    assert table.upper_95[1] == pytest.approx(5.155, abs=0.001)


def test_conditional_expectations_match_lifetimes_top_purchasers(
    bgnbd: BetaGeoModel, summary: pd.DataFrame
) -> None:
    # lifetimes' quickstart: the five customers with most purchases expected next week.
    nxt = bgnbd.expected_purchases(1, summary.frequency, summary.recency, summary["T"])
    top = summary.assign(p=nxt).sort_values("p").tail(5)
    assert list(top.ID) == [509, 841, 1981, 157, 1516]
    assert np.round(top.p.to_numpy(), 6).tolist() == [
        0.424877,
        0.474738,
        0.486526,
        0.662396,
        0.710623,
    ]


def test_probability_alive(bgnbd: BetaGeoModel, summary: pd.DataFrame) -> None:
    alive = bgnbd.probability_alive(summary.frequency, summary.recency, summary["T"])
    assert np.all(alive[summary.frequency.to_numpy() == 0] == 1.0)
    assert np.all((alive > 0) & (alive <= 1))
    # Two repeat purchases, the last one 8.43 weeks before the end: by the BG/NBD P(alive),
    # 1 / (1 + a / (b + 1) * ((alpha + 38.86) / (alpha + 30.43)) ** (r + 2)).
    r, alpha, a, b = (bgnbd.params_[k] for k in ("r", "alpha", "a", "b"))
    by_hand = 1 / (1 + a / (b + 1) * ((alpha + 38.86) / (alpha + 30.43)) ** (r + 2))
    assert bgnbd.probability_alive([2], [30.43], [38.86])[0] == pytest.approx(by_hand, rel=1e-12)
    assert round(by_hand, 3) == 0.727
    # The longer the silence since the last purchase, the likelier the customer has gone.
    later = bgnbd.probability_alive([2, 2, 2], [30.43, 30.43, 30.43], [38.86, 50, 80])
    assert np.all(np.diff(later) < 0)


def test_clv_summary_rebuilds_the_lifetimes_summary(
    raw: pd.DataFrame, summary: pd.DataFrame, with_money: pd.DataFrame
) -> None:
    mine = clv_summary(raw, "1997-09-30", observation_end="1998-06-30")
    assert mine.customer_id.tolist() == summary.ID.tolist()
    assert (mine.frequency.to_numpy() == summary.frequency.to_numpy()).all()
    # The published file holds weeks (days / 7) rounded to two decimals.
    assert np.abs(mine.recency.round(2) - summary.recency).max() < 1e-6
    assert np.abs(mine["T"].round(2) - summary["T"]).max() < 1e-6
    assert mine["T"].iloc[0] == pytest.approx(272 / 7)  # 1997-01-01 to 1997-09-30
    # zbar: mean dollars of the repeat purchase days, rounded to cents.
    assert np.abs(mine.monetary_value - with_money.zbar).max() <= 0.005 + 1e-9
    assert mine.duration_holdout.unique().tolist() == [39.0]
    assert mine.frequency_holdout.sum() == 1882  # purchase days in the 39-week holdout
    fitted = BetaGeoModel().fit(mine.frequency, mine.recency, mine["T"])
    assert _rounded(fitted.params_, 3) == PUBLISHED
    assert round(fitted.log_likelihood_, 1) == -9582.4  # the paper's LL, on unrounded weeks


def test_holdout_purchases_against_the_forecast(raw: pd.DataFrame) -> None:
    rows = clv_summary(raw, "1997-09-30", observation_end="1998-06-30")
    model = BetaGeoModel().fit(rows.frequency, rows.recency, rows["T"])
    forecast = model.expected_purchases(39, rows.frequency, rows.recency, rows["T"])
    # The 1,411 one-time buyers: 0.237 purchases each in the holdout, forecast 0.225.
    once = rows.frequency.to_numpy() == 0
    assert rows.frequency_holdout[once].mean() == pytest.approx(0.2367, abs=0.0001)
    assert forecast[once].mean() == pytest.approx(rows.frequency_holdout[once].mean(), rel=0.05)
    # In total the model under-forecasts the holdout by 12% (1,653 against 1,882 purchase
    # days), from customers with one or two repeat purchases, as Fader, Hardie & Lee's
    # conditional-expectation figure shows; the total is pinned, not claimed to be within 5%.
    assert forecast.sum() == pytest.approx(1653.4, abs=0.5)
    assert forecast.sum() / rows.frequency_holdout.sum() == pytest.approx(0.879, abs=0.001)


def test_gamma_gamma_reproduces_lifetimes(
    with_money: pd.DataFrame, bgnbd: BetaGeoModel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="nextbest.models.clv"):
        model = GammaGammaModel().fit(with_money.x, with_money.zbar)
    assert _rounded(model.params_, 2) == {"p": 6.25, "q": 3.74, "gamma": 15.45}
    assert model.n_excluded_ == 1411 and model.n_customers_ == 946
    assert "fitting on 946 repeat customers; 1411 with frequency 0 left out" in caplog.text
    assert all(v > 0 for v in model.standard_errors_.values())
    profit = model.conditional_expected_average_profit(with_money.x, with_money.zbar)
    # lifetimes' quickstart: 24.658619, 18.911489, 35.170981 ...; mean 35.2529588.
    assert np.round(profit[:3], 2).tolist() == [24.66, 18.91, 35.17]
    assert round(profit.mean(), 2) == 35.25
    args = (bgnbd, with_money.x, with_money.t_x, with_money["T"], with_money.zbar)
    flat = model.customer_lifetime_value(*args, horizon_weeks=52)
    expected = bgnbd.expected_purchases(52, with_money.x, with_money.t_x, with_money["T"])
    np.testing.assert_allclose(flat, expected * profit, rtol=1e-10)
    discounted = model.customer_lifetime_value(*args, 52, discount_rate_per_week=0.01)
    assert np.all(discounted < flat)
    weekly = [bgnbd.expected_purchases(w, [2], [30.43], [38.86])[0] for w in (1, 2)]
    two = model.customer_lifetime_value(bgnbd, [2], [30.43], [38.86], [22.35], 2, 0.01)[0]
    assert two == pytest.approx(
        profit[0] * (weekly[0] / 1.01 + (weekly[1] - weekly[0]) / 1.01**2), rel=1e-12
    )


def test_warehouse_path_equals_the_pure_path(workspace: Workspace, raw: pd.DataFrame) -> None:
    ingest(
        workspace.warehouse,
        [shared_data("cdnow", "CDNOW_sample.txt")],
        workspace.config.ingest,
        fmt="cdnow",
    )
    result = fit_clv(workspace.warehouse, "1997-09-30", horizon_weeks=52)
    assert _rounded(result.bgnbd.params_, 3) == PUBLISHED
    assert _rounded(result.gamma_gamma.params_, 2) == {"p": 6.25, "q": 3.74, "gamma": 15.44}
    pure = clv_summary(
        raw.assign(customer_id=raw.master_id.map("cdnow-{:05d}".format)), "1997-09-30"
    )
    got = result.customers.sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(got[pure.columns], pure)
    assert result.customers.clv.is_monotonic_decreasing
    assert (result.customers.probability_alive[result.customers.frequency == 0] == 1).all()
    payload = result.to_dict(top=3)
    assert set(payload) >= {"bgnbd", "gamma_gamma", "customers"}
    assert len(payload["customers"]) == 3
    assert payload["customers"][0]["clv"] == pytest.approx(result.customers.clv.max())


NEG = dict(frequency=[1, -1], recency=[2, 0], T=[3, 3])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (NEG, "frequency: expected a number >= 0, got -1.0 at row 1"),
        (
            dict(frequency=[0, 2], recency=[0, 0], T=[5, 5]),
            "recency: expected > 0 where frequency > 0 (a repeat purchase comes after the "
            "first), got recency 0.0 with frequency 2.0 at row 1",
        ),
        (
            dict(frequency=[1, 1, 1], recency=[2, 3, 9], T=[5, 5, 5]),
            "recency: expected <= T (the last purchase falls within calibration), got recency "
            "9.0 > T 5.0 at row 2",
        ),
        (
            dict(frequency=[1, 1], recency=[2, 3], T=[5]),
            "expected frequency, recency, T of the same length (one value per customer), got "
            "frequency 2, recency 2, T 1",
        ),
        (
            dict(frequency=[1, 1], recency=[2, float("nan")], T=[5, 5]),
            "recency: expected a number, got nan at row 1",
        ),
        (dict(frequency=[1], recency=[1], T=["x"]), "T: expected numbers, got ['x']"),
    ],
)
def test_bad_input_is_named(data: dict[str, list[float]], message: str) -> None:
    with pytest.raises(DataError) as caught:
        BetaGeoModel().fit(**data)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("frequency", "monetary", "message"),
    [
        ([1, 2], [3.0, -1.0], "monetary_value: expected a number >= 0, got -1.0 at row 1"),
        ([0, 2], [0.0, 0.0], "monetary_value: expected > 0 where frequency > 0"),
        ([0, 0], [0.0, 0.0], "expected at least one repeat customer (frequency > 0)"),
        ([1, 2], [3.0], "got frequency 2, monetary_value 1"),
    ],
)
def test_bad_spend_is_named(frequency: list[float], monetary: list[float], message: str) -> None:
    with pytest.raises(DataError) as caught:
        GammaGammaModel().fit(frequency, monetary)
    assert message in str(caught.value)


def test_prediction_before_fit_is_refused() -> None:
    message = "BetaGeoModel is not fitted yet; call fit(...) before predicting"
    with pytest.raises(NotFittedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BetaGeoModel().probability_alive([1], [1], [2])
    with pytest.raises(NotFittedError, match="GammaGammaModel is not fitted yet"):
        GammaGammaModel().summary()
    model = BetaGeoModel(penalizer_coef=0.5)
    assert model.get_params() == {"penalizer_coef": 0.5} and not hasattr(model, "params_")
