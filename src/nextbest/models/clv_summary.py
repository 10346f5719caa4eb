"""Lifetime value from the warehouse: per-customer summaries, both models, one result.

:func:`clv_summary` turns transactions into the rows BG/NBD and Gamma-Gamma are fitted on
(the "RFM" summary of Fader, Hardie & Lee 2005), the same rows lifetimes'
``summary_data_from_transaction_data`` and ``calibration_and_holdout_data`` build:

- purchases on the same day are one purchase (their amounts summed);
- ``frequency``: repeat purchase days in calibration (purchase days minus one);
- ``recency``: time from the first to the last purchase day in calibration;
- ``T``: time from the first purchase day to the calibration end;
- ``monetary_value``: mean amount of the repeat purchase days, the first one left out (0 for
  a customer with no repeat purchase);
- with an observation end, ``frequency_holdout`` (purchase days after calibration, up to and
  including the observation end) and ``duration_holdout``.

Time is in weeks (days / 7) by default. :func:`fit_clv` queries the purchase events with Ibis,
fits both models and returns a :class:`ClvResult` with every customer's expected purchases,
expected spend per purchase and discounted lifetime value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeAlias

import ibis
import numpy as np
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError, DataError
from nextbest.models.clv import BetaGeoModel, GammaGammaModel

__all__ = ["ClvResult", "clv_summary", "fit_clv", "warehouse_transactions"]

log = logging.getLogger(__name__)

_UNITS = {"W": 7.0, "D": 1.0}
_COLUMNS = ("customer_id", "ts", "amount")

DateLike: TypeAlias = str | date | datetime | pd.Timestamp


def _day(value: DateLike, name: str) -> pd.Timestamp:
    """The calendar day (UTC, naive midnight) of a date, timestamp or ISO string."""
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a date such as 1997-09-30, got {value!r}") from None
    if ts is pd.NaT:
        raise ConfigError(f"{name}: expected a date such as 1997-09-30, got {value!r}")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.floor("D")


def _days(ts: pd.Series) -> pd.Series:
    """Each timestamp's calendar day in UTC, as naive midnights."""
    values = pd.to_datetime(ts, utc=True)
    return values.dt.tz_localize(None).dt.floor("D")


def clv_summary(
    transactions: pd.DataFrame,
    calibration_end: DateLike,
    observation_end: DateLike | None = None,
    unit: str = "W",
) -> pd.DataFrame:
    """One row per customer: frequency, recency, T, monetary value (and holdout counts).

    Parameters
    ----------
    transactions : pandas.DataFrame
        Columns ``customer_id``, ``ts`` (timestamps; tz-aware ones are read in UTC) and
        ``amount``.
    calibration_end : date-like
        Last day of calibration; purchases on that whole day count.
    observation_end : date-like, optional
        Last day of the holdout period; adds ``frequency_holdout`` and ``duration_holdout``.
    unit : {"W", "D"}
        Time unit of ``recency``, ``T`` and ``duration_holdout``: weeks (days / 7) or days.

    Returns
    -------
    pandas.DataFrame
        Sorted by ``customer_id``; only customers with a purchase by ``calibration_end``.
    """
    if unit not in _UNITS:
        raise ConfigError(f"unit: expected one of {', '.join(_UNITS)}, got {unit!r}")
    missing = [c for c in _COLUMNS if c not in transactions.columns]
    if missing:
        raise DataError(
            f"transactions: expected columns {', '.join(_COLUMNS)}, missing "
            f"{', '.join(missing)}; got {', '.join(map(str, transactions.columns))}"
        )
    amount = pd.to_numeric(transactions["amount"], errors="coerce").to_numpy(float)
    bad = np.flatnonzero(np.isnan(amount))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"amount: expected a number, got {transactions['amount'].iloc[i]!r} at row {i}; "
            "fill or drop purchases without an amount"
        )
    scale = _UNITS[unit]
    cal = _day(calibration_end, "calibration_end")
    obs = None if observation_end is None else _day(observation_end, "observation_end")
    if obs is not None and obs <= cal:
        raise ConfigError(
            f"observation_end: expected a day after calibration_end {cal:%Y-%m-%d}, got "
            f"{obs:%Y-%m-%d}"
        )
    daily = (
        pd.DataFrame(
            {
                "customer_id": transactions["customer_id"].to_numpy(),
                "day": _days(transactions["ts"]).to_numpy(),
                "amount": amount,
            }
        )
        .groupby(["customer_id", "day"], as_index=False)["amount"]
        .sum()
    )
    calib = daily[daily["day"] <= cal]
    by = calib.groupby("customer_id")
    first, last = by["day"].min(), by["day"].max()
    repeat = calib[calib["day"] > calib["customer_id"].map(first)]
    out = pd.DataFrame(
        {
            "frequency": by.size() - 1,
            "recency": (last - first).dt.days / scale,
            "T": (cal - first).dt.days / scale,
            "monetary_value": repeat.groupby("customer_id")["amount"].mean(),
        }
    )
    out["monetary_value"] = out["monetary_value"].fillna(0.0)
    if obs is not None:
        held = daily[(daily["day"] > cal) & (daily["day"] <= obs)]
        out["frequency_holdout"] = held.groupby("customer_id").size()
        out["frequency_holdout"] = out["frequency_holdout"].fillna(0).astype("int64")
        out["duration_holdout"] = (obs - cal).days / scale
    out.index.name = "customer_id"
    return out.sort_index().reset_index()


