"""Supervised churn: will a buyer make no purchase in the next ``horizon_days`` days?

A :class:`~nextbest.models.classifier.CalibratedBoostedClassifier` (calibrated LightGBM) is
trained on the point-in-time customer 360 of
:func:`nextbest.features.customer360.training_set`, with the label
``no_purchase_next_{horizon}d``. Churn means a buyer stops buying, so only customers with a
purchase before the snapshot are scored.

Time is split so that every number is measured as the model would be used:

- training snapshots end at ``as_of - horizon_days``, whose labels are fully observed by
  ``as_of``; with ``snapshots > 1`` earlier ones (``step_days`` apart) train the trees and the
  latest fits the calibrator, otherwise the model's ``calibration_fraction`` of the one
  snapshot's buyers, drawn at random with its seed, does;
- the held-out snapshot ``holdout_as_of`` (at or after ``as_of``) is scored with
  :func:`~nextbest.models.evaluation.probability_metrics`; its label window must end by the
  last day with events in the warehouse, else the labels would count unseen days as churn.

:func:`compare_with_bgnbd` scores the same buyers with BG/NBD (Fader, Hardie & Lee 2005),
fitted only on the purchases before the snapshot: its churn probability is the closed-form
``P(X(t) = 0 | x, t_x, T)`` of :func:`bgnbd_probability_no_purchase`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError, DataError
from nextbest.features.customer360 import training_set
from nextbest.models.classifier import CalibratedBoostedClassifier
from nextbest.models.clv import ArrayLike, BetaGeoModel
from nextbest.models.clv_summary import DateLike, _day, clv_summary, warehouse_transactions
from nextbest.models.evaluation import ProbabilityMetrics, calibration_table, probability_metrics
from nextbest.progress import NullReporter, Reporter

__all__ = [
    "NOT_FEATURES",
    "BgnbdComparison",
    "ChurnResult",
    "bgnbd_probability_no_purchase",
    "churn_frame",
    "compare_with_bgnbd",
    "feature_columns",
    "train_churn",
]

log = logging.getLogger(__name__)

_ONE_DAY = timedelta(days=1)

NOT_FEATURES = ("customer_id", "top_brand")
"""Left out of the inputs besides the labels: the id, and the brand name (a category of
hundreds of levels that overfits; ``top_brand_share`` stays)."""


def _label(horizon_days: int) -> str:
    return f"no_purchase_next_{horizon_days}d"


def _utc(value: DateLike, name: str) -> datetime:
    """Midnight UTC of a date-like, as an aware datetime (snapshots are whole days)."""
    return _day(value, name).to_pydatetime().replace(tzinfo=UTC)


def _check_horizon(horizon_days: int) -> None:
    if not (isinstance(horizon_days, int) and horizon_days >= 1):
        raise ConfigError(f"horizon_days: expected a whole number >= 1, got {horizon_days!r}")


def _data_end(warehouse: Warehouse) -> datetime:
    """The day after the last day with events: label windows must end by it."""
    ev = warehouse.table("events")
    last = ev.ts.max().to_pandas()
    if last is None or pd.isna(last):
        raise DataError(
            "the warehouse has no events: a churn label needs purchases before and after a "
            "snapshot; ingest events first"
        )
    return _utc(last, "last event") + _ONE_DAY


def _check_observed(warehouse: Warehouse, as_of: datetime, horizon_days: int, what: str) -> None:
    end = as_of + timedelta(days=horizon_days)
    data_end = _data_end(warehouse)
    if end > data_end:
        raise DataError(
            f"{what} {as_of:%Y-%m-%d}: its {horizon_days}-day label window runs to "
            f"{end - _ONE_DAY:%Y-%m-%d}, after the last day with events "
            f"{data_end - _ONE_DAY:%Y-%m-%d}; expected a snapshot on or before "
            f"{data_end - timedelta(days=horizon_days):%Y-%m-%d}, or a shorter horizon"
        )


def churn_frame(warehouse: Warehouse, as_of: DateLike, horizon_days: int = 90) -> pd.DataFrame:
    """Buyers as of ``as_of`` (a purchase before it): customer 360 and the churn label ``churned``.

    The label is ``no_purchase_next_{horizon_days}d`` of
    :func:`~nextbest.features.customer360.training_set`, as 0/1; the other label is dropped.
    """
    _check_horizon(horizon_days)
    day = _utc(as_of, "as_of")
    table = training_set(warehouse, day, horizons=(14, horizon_days))
    # Sorted: the engine returns rows in any order, and the fit depends on the row order.
    frame = table.filter(table.frequency_all > 0).order_by("customer_id").to_pandas()
    if frame.empty:
        raise DataError(
            f"no customer made a purchase before {day:%Y-%m-%d}: churn is a buyer who stops "
            "buying; expected events of type 'purchase' before the snapshot, ingest some or "
            "pick a later date"
        )
    churned = frame[_label(horizon_days)].astype(np.int8)
    labels = [c for c in frame.columns if c.startswith(("no_purchase_next_", "purchase_next_"))]
    return frame.drop(columns=labels).assign(churned=churned)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The model's inputs: a churn frame less the id, the brand name and the label."""
    return [c for c in frame.columns if c not in (*NOT_FEATURES, "churned")]


