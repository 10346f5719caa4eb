"""Experiment analysis: per arm and metric, rates or means, lifts, tests, CUPED, sample ratio.

:func:`analyze_experiment` reads an experiment logged in ``decisions`` (every row with its
``experiment`` and ``arm``) and the events that followed, with Ibis on the warehouse.

- **Unit.** When every customer stays in one arm (hashed assignment, a one-off test such as
  Hillstrom) the unit is the customer: her outcomes from her first assignment to ``window_days``
  after her last, her pre-period before the first. When customers change arms between
  assignments (a holdout drawn afresh every day, as in the simulator) the unit is the
  assignment (customer and time): outcomes over ``window_days`` after it. Windows include
  their end (Hillstrom's outcomes are logged exactly 14 days after the mailing).
- **Metrics.** ``conversion``, ``visit``, ``open``, ``click``: 1 when the unit had a
  ``purchase``, ``visit``, ``email_open`` or ``email_click`` event in its window (a rate);
  ``revenue``: the sum of its purchase amounts (returns are not subtracted); ``margin``: the
  sum over its purchases of ``amount - quantity x products.cost``, or, where the product has
  no cost, ``quantity x offers.margin`` of the purchase's offer (a mean). A purchase with
  neither counts no margin, and the result says how many there were; without any known cost
  the margin cannot be measured and asking for it is an error.
- **Control** is the arm whose decisions show no offer
  (:func:`nextbest.features.control_arm`) unless named.
- **CUPED** adjusts each metric by its own value over the ``pre_days`` before the unit's
  first assignment (the count of events for a rate), ``theta`` pooled within arms, and
  reports the variance reduction achieved; with no variation before the assignment (no
  pre-period data) nothing is adjusted.
- **Sample ratio**: counts of units per arm against ``weights``; by default the control's
  logged propensity (its chance of being held out) and the rest shared equally by the other
  arms, or equal weights when the control's propensity is not logged.
- **Sequential**: the always-valid p-value and confidence sequence of the mixture SPRT
  (:func:`nextbest.measure.stats.sequential_test`) with one look per day of assignments
  (cumulative), tuned for relative lifts of ``mixture_lift`` of the control's mean.

The tests and intervals are in :mod:`nextbest.measure.stats`; p-values are corrected over the
arms with Holm's method, per metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import ibis
import numpy as np
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.decide.campaign import HYPOTHESIS_METRICS
from nextbest.errors import DataError
from nextbest.features.experiment_features import control_arm, experiments
from nextbest.measure import stats as st

__all__ = [
    "BINARY_METRICS",
    "METRICS",
    "ArmResult",
    "Comparison",
    "ExperimentAnalysis",
    "MetricResult",
    "analyze_experiment",
    "available_metrics",
    "check_experiment",
    "experiment_units",
    "jsonable",
    "margin_known",
]

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = HYPOTHESIS_METRICS
BINARY_METRICS: dict[str, str] = {  # a rate: the unit had at least one event of the type
    "conversion": "purchase",
    "visit": "visit",
    "open": "email_open",
    "click": "email_click",
}


@dataclass(frozen=True)
class ArmResult:
    """One arm's rate or mean with its interval (Wilson for rates, t for means)."""

    arm: str
    n: int
    estimate: st.Estimate
    cuped_mean: float | None = None


@dataclass(frozen=True)
class Comparison:
    """An arm against control: lift and test, Holm-adjusted p, CUPED, sequential."""

    arm: str
    control: str
    lift: st.Lift
    p_adjusted: float
    cuped: st.Lift | None = None
    cuped_p_adjusted: float | None = None
    sequential: st.Sequential | None = None


@dataclass(frozen=True)
class MetricResult:
    """One metric: every arm, every arm against control, CUPED's theta and variance reduction
    (None when not applied), and notes on what could not be done."""

    metric: str
    binary: bool
    arms: list[ArmResult]
    comparisons: list[Comparison]
    cuped_theta: float | None = None
    variance_reduction: float | None = None
    notes: tuple[str, ...] = ()

    def arm(self, name: str) -> ArmResult:
        for a in self.arms:
            if a.arm == name:
                return a
        raise DataError(f"no arm {name!r}; arms: {', '.join(a.arm for a in self.arms)}")

    def comparison(self, arm: str) -> Comparison:
        """``arm`` against the control."""
        for c in self.comparisons:
            if c.arm == arm:
                return c
        names = ", ".join(c.arm for c in self.comparisons)
        raise DataError(f"no comparison of arm {arm!r} with the control; compared: {names}")


