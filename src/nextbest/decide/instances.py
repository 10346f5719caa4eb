"""Seeded, realistic allocation instances for tests and benchmarks (like ``sklearn.datasets``).

:func:`random_problem` draws a flash-sale day: customers x offers with purchase probabilities
from a low-rank taste model, margins and costs per offer, and the constraints that make the
allocation hard: stock and budgets sized below what every customer's favourites would use, a
minimum share of slots for new designers, a campaign budget and one offer per brand per e-mail.
"""

from __future__ import annotations

import numpy as np

from nextbest.decide.problem import AllocationProblem, Coupling
from nextbest.errors import ConfigError

__all__ = ["random_problem"]

_CHUNK = 262_144  # customers drawn at a time: bounds the temporaries to a few hundred MB
_RANK = 6  # dimension of the latent tastes


def random_problem(
    n_customers: int,
    n_offers: int = 40,
    *,
    slots: int = 3,
    seed: int = 0,
    eligible_share: float = 0.8,
    new_share: float = 0.2,
    min_new_share: float = 0.2,
    stock_tightness: float = 0.6,
    budget_tightness: float = 0.7,
    campaign_budget: bool = True,
) -> AllocationProblem:
    """A random allocation problem shaped like a flash-sale retailer's daily e-mail.

    Parameters
    ----------
    n_customers, n_offers
        Size of the value matrix. Built in chunks of customers in float32: 5M x 40 takes
        about 2.6 GB (value, expected units, expected cost, eligibility).
    slots
        Offers per e-mail, the same for every customer.
    seed
        Seed of every draw: the same arguments give the same problem.
    eligible_share
        Probability that an offer is eligible for a customer (consent, rules, contact policy).
    new_share
        Share of the offers tagged as new designers (at least one). Their affinities are
        lower (customers do not know them yet), so the minimum share binds.
    min_new_share
        Coupling ``min_share[new_designer]``: at least this share of all slots used goes to
        new designers (0 leaves it out).
    stock_tightness
        Each offer's stock (in expected units sold) is this fraction, times a factor drawn in
        [0.5, 1.5], of what the unconstrained allocation (every customer's top ``slots``
        offers of positive value) would sell; discount offers also get a budget sized alike.
    budget_tightness
        The campaign budget is this fraction of the unconstrained allocation's total cost.
    campaign_budget
        Whether to add the campaign budget.

    Returns
    -------
    AllocationProblem
        ``value = P(purchase) x margin - cost``, with ``units = P(purchase)`` and ``cost`` =
        per-send cost plus ``P(purchase)`` x the discount redeemed; offers ``S00``, ``S01``,
        ...; couplings ``stock[S07]``, ``budget[S07]``, ``min_share[new_designer]``,
        ``campaign_budget``; brands in ``group`` with ``max_per_group=1``.

    Notes
    -----
    Probabilities are ``logistic(a + u_c . v_o + b_c + d_o)`` with rank-6 Gaussian tastes, a
    customer activity ``b_c`` and an offer appeal ``d_o``, tuned for a mean near 3%, the
    click-to-purchase rate of promotional e-mail.
    """
    if n_customers < 1 or n_offers < 1:
        raise ConfigError(
            f"expected at least 1 customer and 1 offer, got {n_customers} x {n_offers}"
        )
    if slots < 0:
        raise ConfigError(f"slots: expected a whole number >= 0, got {slots}")
    for name, x, hi in (
        ("eligible_share", eligible_share, 1.0),
        ("new_share", new_share, 1.0),
        ("min_new_share", min_new_share, 1.0),
        ("stock_tightness", stock_tightness, 10.0),
        ("budget_tightness", budget_tightness, 10.0),
    ):
        if not 0.0 <= x <= hi:
            raise ConfigError(f"{name}: expected a number in [0, {hi}], got {x!r}")
    n, m = n_customers, n_offers
    rng = np.random.default_rng(seed)
    width = max(2, len(str(m - 1)))
    ids = np.array([f"S{j:0{width}d}" for j in range(m)])
    is_new = np.zeros(m, dtype=bool)
    is_new[rng.choice(m, max(1, round(new_share * m)), replace=False)] = True
    taste = (rng.standard_normal((m, _RANK)) * 0.35).astype(np.float32)
    appeal = (rng.normal(0.0, 0.3, m) - 0.6 * is_new).astype(np.float32)
    margin = rng.uniform(5.0, 40.0, m).astype(np.float32)
    send_cost = rng.uniform(0.005, 0.03, m).astype(np.float32)
    is_discount = rng.random(m) < 0.3
    redeem = np.where(is_discount, margin * rng.uniform(0.1, 0.3, m), 0.0).astype(np.float32)
    # brands: most offers alone, a few brands carrying 2 or 3 offers
    group = np.arange(m, dtype=np.int64)
    order = rng.permutation(m)
    at = 0
    for _ in range(max(1, m // 10)):  # a loop over the multi-offer brands
        size = int(rng.integers(2, 4))
        if at + size > m:
            break
        group[order[at : at + size]] = order[at]
        at += size
    value = np.empty((n, m), dtype=np.float32)
    units = np.empty((n, m), dtype=np.float32)
    cost = np.empty((n, m), dtype=np.float32)
    eligible = np.empty((n, m), dtype=bool)
    top_units = np.zeros(m)
    top_cost = np.zeros(m)
    for start in range(0, n, _CHUNK):  # a loop over chunks of customers
        rows = slice(start, min(n, start + _CHUNK))
        size = rows.stop - start
        u = rng.standard_normal((size, _RANK), dtype=np.float32)
        logit = u @ taste.T
        logit += rng.normal(-3.9, 0.7, (size, 1)).astype(np.float32) + appeal
        p = units[rows]
        np.exp(-logit, out=p)
        p += 1.0
        np.reciprocal(p, out=p)
        np.multiply(p, redeem, out=cost[rows])
        cost[rows] += send_cost
        np.multiply(p, margin, out=value[rows])
        value[rows] -= cost[rows]
        eligible[rows] = rng.random((size, m), dtype=np.float32) < eligible_share
        k = min(slots, m)
        if k:
            r = np.where(eligible[rows] & (value[rows] > 0), value[rows], -np.inf)
            top = np.argpartition(-r, k - 1, axis=1)[:, :k]
            keep = np.isfinite(np.take_along_axis(r, top, axis=1))
            c = np.broadcast_to(np.arange(size)[:, None], top.shape)[keep]
            o = top[keep]
            top_units += np.bincount(o, weights=p[c, o], minlength=m)
            top_cost += np.bincount(o, weights=cost[rows][c, o], minlength=m)
    couplings = []
    factor = rng.uniform(0.5, 1.5, m)
    # offers nobody ranks first still get stock: a tenth of the mean, before tightness
    top_units = np.maximum(top_units, 0.1 * top_units.mean())
    top_cost = np.maximum(top_cost, 0.1 * top_cost.mean())
    for j in range(m):  # a loop over offers: stock, and a budget for discounts
        w, sid = np.eye(m, dtype=np.float32)[j], ids[j]
        stock = float(stock_tightness * factor[j] * top_units[j])
        label = f"stock of {sid}: {stock:,.1f} units"
        couplings.append(Coupling(f"stock[{sid}]", "stock", "units", w, stock, label))
        if is_discount[j]:
            budget = float(stock_tightness * factor[m - 1 - j] * top_cost[j])
            label = f"budget of {sid}: {budget:,.2f}"
            couplings.append(Coupling(f"budget[{sid}]", "budget", "cost", w, budget, label))
    if min_new_share > 0:
        w = (min_new_share - is_new).astype(np.float32)
        label = f"at least {min_new_share:.0%} of slots for new designers"
        couplings.append(Coupling("min_share[new_designer]", "min_share", "count", w, 0.0, label))
    if campaign_budget:
        total = float(budget_tightness * top_cost.sum())
        w, label = np.ones(m, dtype=np.float32), f"campaign budget: {total:,.2f}"
        couplings.append(Coupling("campaign_budget", "campaign_budget", "cost", w, total, label))
    return AllocationProblem(
        value=value,
        eligible=eligible,
        slots=np.full(n, slots, dtype=np.int64),
        couplings=couplings,
        units=units,
        cost=cost,
        offer_ids=ids,
        group=group,
        max_per_group=1,
    )