@dataclass
class ChurnResult:
    """A trained churn model, its snapshots and its quality on the held-out snapshot.

    ``windows`` maps ``train`` (one per training snapshot), ``calibration`` (when a snapshot
    of its own) and ``holdout`` to label windows ``(start, end)``, end excluded.
    """

    model: CalibratedBoostedClassifier
    horizon_days: int
    windows: dict[str, list[tuple[datetime, datetime]]]
    metrics: ProbabilityMetrics
    calibration: pd.DataFrame
    importances: pd.Series
    rows: dict[str, int] = field(default_factory=dict)
    holdout: pd.DataFrame | None = None

    def window(self) -> dict[str, list[str]]:
        """The label windows as ``YYYY-MM-DD..YYYY-MM-DD`` (last day included)."""
        return {
            name: [f"{a:%Y-%m-%d}..{b - _ONE_DAY:%Y-%m-%d}" for a, b in spans]
            for name, spans in self.windows.items()
        }


def train_churn(
    warehouse: Warehouse,
    as_of: DateLike,
    *,
    horizon_days: int = 90,
    holdout_as_of: DateLike | None = None,
    snapshots: int = 1,
    step_days: int = 30,
    model: CalibratedBoostedClassifier | None = None,
    keep_holdout: bool = False,
    reporter: Reporter | None = None,
) -> ChurnResult:
    """Train a churn model with the data known at ``as_of``; evaluate it on a later snapshot.

    Parameters
    ----------
    warehouse : Warehouse
        Customers and events.
    as_of : date-like
        When the model is trained (midnight UTC): the latest training snapshot is
        ``as_of - horizon_days``, so its labels end before ``as_of``.
    horizon_days : int, default 90
        Churned: no purchase in the ``horizon_days`` days from the snapshot.
    holdout_as_of : date-like, optional
        Held-out snapshot, on or after ``as_of``, whose label window ends by the last day with
        events; default: the latest such snapshot.
    snapshots, step_days : int
        Training snapshots, ``step_days`` apart, ending at ``as_of - horizon_days``; with more
        than one, the latest calibrates and the earlier ones train the trees.
    model : CalibratedBoostedClassifier, optional
        The estimator to fit (default settings otherwise).
    keep_holdout : bool
        Keep the held-out rows with their ``prediction`` in the result.
    reporter : Reporter, optional
        Told of each snapshot built.

    Raises
    ------
    DataError
        A label window not observed by the data, or no buyers at a snapshot.
    ConfigError
        A held-out snapshot before ``as_of``, or a bad horizon or snapshot count.
    """
    _check_horizon(horizon_days)
    if not (isinstance(snapshots, int) and snapshots >= 1):
        raise ConfigError(f"snapshots: expected a whole number >= 1, got {snapshots!r}")
    if not (isinstance(step_days, int) and step_days >= 1):
        raise ConfigError(f"step_days: expected a whole number >= 1, got {step_days!r}")
    reporter = reporter or NullReporter()
    trained = _utc(as_of, "as_of")
    horizon = timedelta(days=horizon_days)
    if holdout_as_of is None:
        held = max(_data_end(warehouse) - horizon, trained)
    else:
        held = _utc(holdout_as_of, "holdout_as_of")
        if held < trained:
            raise ConfigError(
                f"holdout_as_of: expected a snapshot on or after as_of {trained:%Y-%m-%d} "
                f"(held-out labels must be unseen in training), got {held:%Y-%m-%d}"
            )
    _check_observed(warehouse, held, horizon_days, "holdout_as_of")
    dates = [trained - horizon - timedelta(days=step_days * k) for k in range(snapshots)][::-1]
    reporter.start(len(dates) + 1, "churn snapshots")
    frames = []
    for day in [*dates, held]:
        frames.append(churn_frame(warehouse, day, horizon_days))
        reporter.advance()
    reporter.finish()
    *train_frames, test = frames
    cols = feature_columns(test)
    model = model or CalibratedBoostedClassifier()
    windows: dict[str, list[tuple[datetime, datetime]]] = {}
    if snapshots > 1:
        train = pd.concat(train_frames[:-1], ignore_index=True)
        cal = train_frames[-1]
        windows["train"] = [(d, d + horizon) for d in dates[:-1]]
        windows["calibration"] = [(dates[-1], dates[-1] + horizon)]
        log.info("training churn on %d rows, calibrating on %d", len(train), len(cal))
        model.fit(
            train[cols], train["churned"], X_calibration=cal[cols], y_calibration=cal["churned"]
        )
        rows = {"train": len(train), "calibration": len(cal)}
    else:
        # One snapshot: shuffle it, so the calibrator's fifth is not a block of customer ids
        # (ids often follow the order customers joined in).
        train = train_frames[0]
        order = np.random.default_rng(model.random_state).permutation(len(train))
        train = train.iloc[order].reset_index(drop=True)
        windows["train"] = [(dates[0], dates[0] + horizon)]
        log.info("training churn on %d rows of one snapshot", len(train))
        model.fit(train[cols], train["churned"])
        rows = {"train": model.n_train_, "calibration": model.n_calibration_}
    windows["holdout"] = [(held, held + horizon)]
    rows["holdout"] = len(test)
    p = model.predict_proba(test[cols])[:, 1]
    y = test["churned"].to_numpy()
    return ChurnResult(
        model=model,
        horizon_days=horizon_days,
        windows=windows,
        metrics=probability_metrics(y, p),
        calibration=calibration_table(y, p),
        importances=model.feature_importances(),
        rows=rows,
        holdout=test.assign(prediction=p) if keep_holdout else None,
    )