@dataclass(frozen=True)
class ExperimentAnalysis:
    """What :func:`analyze_experiment` found; ``to_dict`` for JSON."""

    experiment: str
    control: str
    arms: list[str]  # the control first
    unit: str  # "customer" or "assignment"
    units: int
    window_days: float
    pre_days: float
    level: float
    sample_ratio: st.SampleRatio
    metrics: list[MetricResult]

    def metric(self, name: str) -> MetricResult:
        for m in self.metrics:
            if m.metric == name:
                return m
        raise DataError(
            f"metric {name!r} was not analysed; analysed: {', '.join(self.metric_names)}"
        )

    @property
    def metric_names(self) -> list[str]:
        return [m.metric for m in self.metrics]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sample_ratio"]["mismatch"] = self.sample_ratio.mismatch
        return jsonable(out)


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars as Python numbers, NaN and infinities as None."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def check_experiment(warehouse: Warehouse, name: str) -> None:
    """A clear error, listing the experiments logged, when ``name`` is not one of them."""
    known = experiments(warehouse)
    if name not in set(known.experiment):
        listed = ", ".join(
            f"{e} ({c:,} customers, {a} arms)"
            for e, c, a in zip(known.experiment, known.customers, known.arms, strict=True)
        )
        raise DataError(
            f"unknown experiment {name!r}; expected one of the experiments logged in "
            f"decisions: {listed or 'none (no decision carries an experiment and an arm)'}"
        )


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise DataError(f"unknown metric {bad[0]!r}; expected one of {', '.join(METRICS)}")
    if not metrics:
        raise DataError(f"no metric given; expected some of {', '.join(METRICS)}")
    return list(dict.fromkeys(metrics))


def available_metrics(warehouse: Warehouse) -> list[str]:
    """The metrics whose events exist in the warehouse (margin: purchases with a cost)."""
    ev = warehouse.table("events")
    types = set(ev.select("type").distinct().to_pandas().type)
    out = [m for m, t in BINARY_METRICS.items() if t in types]
    if "purchase" in types:
        out.insert(1, "revenue")
        if margin_known(warehouse):
            out.insert(2, "margin")
    return [m for m in METRICS if m in out]


def _purchases(warehouse: Warehouse) -> ibis.Table:
    """Purchase events with their margin (null where no cost is known)."""
    ev = warehouse.table("events")
    ev = ev.filter(ev.type == "purchase", ev.customer_id.notnull())
    prod = warehouse.table("products").select(_pid="product_id", _cost="cost")
    offers = warehouse.table("offers").select(_oid="offer_id", _unit_margin="margin")
    j = ev.left_join(prod, ev.product_id == prod._pid).left_join(offers, ev.offer_id == offers._oid)
    qty = j.quantity.fill_null(1).cast("float64")
    margin = ibis.ifelse(
        j._cost.notnull(),
        j.amount.fill_null(0) - qty * j._cost,
        qty * j._unit_margin,
    )
    return j.select(j.customer_id, j.ts, j.type, j.amount, _margin=margin)


def margin_known(warehouse: Warehouse) -> bool:
    p = _purchases(warehouse)
    return bool(p.filter(p._margin.notnull()).count().execute() > 0)


