"""The daily batch: from a campaign and a day's inputs to whole, ordered, explored slates.

Value of offer ``o`` for customer ``c`` (documented formula; ``w`` the mean position weight of
the campaign's slots, ``L`` the levers ``campaign x category x brand x offer``)::

    profit              L * w * P(buy) * margin - unit_cost - w * P(buy) * redemption_cost
    conversions         L * w * P(buy)
    revenue             L * w * P(buy) * average order of the offer (overall when unknown)
    incremental_margin  L * w * tau_c * P(buy)[c,o] / mean_o P(buy)[c,o] / slots * margin - costs

where ``tau_c`` is the uplift model's effect of the campaign on the customer's purchase, split
over the offers by their relative appeal (a sleeping dog's value is negative: she is not sent
anything). Stock is counted in expected units ``w * P(buy)`` and budgets in expected cost
``unit_cost + w * P(buy) * redemption_cost``. The allocation is solved exactly by HiGHS when
the eligible pairs are at most ``exact_limit``, else by the dual solver; rounded to whole
decisions (:mod:`.rounding`); each slate is ordered by value (the best offer first, where the
position weight is highest); a share of slots is explored (:mod:`.explore`); explored slots
that would break a budget, stock or share go back to the optimiser's offer.
The decision-log rows, slates and summary they leave behind are written by :mod:`.output`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nextbest.decide.campaign import CampaignFile
from nextbest.decide.day import DayInputs
from nextbest.decide.dualip import DualipSolver
from nextbest.decide.exact import solve_exact
from nextbest.decide.explore import explore
from nextbest.decide.problem import Allocation, AllocationProblem, Coupling
from nextbest.decide.rounding import round_allocation
from nextbest.errors import InfeasibleError
from nextbest.progress import NullReporter, Reporter

__all__ = ["DayPlan", "ScaledPairs", "build_problem", "levers", "plan_day", "value_parts"]

log = logging.getLogger(__name__)


class ScaledPairs:
    """The ``n x m`` matrix ``f_1 x base x f_2 x ...`` (``f`` per offer), read at pairs and
    never made whole.

    ``pairs[rows, cols]`` multiplies in that order and precision, so it holds the same bits
    as the whole matrix would (``value_parts``'s ``lever x buy x margin``). The batch's gross
    is one: at 5M customers x 40 offers a whole one is 0.8 GB beside the units it scales.
    """

    def __init__(self, base: np.ndarray, first: np.ndarray, *then: np.ndarray) -> None:
        self.base, self.first = base, first.astype(base.dtype)
        self.then = tuple(f.astype(base.dtype) for f in then)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    def __getitem__(self, key: tuple[Any, Any]) -> Any:
        rows, cols = key
        out = self.first[cols] * self.base[rows, cols]
        for f in self.then:  # a loop over the factors after the base
            out = out * f[cols]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:, :]
        return whole if dtype is None else whole.astype(dtype)


@dataclass
class DayPlan:
    """The decisions of one day, as slates, with what they are expected to earn and why."""

    inputs: DayInputs
    problem: AllocationProblem
    allocation: Allocation
    slates: np.ndarray  # n x k offer indices, -1 empty
    propensity: np.ndarray  # n x k
    explored: np.ndarray  # n x k
    novel: np.ndarray  # n x k
    parts: dict[str, Any] = field(default_factory=dict)  # n x m value parts (or ScaledPairs)
    reverted: int = 0

    def prices(self) -> dict[str, list[float]]:
        """Per basis, the price per offer implied by the dual prices (value units)."""
        return {b: v.tolist() for b, v in self.problem.prices(self.allocation.duals).items()}


def levers(spec: CampaignFile, offers: pd.DataFrame) -> np.ndarray:
    lv = spec.campaign.levers
    return np.array(
        [
            lv.campaign
            * lv.category.get(str(cat), 1.0)
            * lv.brand.get(str(brand), 1.0)
            * lv.offer.get(str(oid), 1.0)
            for oid, cat, brand in zip(offers.offer_id, offers.category, offers.brand, strict=True)
        ]
    )


def value_parts(
    spec: CampaignFile,
    offers: pd.DataFrame,
    p_buy: np.ndarray,
    position_weight: float,
    lever: np.ndarray,
    *,
    effect: np.ndarray | None = None,
    order_value: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The value of every pair (``n x m``) and its parts: ``(buy, gross, cost, value)``.

    ``buy = w x P(buy)`` (``w`` the average position weight), ``cost = unit cost + buy x
    redemption cost``; ``value = lever x buy x margin - cost`` (profit), ``lever x buy``
    (conversions), ``lever x buy x order value`` (revenue), or, for incremental margin,
    ``lever x w x effect x appeal / slots x margin - cost`` with ``appeal`` the pair's purchase
    probability against the customer's average. The batch and the real-time service both use it.
    The parts have the precision of ``p_buy`` (float32 in the batch: 40M pairs of four parts).
    """
    c = spec.campaign
    m = len(offers)
    kind = p_buy.dtype if p_buy.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    margin = offers.margin.fillna(0).to_numpy(kind)
    unit_cost = offers.unit_cost.fillna(0).to_numpy(kind)
    redemption = offers.redemption_cost.to_numpy(kind)
    lever = np.asarray(lever, dtype=kind)
    buy = position_weight * p_buy
    cost = unit_cost[None, :] + buy * redemption[None, :]
    if c.objective == "profit":
        gross = lever * buy * margin
        value = gross - cost
    elif c.objective == "conversions":
        gross = lever * buy
        value = gross
    elif c.objective == "revenue":
        aov = np.asarray(order_value if order_value is not None else np.ones(m), dtype=kind)
        gross = lever * buy * aov
        value = gross
    else:  # incremental_margin
        if effect is None:
            raise ValueError("incremental_margin needs the uplift model's effect per customer")
        appeal = p_buy / np.maximum(1e-12, p_buy.mean(axis=1, keepdims=True))
        tau = np.asarray(effect, dtype=kind)[:, None]
        gross = lever * position_weight * tau * appeal / c.slots * margin
        value = gross - cost
    return buy, gross, cost, value


def build_problem(
    spec: CampaignFile,
    inputs: DayInputs,
    *,
    effect: np.ndarray | None = None,
    order_value: np.ndarray | None = None,
) -> tuple[AllocationProblem, dict[str, Any]]:
    """The allocation problem of a day, and the parts of every pair's value.

    ``effect``: per customer, the uplift model's effect (``incremental_margin``);
    ``order_value``: per offer, the average order (``revenue``).
    """
    c = spec.campaign
    offers = inputs.offers
    n, m = inputs.p_response.shape
    w = float(np.mean(inputs.position_weights)) if inputs.position_weights else 1.0
    lever = levers(spec, offers)
    buy, gross, cost, value = value_parts(
        spec, offers, inputs.p_buy, w, lever, effect=effect, order_value=order_value
    )
    couplings = _couplings(spec, offers, buy)
    brands = offers.brand.fillna("").astype(str).to_numpy()
    group = np.unique(brands, return_inverse=True)[1]
    buy, gross, cost = (np.asarray(x, dtype=np.float32) for x in (buy, gross, cost))
    # without redemption costs an offer costs its customers the same: kept once per offer,
    # 0.8 GB less at 5M customers x 40 offers (cost is unit cost + buy x 0, the same bits)
    redemption = offers.redemption_cost.to_numpy(np.float64)
    per_offer = bool(n) and bool((redemption == 0).all())
    cost_basis = cost[0].copy() if per_offer else cost
    if per_offer:
        cost = np.broadcast_to(cost_basis, (n, m))
    problem = AllocationProblem(
        value=np.asarray(value, dtype=np.float32),
        eligible=inputs.eligible,
        slots=inputs.slots,
        couplings=couplings,
        units=buy,
        cost=cost_basis,
        offer_ids=offers.offer_id.to_numpy(),
        group=group,
        max_per_group=c.max_per_brand,
    )
    parts: dict[str, Any] = {"p_buy": buy, "gross": gross, "cost": cost}
    parts["lever"] = np.broadcast_to(lever, (n, m))
    if c.objective == "profit":  # lever x buy x margin, read at the pairs that need it
        parts["gross"] = ScaledPairs(buy, lever, offers.margin.fillna(0).to_numpy(np.float32))
    return problem, parts


def _couplings(spec: CampaignFile, offers: pd.DataFrame, buy: np.ndarray) -> list[Coupling]:
    c = spec.campaign
    m = len(offers)
    eye = np.eye(m)
    out: list[Coupling] = []
    for j, row in enumerate(offers.itertuples()):
        left = float(row.stock) - float(row.sold) if pd.notna(row.stock) else None
        if left is not None:
            out.append(
                Coupling(
                    f"stock[{row.offer_id}]",
                    "stock",
                    "units",
                    eye[j],
                    max(0.0, left),
                    f"stock of {row.offer_id} ({max(0.0, left):,.0f} units left)",
                )
            )
        if row.budget is not None and pd.notna(row.budget):
            out.append(
                Coupling(
                    f"budget[{row.offer_id}]",
                    "budget",
                    "cost",
                    eye[j],
                    float(row.budget),
                    f"budget of {row.offer_id} ({row.budget:,.2f})",
                )
            )
    if c.budget is not None:
        out.append(
            Coupling(
                "campaign_budget",
                "campaign_budget",
                "cost",
                np.ones(m),
                c.budget,
                f"budget of campaign {c.name} ({c.budget:,.2f})",
            )
        )
    if c.capacity is not None:
        out.append(
            Coupling(
                f"capacity[{c.channel}]",
                "capacity",
                "count",
                np.ones(m),
                float(c.capacity),
                f"capacity of {c.channel} ({c.capacity:,} offers)",
            )
        )
    tags = offers.tags.fillna("").astype(str)
    for s in c.shares:
        if s.tag is not None:
            member = tags.map(lambda t, tag=s.tag: tag in t.replace(",", "|").split("|"))
        else:
            member = offers.brand == s.brand
        t = member.to_numpy(dtype=np.float64)
        if s.min is not None:
            out.append(
                Coupling(
                    f"min_share[{s.label}]",
                    "min_share",
                    "count",
                    s.min - t,
                    0.0,
                    f"at least {s.min:.0%} of slots for {s.label}",
                )
            )
        if s.max is not None:
            out.append(
                Coupling(
                    f"max_share[{s.label}]",
                    "max_share",
                    "count",
                    t - s.max,
                    0.0,
                    f"at most {s.max:.0%} of slots for {s.label}",
                )
            )
    for mn in c.minimums:
        t = (offers.brand == mn.brand).to_numpy(dtype=np.float64)
        out.append(
            Coupling(
                f"min_count[{mn.brand}]",
                "min_count",
                "count",
                -t,
                -float(mn.count),
                f"at least {mn.count:,} slots for brand {mn.brand}",
            )
        )
    return out


def _solve(spec: CampaignFile, problem: AllocationProblem, reporter: Reporter) -> Allocation:
    c = spec.campaign
    pairs = int(problem.eligible.sum())
    use_exact = c.solver == "highs" or (c.solver == "auto" and pairs <= c.exact_limit)
    if use_exact:
        return solve_exact(problem)
    _check_minimums(problem)
    return DualipSolver().solve(problem, reporter=reporter)


def _check_minimums(problem: AllocationProblem) -> None:
    """A minimum count more slots than eligibility and slots allow is named before solving.

    (HiGHS names conflicts itself; the dual solver would only see its prices grow.)
    """
    cap = problem.max_per_group or problem.shape[1]
    for k in problem.couplings:
        if k.kind != "min_count":
            continue
        wanted = k.weight < 0
        per_customer = problem.eligible[:, wanted].sum(axis=1)
        most = np.minimum(np.minimum(per_customer, problem.slots), cap).sum()
        if most < -k.bound:
            raise InfeasibleError(
                f"the constraints cannot all hold: {k.label or k.name}, but eligibility, "
                f"slots and one brand per slate allow at most {int(most):,}. Lower the "
                "minimum or widen eligibility"
            )


def _slates(problem: AllocationProblem, a: Allocation, k: int, parts: dict[str, Any]) -> np.ndarray:
    """Whole decisions as ``n x k`` slates, the most valuable first."""
    n, _ = problem.shape
    slates = np.full((n, k), -1, dtype=np.int64)
    gross = parts["gross"][a.customer, a.offer]
    order = np.lexsort((-gross, a.customer))
    cust, offer = a.customer[order], a.offer[order]
    start = np.r_[True, cust[1:] != cust[:-1]] if len(cust) else np.zeros(0, dtype=bool)
    first = np.maximum.accumulate(np.where(start, np.arange(len(cust)), 0))
    rank = np.arange(len(cust)) - first
    ok = rank < k
    slates[cust[ok], rank[ok]] = offer[ok]
    return slates


def _enforce(
    problem: AllocationProblem, exploit: np.ndarray, slates: np.ndarray, explored: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Put back the optimiser's offer in explored slots until no hard constraint is broken."""
    slates, explored = slates.copy(), explored.copy()
    reverted = 0
    for _ in range(20):  # a loop over repair passes
        rows, cols = np.nonzero(slates >= 0)
        a = Allocation(rows, slates[rows, cols], np.ones(len(rows)))
        broken = [
            i
            for i, (k, used) in enumerate(zip(problem.couplings, problem.usage(a), strict=True))
            if used > k.bound + 1e-9 * max(1.0, abs(k.bound))
        ]
        if not broken:
            break
        for i in broken:
            k = problem.couplings[i]
            er, ec = np.nonzero(explored)
            coef = k.weight[slates[er, ec]] * problem.basis_at(k.basis, er, slates[er, ec])
            back = coef > 0
            dup = (exploit[er, ec][:, None] == slates[er]).any(axis=1)
            slates[er[back], ec[back]] = np.where(dup[back], -1, exploit[er[back], ec[back]])
            explored[er[back], ec[back]] = False
            reverted += int(back.sum())
    return slates, explored, reverted


def plan_day(
    spec: CampaignFile,
    inputs: DayInputs,
    *,
    posterior: tuple[np.ndarray, np.ndarray] | None = None,
    effect: np.ndarray | None = None,
    order_value: np.ndarray | None = None,
    random_state: int = 0,
    reporter: Reporter | None = None,
) -> DayPlan:
    """Solve, round, order and explore one day's decisions."""
    reporter = reporter or NullReporter()
    c = spec.campaign
    reporter.start(None, "Values and constraints")
    problem, parts = build_problem(spec, inputs, effect=effect, order_value=order_value)
    reporter.finish()
    fractional = _solve(spec, problem, reporter)
    reporter.start(None, "Rounding to whole decisions, ordering slates, exploring")
    whole = round_allocation(problem, fractional, random_state=random_state)
    exploit = _slates(problem, whole, c.slots, parts)
    rng = np.random.default_rng([random_state, 17])
    x = c.exploration
    if x.share > 0:
        ex = explore(
            exploit,
            problem.eligible,
            share=x.share,
            method=x.method,
            rng=rng,
            posterior=posterior,
            novel=inputs.novel,
            novelty_share=x.novelty_share,
        )
        slates, explored = ex.slates, ex.explored
        propensity, novel = ex.propensity, ex.novel
        slates, explored_after, reverted = _enforce(problem, exploit, slates, explored)
        back = explored & ~explored_after
        propensity = np.where(back, 1.0 - x.share, propensity)
        explored = explored_after
    else:
        slates, explored, reverted = exploit, np.zeros(exploit.shape, dtype=bool), 0
        propensity = np.where(slates >= 0, 1.0, 0.0)
        rows = np.arange(len(slates))[:, None]
        novel = np.where(slates >= 0, inputs.novel[rows, np.maximum(slates, 0)], False)
    reporter.finish()
    return DayPlan(
        inputs=inputs,
        problem=problem,
        allocation=whole,
        slates=slates,
        propensity=propensity,
        explored=explored,
        novel=novel,
        parts=parts,
        reverted=reverted,
    )
