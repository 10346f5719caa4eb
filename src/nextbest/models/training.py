"""Train a model of one kind on the warehouse and keep it in the model store, with metrics.

One function per kind turns the warehouse into a fitted model and a manifest; :func:`train`
dispatches by name. The command line (``nextbest train``) and the demo call :func:`train`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError, DataError
from nextbest.features.experiment_features import control_arm, experiment_frame, experiments
from nextbest.models.affinity import AffinityModel, evaluate_affinity, interactions
from nextbest.models.churn import train_churn
from nextbest.models.classifier import CalibratedBoostedClassifier
from nextbest.models.clv_summary import fit_clv
from nextbest.models.propensity import train_propensity
from nextbest.models.store import Manifest, ModelStore, data_hash
from nextbest.models.uplift import DRLearner, TLearner, XLearner
from nextbest.models.uplift_metrics import (
    auuc,
    qini_coefficient,
    qini_curve,
    random_qini,
    uplift_at_k,
)
from nextbest.progress import NullReporter, Reporter

__all__ = ["KINDS", "TrainOptions", "TrainReport", "train"]


@dataclass(frozen=True)
class TrainOptions:
    """Settings of ``nextbest train`` (each kind reads those that concern it)."""

    response: str = "click"
    holdout_days: int = 7
    calibration_days: int = 3
    max_train_days: int | None = 28
    # propensity rows a day, at most (a sample beyond: 3M rows of 60 features fit DuckDB's
    # default 4 GB; a 5M-member shop logs 15M decisions a day)
    max_rows_per_day: int | None = 3_000_000
    calibration_end: datetime | None = None
    horizon_weeks: int = 52
    churn_horizon_days: int = 90
    affinity_level: str = "brand"
    experiment: str | None = None
    uplift_outcome: str = "purchase"
    uplift_window_days: float = 14.0
    uplift_learner: str = "x"
    churn_snapshots: int = 3
    random_state: int = 0
    n_jobs: int | None = None


def _propensity(
    warehouse: Warehouse, store: ModelStore, options: TrainOptions, reporter: Reporter
) -> Manifest:
    result = train_propensity(
        warehouse,
        response=options.response,
        holdout_days=options.holdout_days,
        calibration_days=options.calibration_days,
        max_train_days=options.max_train_days,
        max_rows_per_day=options.max_rows_per_day,
        model=CalibratedBoostedClassifier(random_state=options.random_state, n_jobs=options.n_jobs),
        reporter=reporter,
    )
    model = result.model
    params = {
        "response": result.response,
        "rows": result.rows,
        "trees": model.best_iteration_,
        "top_features": result.importances.head(10).round(4).to_dict(),
        "calibration_table": result.calibration.round(6).to_dict(orient="list"),
    }
    return store.save(
        "propensity",
        model,
        window=result.window(),
        features=model.features_,
        metrics=result.metrics.to_dict(),
        data_hash=result.data_hash,
        params=params,
    )


def _last_purchase_day(warehouse: Warehouse) -> datetime:
    ev = warehouse.table("events")
    last = ev.filter(ev.type == "purchase", ev.customer_id.notnull()).ts.max().execute()
    if last is None or pd.isna(last):
        raise DataError(
            "the warehouse has no purchase events with a customer_id; lifetime value needs "
            "them: ingest purchases first"
        )
    day = pd.Timestamp(last).floor("D").to_pydatetime()
    return day if day.tzinfo else day.replace(tzinfo=UTC)


def _clv(
    warehouse: Warehouse, store: ModelStore, options: TrainOptions, reporter: Reporter
) -> Manifest:
    end = options.calibration_end or _last_purchase_day(warehouse)
    reporter.start(1, "Lifetime value (BG/NBD, Gamma-Gamma)")
    result = fit_clv(warehouse, end, options.horizon_weeks)
    reporter.advance(1)
    reporter.finish()
    bg, gg = result.bgnbd, result.gamma_gamma
    metrics: dict[str, float] = {f"bgnbd_{k}": v for k, v in bg.params_.items()}
    metrics.update({f"gamma_gamma_{k}": v for k, v in gg.params_.items()})
    metrics["bgnbd_log_likelihood"] = bg.log_likelihood_
    metrics["customers"] = len(result.customers)
    metrics["mean_clv"] = float(result.customers["clv"].mean())
    summary_cols = ["frequency", "recency", "T", "monetary_value"]
    return store.save(
        "clv",
        {"bgnbd": bg, "gamma_gamma": gg},
        window={"calibration_end": f"{end:%Y-%m-%d}"},
        features=dict.fromkeys(summary_cols, "numeric"),
        metrics=metrics,
        data_hash=data_hash(result.customers[["customer_id", *summary_cols]]),
        params={
            "horizon_weeks": options.horizon_weeks,
            "standard_errors": {
                "bgnbd": bg.standard_errors_,
                "gamma_gamma": gg.standard_errors_,
            },
        },
    )


@dataclass
class TrainReport:
    """The models made, and the kinds left out with the reason (``all`` skips what it cannot)."""

    made: list[Manifest]
    skipped: dict[str, str]


def _churn(
    warehouse: Warehouse, store: ModelStore, options: TrainOptions, reporter: Reporter
) -> Manifest:
    ev = warehouse.table("events")
    last = ev.ts.max().execute()
    if last is None or pd.isna(last):
        raise DataError("the warehouse has no events; churn needs purchases over time")
    horizon = options.churn_horizon_days
    # the held-out snapshot is the latest whose label window is observed; training ends
    # where that window begins, so no training label overlaps the held-out one
    data_end = pd.Timestamp(last).floor("D").to_pydatetime() + timedelta(days=1)
    as_of = data_end - timedelta(days=horizon)
    result = train_churn(
        warehouse,
        as_of,
        horizon_days=horizon,
        snapshots=options.churn_snapshots,
        model=CalibratedBoostedClassifier(random_state=options.random_state, n_jobs=options.n_jobs),
        reporter=reporter,
    )
    return store.save(
        "churn",
        result.model,
        window={name: "; ".join(spans) for name, spans in result.window().items()},
        features=result.model.features_,
        metrics=result.metrics.to_dict(),
        data_hash=data_hash(pd.DataFrame([result.rows])),
        params={
            "horizon_days": horizon,
            "rows": result.rows,
            "trees": result.model.best_iteration_,
            "top_features": result.importances.head(10).round(4).to_dict(),
        },
    )


def _affinity(
    warehouse: Warehouse, store: ModelStore, options: TrainOptions, reporter: Reporter
) -> Manifest:
    ev = warehouse.table("events")
    last = ev.ts.max().execute()
    if last is None or pd.isna(last):
        raise DataError("the warehouse has no events; affinity needs interactions")
    end = pd.Timestamp(last).floor("D").to_pydatetime() + timedelta(days=1)
    cut = end - timedelta(days=options.holdout_days)
    level = options.affinity_level
    reporter.start(3, f"Affinity ({level}, ALS)")
    train_rows = interactions(warehouse, level, end=cut)
    test_rows = interactions(warehouse, level, start=cut, end=end)
    reporter.advance(1)
    model = AffinityModel(random_state=options.random_state).fit(train_rows)
    reporter.advance(1)
    quality = evaluate_affinity(model, train_rows, test_rows, k=10)
    # the stored model is refitted on every day, the held-out ones included
    model = AffinityModel(random_state=options.random_state).fit(
        pd.concat([train_rows, test_rows], ignore_index=True)
    )
    reporter.advance(1)
    reporter.finish()
    metrics = {k: float(v) for k, v in asdict(quality).items()}
    return store.save(
        f"affinity_{level}",
        model,
        window={
            "train": f"..{cut - timedelta(days=1):%Y-%m-%d}",
            "holdout": f"{cut:%Y-%m-%d}..{end - timedelta(days=1):%Y-%m-%d}",
        },
        features={"customer_id": "categorical", "item": "categorical"},
        metrics=metrics,
        data_hash=data_hash(train_rows),
        params={"level": level, "items": len(model.items_), "customers": len(model.customers_)},
    )


def _experiment(warehouse: Warehouse, wanted: str | None) -> tuple[str, str]:
    """The experiment to learn uplift from (default: the largest with a control) and its control."""
    names = [wanted] if wanted else list(experiments(warehouse).experiment)
    reasons = []
    for name in names:
        try:
            return name, control_arm(warehouse, name)
        except DataError as exc:
            if wanted:
                raise
            reasons.append(str(exc))
    raise DataError(
        "no experiment with a control arm (decisions with no offer) to learn uplift from"
        + (
            f": {'; '.join(reasons)}"
            if reasons
            else "; log one, e.g. 'nextbest simulate --holdout-share 0.2' or the Hillstrom test"
        )
    )


def _uplift(
    warehouse: Warehouse, store: ModelStore, options: TrainOptions, reporter: Reporter
) -> Manifest:
    name, control = _experiment(warehouse, options.experiment)
    start = None
    if options.max_train_days is not None:
        dec = warehouse.table("decisions")
        last = dec.filter(dec.experiment == name).ts.max().execute()
        start = pd.Timestamp(last).floor("D").to_pydatetime() - timedelta(
            days=options.max_train_days - 1
        )
    frame = experiment_frame(
        warehouse,
        name,
        outcome=options.uplift_outcome,
        window_days=options.uplift_window_days,
        start=start,
        reporter=reporter,
    )
    cols = [c for c in frame.columns if c not in ("customer_id", "ts", "day", "arm", "y")]
    # a seeded split by customer: 30% of customers held out for the Qini
    held = (pd.util.hash_pandas_object(frame.customer_id, index=False) % 10 >= 7).to_numpy()
    train_rows, test = frame[~held], frame[held]
    if options.uplift_learner not in _LEARNERS:
        raise ConfigError(
            f"uplift learner must be one of {', '.join(_LEARNERS)}, got {options.uplift_learner!r}"
        )
    learner = _LEARNERS[options.uplift_learner](control=control, random_state=options.random_state)
    reporter.start(1, f"Uplift ({options.uplift_learner}-learner) on {name}")
    learner.fit(train_rows[cols], train_rows.arm.to_numpy(), train_rows.y.to_numpy())
    reporter.advance(1)
    reporter.finish()
    effect = learner.predict_effect(test[cols])
    metrics: dict[str, float] = {"rows": len(frame), "held_out_rows": len(test)}
    curves: dict[str, dict[str, list[float]]] = {}
    for j, arm in enumerate(learner.treatments_):
        rows = test.arm.isin([control, arm]).to_numpy()
        y, t = test.y.to_numpy()[rows], (test.arm.to_numpy()[rows] == arm).astype(int)
        score = effect[rows, j]
        metrics[f"{arm}: qini"] = qini_coefficient(y, t, score)
        x, q = qini_curve(y, t, score)
        keep = np.unique(np.linspace(0, len(x) - 1, min(len(x), _CURVE_POINTS)).round().astype(int))
        curves[str(arm)] = {"x": x[keep].tolist(), "qini": q[keep].tolist()}
        metrics[f"{arm}: random qini p95"] = float(
            np.quantile(random_qini(y, t, 200, random_state=options.random_state), 0.95)
        )
        metrics[f"{arm}: auuc"] = auuc(y, t, score)
        metrics[f"{arm}: uplift at 30%"] = uplift_at_k(y, t, score, 0.3)
        metrics[f"{arm}: difference in means"] = float(y[t == 1].mean() - y[t == 0].mean())
        metrics[f"{arm}: mean predicted effect"] = float(score.mean())
    kinds = {
        c: "categorical" if not pd.api.types.is_numeric_dtype(frame[c]) else "numeric" for c in cols
    }
    first, last_day = frame.ts.min(), frame.ts.max()
    return store.save(
        "uplift",
        learner,
        window={
            "assignments": f"{first:%Y-%m-%d}..{last_day:%Y-%m-%d}",
            "held_out": "30% of customers",
        },
        features=kinds,
        metrics=metrics,
        data_hash=data_hash(frame),
        params={
            "experiment": name,
            "control": control,
            "treatments": [str(a) for a in learner.treatments_],
            "outcome": options.uplift_outcome,
            "window_days": options.uplift_window_days,
            "learner": options.uplift_learner,
            "qini_curves": curves,  # held out, thinned: what the dashboard draws
        },
    )


_CURVE_POINTS = 500  # points kept of each Qini curve


Trainer = Callable[[Warehouse, ModelStore, TrainOptions, Reporter], Manifest]
KINDS: dict[str, Trainer] = {
    "propensity": _propensity,
    "affinity": _affinity,
    "churn": _churn,
    "clv": _clv,
    "uplift": _uplift,
}
_LEARNERS = {"t": TLearner, "x": XLearner, "dr": DRLearner}


def train(
    warehouse: Warehouse,
    store: ModelStore,
    kind: str,
    options: TrainOptions | None = None,
    *,
    reporter: Reporter | None = None,
) -> TrainReport:
    """Train ``kind`` (or ``all``: every kind the data allows) and store each model.

    With ``all``, a kind the data cannot support is skipped with its reason in the report;
    a single kind that cannot be trained raises its error.
    """
    options = options or TrainOptions()
    reporter = reporter or NullReporter()
    if kind != "all" and kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}, all")
    kinds = list(KINDS) if kind == "all" else [kind]
    made: list[Manifest] = []
    skipped: dict[str, str] = {}
    for name in kinds:
        try:
            made.append(KINDS[name](warehouse, store, options, reporter))
        except DataError as exc:
            if kind != "all":
                raise
            skipped[name] = str(exc)
    return TrainReport(made, skipped)