def experiment_units(
    warehouse: Warehouse,
    name: str,
    metrics: Sequence[str],
    *,
    window_days: float = 14,
    pre_days: float = 28,
    unit: str = "auto",
) -> tuple[pd.DataFrame, str]:
    """One row per unit: ``customer_id``, ``ts`` (first assignment), ``arm``, and per metric
    its value (column named after it) and its pre-period value (``pre_<metric>``); with
    ``margin``, ``_unknown_margin``: purchases whose margin is unknown. Returns the frame
    and the unit used (``customer`` or ``assignment``)."""
    metrics = _check_metrics(metrics)
    dec = warehouse.table("decisions")
    dec = dec.filter(dec.experiment == name, dec.arm.notnull())
    if unit == "auto":
        per = dec.group_by("customer_id").aggregate(k=dec.arm.nunique())
        unit = "customer" if int(per.k.max().execute() or 1) <= 1 else "assignment"
    if unit == "customer":
        units = dec.group_by("customer_id").aggregate(
            ts=dec.ts.min(), end=dec.ts.max(), arm=dec.arm.min()
        )
    elif unit == "assignment":
        units = dec.group_by(["customer_id", "ts"]).aggregate(end=dec.ts.max(), arm=dec.arm.min())
    else:
        raise DataError(f"unit must be auto, customer or assignment, got {unit!r}")
    types = sorted({BINARY_METRICS[m] for m in metrics if m in BINARY_METRICS} - {"purchase"})
    ev = warehouse.table("events")
    other = ev.filter(ev.type.isin(types or ["-"]), ev.customer_id.notnull())
    other = other.select(other.customer_id, other.ts, other.type, other.amount)
    other = other.mutate(_margin=ibis.null().cast("float64"))
    events = other.union(_purchases(warehouse)) if types else _purchases(warehouse)
    events = events.select(
        _cid="customer_id", _ts="ts", _type="type", _amount="amount", _m="_margin"
    )
    window = ibis.interval(seconds=round(window_days * 86_400))
    pre = ibis.interval(seconds=round(pre_days * 86_400))
    j = units.left_join(
        events,
        (units.customer_id == events._cid)
        & (events._ts >= units.ts - pre)
        & (events._ts <= units.end + window),
    )
    post = j._ts >= j.ts
    before = j._ts < j.ts
    aggs: dict[str, Any] = {}
    for m in metrics:
        kind = BINARY_METRICS.get(m, "purchase")
        is_kind = j._type == kind
        if m in BINARY_METRICS:
            aggs[m] = ibis.ifelse(is_kind & post, 1, 0).max()
            aggs[f"pre_{m}"] = ibis.ifelse(is_kind & before, 1, 0).sum()
        else:
            value = j._amount if m == "revenue" else j._m
            aggs[m] = ibis.ifelse(is_kind & post, value.fill_null(0), 0.0).sum()
            aggs[f"pre_{m}"] = ibis.ifelse(is_kind & before, value.fill_null(0), 0.0).sum()
            if m == "margin":
                aggs["_unknown_margin"] = ibis.ifelse(is_kind & post & j._m.isnull(), 1, 0).sum()
    frame = j.group_by(["customer_id", "ts", "arm"]).aggregate(**aggs).to_pandas()
    if frame.empty:
        raise DataError(f"no assignments in experiment {name!r}")
    for col in frame.columns[3:]:
        frame[col] = pd.to_numeric(frame[col]).fillna(0).astype(np.float64)
    return frame.sort_values(["ts", "customer_id"], ignore_index=True), unit


def _default_weights(warehouse: Warehouse, name: str, arms: list[str], control: str) -> dict:
    dec = warehouse.table("decisions")
    dec = dec.filter(dec.experiment == name, dec.arm == control, dec.propensity.notnull())
    values = dec.select("propensity").distinct().limit(2).to_pandas().propensity
    others = [a for a in arms if a != control]
    if len(values) == 1 and 0 < float(values.iloc[0]) < 1 and others:
        p = float(values.iloc[0])
        return {control: p, **{a: (1 - p) / len(others) for a in others}}
    return {a: 1.0 for a in arms}


def analyze_experiment(
    warehouse: Warehouse,
    name: str,
    metrics: Sequence[str] | None = None,
    *,
    window_days: float = 14,
    pre_days: float = 28,
    control: str | None = None,
    weights: Mapping[str, float] | None = None,
    cuped: bool = True,
    sequential: bool = False,
    mixture_lift: float = 0.1,
    level: float = 0.95,
    unit: str = "auto",
) -> ExperimentAnalysis:
    """Analyse experiment ``name`` of the decision log (see the module docstring).

    Parameters
    ----------
    warehouse, name
        The warehouse and the experiment, as logged in ``decisions``.
    metrics
        Some of :data:`METRICS`; by default every metric whose events exist in the warehouse.
    window_days, pre_days
        Days after the (last) assignment whose outcomes count; days before the (first)
        assignment that CUPED adjusts with.
    control
        The control arm (default: the arm whose decisions show no offer).
    weights
        Arm -> weight for the sample-ratio test (default: see the module docstring).
    cuped, sequential
        Adjust with the pre-period; add the always-valid p-value and confidence sequence.
    mixture_lift
        The sequential test's mixing scale, relative to the control's mean.
    level
        Confidence level of the intervals.
    unit
        ``auto``, ``customer`` or ``assignment`` (see the module docstring).
    """
    check_experiment(warehouse, name)
    if metrics is not None:
        metrics = _check_metrics(metrics)
        if "margin" in metrics and not margin_known(warehouse):
            raise DataError(
                "metric 'margin' needs the cost of what was bought: products.cost or "
                "offers.margin, and no purchase has either; load them, or use revenue"
            )
    else:
        metrics = available_metrics(warehouse)
    frame, used = experiment_units(
        warehouse, name, metrics, window_days=window_days, pre_days=pre_days, unit=unit
    )
    arms = sorted(frame.arm.unique())
    if control is None:
        control = control_arm(warehouse, name)
    if control not in arms:
        raise DataError(f"control arm {control!r} is not an arm of {name!r}; arms: {arms}")
    arms = [control, *[a for a in arms if a != control]]
    counts = frame.arm.value_counts()
    shares = dict(weights) if weights else _default_weights(warehouse, name, arms, control)
    srm = st.sample_ratio_test({a: int(counts[a]) for a in arms}, shares)
    results = [
        _metric(frame, m, arms, level, cuped=cuped, sequential=sequential, mix=mixture_lift)
        for m in metrics
    ]
    log.info("analysed experiment %s: %d %ss in arms %s", name, len(frame), used, arms)
    return ExperimentAnalysis(
        name, control, arms, used, len(frame), window_days, pre_days, level, srm, results
    )