def warehouse_transactions(warehouse: Warehouse, until: DateLike | None = None) -> pd.DataFrame:
    """Purchase events with a customer: ``customer_id``, ``ts`` (UTC), ``amount``.

    Parameters
    ----------
    warehouse : Warehouse
        The events table is queried with Ibis (``type == "purchase"``); a missing amount
        counts as 0.
    until : date-like, optional
        Only purchases strictly before this instant (naive values are UTC).
    """
    ev = warehouse.table("events")
    ev = ev.filter(ev.type == "purchase", ev.customer_id.notnull())
    if until is not None:
        cut = pd.Timestamp(until)
        cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
        ev = ev.filter(ev.ts < ibis.literal(cut.to_pydatetime(), type="timestamp('UTC')"))
    query = ev.select("customer_id", "ts", amount=ev.amount.fill_null(0.0))
    frame: pd.DataFrame = query.order_by(["customer_id", "ts"]).to_pandas()
    return frame


@dataclass
class ClvResult:
    """Both fitted models and every customer's summary, expectations and lifetime value.

    ``customers`` holds ``customer_id``, ``frequency``, ``recency``, ``T`` (weeks),
    ``monetary_value``, ``probability_alive``, ``expected_purchases`` (in the horizon),
    ``expected_average_value`` (per purchase) and ``clv``, sorted by ``clv``, highest first.
    """

    calibration_end: datetime
    horizon_weeks: int
    discount_rate_per_week: float
    bgnbd: BetaGeoModel
    gamma_gamma: GammaGammaModel
    customers: pd.DataFrame

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """JSON-ready: parameters with standard errors, and the ``top`` customers (all if None)."""

        def model(m: BetaGeoModel | GammaGammaModel) -> dict[str, Any]:
            return {
                "params": dict(m.params_),
                "standard_errors": dict(m.standard_errors_),
                "log_likelihood": m.log_likelihood_,
                "customers": m.n_customers_,
            }

        rows = self.customers if top is None else self.customers.head(top)
        return {
            "calibration_end": self.calibration_end.isoformat(),
            "horizon_weeks": self.horizon_weeks,
            "discount_rate_per_week": self.discount_rate_per_week,
            "bgnbd": model(self.bgnbd),
            "gamma_gamma": model(self.gamma_gamma),
            "customers": rows.to_dict("records"),
        }


def fit_clv(
    warehouse: Warehouse,
    calibration_end: DateLike,
    horizon_weeks: int = 52,
    discount_rate_per_week: float = 0.0,
) -> ClvResult:
    """Fit BG/NBD and Gamma-Gamma on purchases up to ``calibration_end``; value every customer.

    Parameters
    ----------
    warehouse : Warehouse
        Source of the purchase events (see :func:`warehouse_transactions`).
    calibration_end : date-like
        Last day of calibration (whole day included); time runs in weeks.
    horizon_weeks : int, default 52
        Weeks ahead for expected purchases and lifetime value.
    discount_rate_per_week : float, default 0.0
        Weekly discount rate of future spend.
    """
    cal = _day(calibration_end, "calibration_end")
    tx = warehouse_transactions(warehouse, until=cal + timedelta(days=1))
    if tx.empty:
        raise DataError(
            f"the warehouse has no purchase events with a customer on or before {cal:%Y-%m-%d}; "
            "expected events of type 'purchase': ingest some, or pick a later calibration end"
        )
    rows = clv_summary(tx, cal)
    x, t_x, big_t, m = (rows[c] for c in ("frequency", "recency", "T", "monetary_value"))
    bgnbd = BetaGeoModel().fit(x, t_x, big_t)
    spend = GammaGammaModel().fit(x, m)
    log.info("BG/NBD on %d customers: %s", len(rows), bgnbd.params_)
    clv = spend.customer_lifetime_value(
        bgnbd, x, t_x, big_t, m, horizon_weeks, discount_rate_per_week
    )
    rows["probability_alive"] = bgnbd.probability_alive(x, t_x, big_t)
    rows["expected_purchases"] = bgnbd.expected_purchases(horizon_weeks, x, t_x, big_t)
    rows["expected_average_value"] = spend.conditional_expected_average_profit(x, m)
    rows["clv"] = clv
    rows = rows.sort_values(["clv", "customer_id"], ascending=[False, True], ignore_index=True)
    return ClvResult(
        cal.to_pydatetime().replace(tzinfo=UTC),
        horizon_weeks,
        discount_rate_per_week,
        bgnbd,
        spend,
        rows,
    )
