"""Response propensity per customer and offer, trained on logged decisions with a time split.

The days with logged decisions, up to the day of the last event (later ones have no outcome
yet), are split in time: the earliest train the trees, the next
``calibration_days`` fit the calibrator, and the last ``holdout_days`` are kept for the
metrics (AUC, log loss, Brier score, calibration error), which are therefore measured on days
the model never saw, as it will be used. Features are those of
:func:`nextbest.features.decision_features`; the identifiers, the day and the label are not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.errors import DataError
from nextbest.features.decision_features import decision_days, decision_features
from nextbest.models.classifier import CalibratedBoostedClassifier
from nextbest.models.evaluation import ProbabilityMetrics, calibration_table, probability_metrics
from nextbest.models.store import data_hash
from nextbest.progress import NullReporter, Reporter

__all__ = ["ID_COLUMNS", "NOT_FEATURES", "PropensityResult", "feature_columns", "train_propensity"]

log = logging.getLogger(__name__)

ID_COLUMNS = ("decision_id", "customer_id", "offer_id", "day", "response")
NOT_FEATURES = ("offer_brand", "top_brand")
"""Brand names are left out: a brand's identity does not carry over to a new designer, and as
a 150-level category it overfits (2.7 AUC points lost on held-out days in the simulator);
brands enter through their popularity and the customer's affinity for them instead."""


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The model's inputs: a decision-features frame less ids, day, label and brand names."""
    return [c for c in frame.columns if c not in ID_COLUMNS + NOT_FEATURES]


@dataclass
class PropensityResult:
    """A trained propensity model with its split and its held-out quality."""

    model: CalibratedBoostedClassifier
    response: str
    train_window: tuple[datetime, datetime]
    calibration_window: tuple[datetime, datetime]
    holdout_window: tuple[datetime, datetime]
    metrics: ProbabilityMetrics
    calibration: pd.DataFrame
    importances: pd.Series
    rows: dict[str, int] = field(default_factory=dict)
    data_hash: str = ""
    holdout: pd.DataFrame | None = None

    def window(self) -> dict[str, str]:
        fmt = "%Y-%m-%d"
        return {
            name: f"{a:{fmt}}..{b - timedelta(days=1):{fmt}}"
            for name, (a, b) in (
                ("train", self.train_window),
                ("calibration", self.calibration_window),
                ("holdout", self.holdout_window),
            )
        }


def train_propensity(
    warehouse: Warehouse,
    *,
    response: str = "click",
    start: datetime | None = None,
    end: datetime | None = None,
    holdout_days: int = 7,
    calibration_days: int = 3,
    max_train_days: int | None = None,
    max_rows_per_day: int | None = None,
    model: CalibratedBoostedClassifier | None = None,
    keep_holdout: bool = False,
    reporter: Reporter | None = None,
) -> PropensityResult:
    """Train and evaluate a propensity model on the decisions logged in the warehouse.

    ``start`` and ``end`` bound the days used (default: all days with decisions);
    ``max_train_days`` keeps only the latest training days; ``max_rows_per_day`` samples a
    day with more decisions down to about that many (:func:`decision_features`).
    ``keep_holdout`` keeps the held-out rows, their features and their predictions
    (``prediction``) in the result.
    """
    reporter = reporter or NullReporter()
    # a day decided but not yet lived (tomorrow's e-mails, logged by 'nextbest decide') has no
    # outcome to learn from: only days up to the last event count
    last = warehouse.table("events").ts.max().execute()
    lived = None if last is None else pd.Timestamp(last).floor("D").to_pydatetime()
    days = [
        d
        for d in decision_days(warehouse)
        if (start is None or d >= start)
        and (end is None or d < end)
        and (lived is None or d <= lived)
    ]
    need = holdout_days + calibration_days + 1
    if holdout_days < 1 or calibration_days < 1 or len(days) < need:
        raise DataError(
            f"a time split needs at least {need} days with decisions (1 to train, "
            f"{calibration_days} to calibrate, {holdout_days} held out), found {len(days)}; "
            "load more days or lower --holdout-days"
        )
    one = timedelta(days=1)
    test_start = days[-holdout_days]
    cal_start = days[-holdout_days - calibration_days]
    train_days = days[: -holdout_days - calibration_days]
    if max_train_days is not None:
        train_days = train_days[-max_train_days:]
    windows = {
        "train": (train_days[0], cal_start),
        "calibration": (cal_start, test_start),
        "holdout": (test_start, days[-1] + one),
    }
    frames = {
        name: decision_features(
            warehouse, a, b, response=response, max_rows_per_day=max_rows_per_day, reporter=reporter
        )
        for name, (a, b) in windows.items()
    }
    cols = feature_columns(frames["train"])
    model = model or CalibratedBoostedClassifier()
    log.info("training propensity on %d rows, %d features", len(frames["train"]), len(cols))
    model.fit(
        frames["train"][cols],
        frames["train"]["response"],
        X_calibration=frames["calibration"][cols],
        y_calibration=frames["calibration"]["response"],
    )
    test = frames["holdout"]
    p = model.predict_proba(test[cols])[:, 1]
    y = test["response"].to_numpy()
    holdout = None
    if keep_holdout:
        holdout = test.assign(prediction=p)
    return PropensityResult(
        model=model,
        response=response,
        train_window=windows["train"],
        calibration_window=windows["calibration"],
        holdout_window=windows["holdout"],
        metrics=probability_metrics(y, p),
        calibration=calibration_table(y, p),
        importances=model.feature_importances(),
        rows={name: len(frame) for name, frame in frames.items()},
        data_hash=data_hash(pd.concat(frames.values(), ignore_index=True)),
        holdout=holdout,
    )