def _samples(y: np.ndarray, arm: np.ndarray, arms: list[str]) -> dict[str, st.Sample]:
    return {a: st.Sample.of(y[arm == a]) for a in arms}


def _metric(
    frame: pd.DataFrame,
    metric: str,
    arms: list[str],
    level: float,
    *,
    cuped: bool,
    sequential: bool,
    mix: float,
) -> MetricResult:
    binary = metric in BINARY_METRICS
    y = frame[metric].to_numpy()
    arm = frame.arm.to_numpy()
    control = arms[0]
    base = _samples(y, arm, arms)
    notes: list[str] = []
    adjusted: dict[str, st.Sample] | None = None
    theta = reduction = None
    if cuped:
        c = st.cuped(y, frame[f"pre_{metric}"].to_numpy(), arm)
        if c.variance_reduction > 0:
            adjusted, theta, reduction = (
                _samples(c.adjusted, arm, arms),
                c.theta,
                c.variance_reduction,
            )
        else:
            notes.append(
                f"CUPED not applied: {metric} before the assignment does not vary (no pre-period "
                "data) or does not predict it"
            )
    if metric == "margin" and (unknown := int(frame["_unknown_margin"].sum())):
        notes.append(f"{unknown:,} purchase(s) have no known cost and count no margin")
    estimates = [
        ArmResult(
            a,
            base[a].n,
            st.proportion_interval(base[a].mean * base[a].n, base[a].n, level)
            if binary
            else st.mean_interval(base[a], level),
            adjusted[a].mean if adjusted else None,
        )
        for a in arms
    ]
    lifts = [st.compare(base[a], base[control], binary=binary, level=level) for a in arms[1:]]
    holm = st.holm([x.test.p_value for x in lifts])
    adj_lifts = (
        [st.compare(adjusted[a], adjusted[control], binary=False, level=level) for a in arms[1:]]
        if adjusted
        else []
    )
    adj_holm = st.holm([x.test.p_value for x in adj_lifts]) if adj_lifts else []
    comparisons = [
        Comparison(
            a,
            control,
            lifts[i],
            holm[i],
            adj_lifts[i] if adj_lifts else None,
            adj_holm[i] if adj_lifts else None,
            _sequential(frame, y, a, control, mix, level) if sequential else None,
        )
        for i, a in enumerate(arms[1:])
    ]
    return MetricResult(metric, binary, estimates, comparisons, theta, reduction, tuple(notes))


def _sequential(
    frame: pd.DataFrame, y: np.ndarray, arm: str, control: str, mix: float, level: float
) -> st.Sequential:
    """One look per day of (first) assignment, cumulative."""
    day = frame.ts.dt.floor("D").to_numpy()
    days = np.unique(day)
    stats: dict[str, np.ndarray] = {}
    for a in (arm, control):
        mask = frame.arm.to_numpy() == a
        idx = np.searchsorted(days, day[mask])
        v = y[mask]
        n = np.cumsum(np.bincount(idx, minlength=len(days)))
        s = np.cumsum(np.bincount(idx, v, minlength=len(days)))
        s2 = np.cumsum(np.bincount(idx, v * v, minlength=len(days)))
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = s / n
            var = (s2 - n * mean * mean) / (n - 1)
        stats[a] = np.vstack([n, mean, var])
    (nt, mt, vt), (nc, mc, vc) = stats[arm], stats[control]
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = vt / nt + vc / nc
    # the mixing scale: a relative lift of ``mix`` on the control's mean, or ``mix`` standard
    # deviations (of both arms) when the control's mean is 0
    sd = math.sqrt(max((vt[-1] * (nt[-1] - 1) + vc[-1] * (nc[-1] - 1)) / (nt[-1] + nc[-1] - 2), 0))
    tau = float(mix * abs(mc[-1]) if mc[-1] else mix * sd)
    return st.sequential_test(mt - mc, variance, tau=tau or 1.0, level=level)