def bgnbd_probability_no_purchase(
    model: BetaGeoModel, t: float, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
) -> np.ndarray:
    """BG/NBD ``P(X(T, T + t) = 0 | x, t_x, T)``: no purchase in the next ``t`` periods.

    The ``x = 0`` case of the conditional distribution of purchases, from the BG/NBD
    likelihood (Fader, Hardie & Lee 2005, eq. 6). A dropout happens only just after a
    purchase, so with no purchase after ``T`` the customer is either dead at ``T`` or alive
    with no Poisson event; alive, the rate's posterior is Gamma(r + x, alpha + T), hence::

        P(X = 0 | x, t_x, T) = 1 - P(alive | x, t_x, T)
                                   * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x))

    with ``P(alive)`` of :meth:`BetaGeoModel.probability_alive` (1 when ``x = 0``).
    """
    alive = model.probability_alive(frequency, recency, T)  # checks the fit and the rows
    r, alpha = model.params_["r"], model.params_["alpha"]
    x, big_t = np.asarray(frequency, dtype=float), np.asarray(T, dtype=float)
    silent = ((alpha + big_t) / (alpha + big_t + t)) ** (r + x)
    return np.asarray(1 - alive * (1 - silent))


@dataclass
class BgnbdComparison:
    """BG/NBD's churn scores on the buyers of one snapshot, and their held-out quality.

    ``customers`` has ``customer_id``, ``probability_alive``, ``expected_purchases``,
    ``p_no_purchase`` (BG/NBD's churn probability) and ``churned`` (the observed label).
    """

    calibration_end: datetime
    horizon_days: int
    model: BetaGeoModel
    metrics: ProbabilityMetrics
    auc_probability_alive: float
    customers: pd.DataFrame


