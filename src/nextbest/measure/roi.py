"""Campaign ROI against its hypothesis: what the campaign earned over its holdout, in money.

:func:`campaign_roi` reads a campaign file's ``[campaign.experiment]`` and
``[campaign.hypothesis]`` and measures, over the experiment's units (see
:mod:`nextbest.measure.experiment`), every treated arm pooled against the control
(``holdout``, or the arm that showed no offer):

- incremental revenue and margin per treated unit (difference of means, Welch's interval),
  and scaled to the treated population (times the treated units);
- cost, from the decision log: the offers' ``unit_cost`` for every treated decision that
  showed an offer, plus the campaign file's ``redemption_cost`` of an offer for every purchase
  of it by a customer within the window after a decision that showed it to her;
- ROI = (incremental margin - cost) / cost, its interval from the margin's (the cost is
  counted, not estimated);
- the hypothesis metric's lift (absolute and relative), the smallest relative effect the
  experiment could detect at the hypothesis' alpha and power, and the sample ratio against
  the configured arm weights.

Intervals are at ``1 - alpha`` of the hypothesis (95% without one). The verdict compares the
measured lift's interval with the expected lift (relative when ``expected_lift`` is given,
else absolute): **met** when the interval lies above zero and reaches the expected lift;
**not met** when it lies wholly below the expected lift (the data rule it out);
**inconclusive** otherwise (it holds both zero and the expected lift). The expected value gets
the same verdict against the interval of the total incremental margin.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ibis
import numpy as np

from nextbest.data.warehouse import Warehouse
from nextbest.decide.campaign import CampaignFile, Hypothesis, load_campaign
from nextbest.errors import ConfigError, DataError
from nextbest.features.experiment_features import control_arm
from nextbest.measure import stats as st
from nextbest.measure.experiment import (
    BINARY_METRICS,
    check_experiment,
    experiment_units,
    jsonable,
    margin_known,
)

__all__ = ["CampaignRoi", "campaign_roi", "verdict"]


@dataclass(frozen=True)
class CampaignRoi:
    campaign: str
    experiment: str
    control: str
    treated_arms: list[str]
    unit: str
    n_treated: int
    n_control: int
    window_days: float
    level: float
    incremental_revenue: st.Estimate  # per treated unit
    incremental_margin: st.Estimate  # per treated unit
    total_incremental_revenue: st.Estimate
    total_incremental_margin: st.Estimate
    sends: int
    send_cost: float
    redemptions: int
    redemption_cost: float
    roi: st.Estimate | None
    sample_ratio: st.SampleRatio
    hypothesis: Hypothesis | None
    lift: st.Lift | None  # of the hypothesis metric
    detectable_effect: float | None  # relative, at the hypothesis' alpha and power
    verdict: str  # met, not met, inconclusive, or "no hypothesis"
    value_verdict: str | None
    notes: tuple[str, ...] = field(default=())

    @property
    def cost(self) -> float:
        return self.send_cost + self.redemption_cost

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hypothesis"] = self.hypothesis.model_dump() if self.hypothesis else None
        out["cost"] = self.cost
        out["sample_ratio"]["mismatch"] = self.sample_ratio.mismatch
        return dict(jsonable(out))


def verdict(estimate: st.Estimate, expected: float) -> str:
    """``met``, ``not met`` or ``inconclusive`` for a positive expected effect."""
    if estimate.high < expected:
        return "not met"
    if estimate.low > 0:
        return "met"
    return "inconclusive"


def _scaled(e: st.Estimate, k: int) -> st.Estimate:
    return st.Estimate(e.value * k, e.se * k, e.low * k, e.high * k, e.level)


def _costs(
    warehouse: Warehouse, spec: CampaignFile, name: str, treated: list[str], window_days: float
) -> tuple[int, float, int, float]:
    dec = warehouse.table("decisions")
    dec = dec.filter(dec.experiment == name, dec.arm.isin(treated), dec.offer_id.notnull())
    offers = warehouse.table("offers").select(_oid="offer_id", _unit_cost="unit_cost")
    sent = dec.left_join(offers, dec.offer_id == offers._oid)
    # counts per offer, costed here: the same sum in the same order on every run
    per = sent.group_by(["offer_id", "_unit_cost"]).aggregate(n=sent.count()).to_pandas()
    per = per.sort_values("offer_id")
    sends = int(per.n.sum())
    send_cost = math.fsum(per.n * per._unit_cost.fillna(0.0))
    paid = {o: s.redemption_cost for o, s in spec.offers.items() if s.redemption_cost > 0}
    if not paid:
        return sends, send_cost, 0, 0.0
    shown = dec.filter(dec.offer_id.isin(list(paid))).select("customer_id", "offer_id", _dts="ts")
    ev = warehouse.table("events")
    ev = ev.filter(ev.type == "purchase", ev.offer_id.isin(list(paid)))
    window = ibis.interval(seconds=round(window_days * 86_400))
    j = ev.join(
        shown,
        (ev.customer_id == shown.customer_id)
        & (ev.offer_id == shown.offer_id)
        & (ev.ts >= shown._dts)
        & (ev.ts <= shown._dts + window),
    )
    bought = j.select(j.event_id, j.offer_id).distinct().to_pandas()
    per_offer = bought.offer_id.value_counts()
    redemption = float(sum(paid[o] * int(k) for o, k in per_offer.items()))
    return sends, send_cost, len(bought), redemption


def campaign_roi(
    warehouse: Warehouse,
    campaign: CampaignFile | Path,
    *,
    window_days: float | None = None,
) -> CampaignRoi:
    """Measure a campaign against its holdout and its hypothesis (see the module docstring)."""
    spec = campaign if isinstance(campaign, CampaignFile) else load_campaign(Path(campaign))
    c = spec.campaign
    if c.experiment is None:
        raise ConfigError(
            f"campaign {c.name!r} has no [campaign.experiment]: ROI is measured against its "
            "holdout; add an experiment with a holdout share"
        )
    name = c.experiment.name
    check_experiment(warehouse, name)
    hyp = c.hypothesis
    window = window_days if window_days is not None else (hyp.window_days if hyp else 14.0)
    level = 1 - hyp.alpha if hyp else 0.95
    if not margin_known(warehouse):
        raise DataError(
            "ROI needs the margin of what was bought: products.cost or offers.margin, and no "
            "purchase has either; load the products' costs"
        )
    metrics = ["revenue", "margin"] + ([hyp.metric] if hyp else [])
    frame, unit = experiment_units(warehouse, name, metrics, window_days=window, pre_days=0)
    arms = sorted(frame.arm.unique())
    control = "holdout" if "holdout" in arms else control_arm(warehouse, name)
    treated = [a for a in arms if a != control]
    if not treated:
        raise DataError(f"experiment {name!r} has only its control arm {control!r}; no one treated")
    is_t = frame.arm.isin(treated).to_numpy()
    is_c = (frame.arm == control).to_numpy()
    n_t, n_c = int(is_t.sum()), int(is_c.sum())
    if n_c < 2:
        raise DataError(f"experiment {name!r}: its control arm {control!r} has {n_c} unit(s)")
    counts = frame.arm.value_counts()
    srm = st.sample_ratio_test({a: int(counts[a]) for a in arms}, c.experiment.weights())

    def lift(metric: str) -> st.Lift:
        y = frame[metric].to_numpy()
        t, k = st.Sample.of(y[is_t]), st.Sample.of(y[is_c])
        return st.compare(t, k, binary=metric in BINARY_METRICS, level=level)

    revenue, margin = lift("revenue").absolute, lift("margin").absolute
    total_margin = _scaled(margin, n_t)
    sends, send_cost, redemptions, redemption_cost = _costs(warehouse, spec, name, treated, window)
    cost = send_cost + redemption_cost
    notes: list[str] = []
    roi = None
    if cost > 0:
        roi = st.Estimate(
            (total_margin.value - cost) / cost,
            total_margin.se / cost,
            (total_margin.low - cost) / cost,
            (total_margin.high - cost) / cost,
            level,
        )
    else:
        notes.append(
            "no cost logged (no unit_cost on the offers sent, no redemption cost): ROI is undefined"
        )
    if unknown := int(frame.loc[is_t | is_c, "_unknown_margin"].sum()):
        notes.append(f"{unknown:,} purchase(s) have no known cost and count no margin")
    metric_lift = detectable = None
    outcome, value_outcome = "no hypothesis", None
    if hyp:
        metric_lift = lift(hyp.metric)
        y = frame[hyp.metric].to_numpy()
        base = float(y[is_c].mean())
        n_eq = max(2, int(2 / (1 / n_t + 1 / n_c)))
        try:
            sd = None if hyp.metric in BINARY_METRICS else float(np.std(y[is_c], ddof=1))
            p = st.plan_experiment(base, n=n_eq, sd=sd, alpha=hyp.alpha, power=hyp.power)
            detectable = p.relative_effect
        except DataError as exc:
            notes.append(f"detectable effect not computed: {exc}")
        if hyp.expected_lift is not None:
            outcome = verdict(metric_lift.relative, hyp.expected_lift)
        elif hyp.expected_absolute_lift is not None:
            outcome = verdict(metric_lift.absolute, hyp.expected_absolute_lift)
        if hyp.expected_value is not None:
            value_outcome = verdict(total_margin, hyp.expected_value)
        mde = hyp.minimum_detectable_effect
        if mde is not None and detectable is not None and detectable > mde:
            notes.append(
                f"underpowered: with {n_t:,} treated and {n_c:,} control units the smallest "
                f"relative effect detectable at power {hyp.power} is {detectable:.1%}, above "
                f"the hypothesis' minimum detectable effect of {mde:.1%}"
            )
    return CampaignRoi(
        c.name,
        name,
        control,
        treated,
        unit,
        n_t,
        n_c,
        window,
        level,
        revenue,
        margin,
        _scaled(revenue, n_t),
        total_margin,
        sends,
        send_cost,
        redemptions,
        redemption_cost,
        roi,
        srm,
        hyp,
        metric_lift,
        detectable,
        outcome,
        value_outcome,
        tuple(notes),
    )