def compare_with_bgnbd(
    warehouse: Warehouse, calibration_end: DateLike, horizon_days: int = 90
) -> BgnbdComparison:
    """BG/NBD fitted on purchases up to ``calibration_end``, scored on the next ``horizon_days``.

    Time runs in weeks (``clv_summary``'s default), the horizon is ``horizon_days / 7``.

    The buyers and labels are those of :func:`churn_frame` at the day after
    ``calibration_end`` (pass ``holdout_as_of - 1 day`` to compare with :func:`train_churn`),
    so both models are judged on the same customers and outcomes.

    Parameters
    ----------
    warehouse : Warehouse
        Customers and purchase events.
    calibration_end : date-like
        Last day whose purchases BG/NBD sees (whole day included, as in
        :func:`~nextbest.models.clv_summary.fit_clv`).
    horizon_days : int, default 90
        Churned: no purchase in the ``horizon_days`` days after ``calibration_end``.

    Returns
    -------
    BgnbdComparison
        Metrics of ``p_no_purchase`` (:func:`bgnbd_probability_no_purchase`) against the
        labels, and the AUC of ``1 - probability_alive`` for reference.
    """
    _check_horizon(horizon_days)
    snapshot = _utc(calibration_end, "calibration_end") + _ONE_DAY
    _check_observed(warehouse, snapshot, horizon_days, "the day after calibration_end")
    labels = churn_frame(warehouse, snapshot, horizon_days)[["customer_id", "churned"]]
    log.info("BG/NBD on purchases before %s", snapshot.date())
    # BG/NBD alone: fit_clv would also fit Gamma-Gamma, which refuses repeat buyers whose
    # purchases carry no amount (CDNOW has some), and spend plays no part in churn.
    rows = clv_summary(warehouse_transactions(warehouse, until=snapshot), snapshot - _ONE_DAY)
    x, t_x, big_t = rows["frequency"], rows["recency"], rows["T"]
    bgnbd = BetaGeoModel().fit(x, t_x, big_t)
    t = horizon_days / 7
    scored = pd.DataFrame(
        {
            "customer_id": rows["customer_id"],
            "probability_alive": bgnbd.probability_alive(x, t_x, big_t),
            "expected_purchases": bgnbd.expected_purchases(t, x, t_x, big_t),
            "p_no_purchase": bgnbd_probability_no_purchase(bgnbd, t, x, t_x, big_t),
        }
    )
    scored = labels.merge(scored, on="customer_id", how="left", validate="one_to_one")
    missing = scored["p_no_purchase"].isna()
    if missing.any():
        raise DataError(
            f"{int(missing.sum())} buyers before {snapshot:%Y-%m-%d} have no BG/NBD row (first "
            f"{scored.customer_id[missing].iloc[0]!r}): expected their purchases to carry an "
            "amount and a customer; check the events table"
        )
    y = scored["churned"].to_numpy()
    metrics = probability_metrics(y, scored["p_no_purchase"].to_numpy())
    alive_auc = probability_metrics(y, 1 - scored["probability_alive"].to_numpy()).auc
    log.info("BG/NBD churn AUC %.4f on %d buyers", metrics.auc, metrics.n)
    return BgnbdComparison(snapshot - _ONE_DAY, horizon_days, bgnbd, metrics, alive_auc, scored)
