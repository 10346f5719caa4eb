"""Integral decisions from a fractional allocation, never breaking a hard constraint.

A solver's ``x`` is fractional (and the dual solver's may exceed a bound a little). Decisions
are whole: an offer is in a customer's e-mail or not. :func:`round_allocation` makes them so:

1. Candidates per customer: the offers that systematic sampling keeps from the fractional
   solution (each with probability its share, so volumes and shares hold in expectation), then
   fillers: her other eligible offers of positive value by decreasing reduced value (value
   less the dual prices of the resources they use), so a slot freed by a full budget goes to
   the next offer that the prices say is worth its resources.
2. Rounds: each customer proposes her best remaining candidates for her free slots, at most
   ``max_per_group`` of one brand per slate. Proposals are taken in global order of
   priority, and one is refused when it would take a coupling with non-negative weights
   (budgets, stock, capacities) past what is left of its bound; refused slots are proposed
   again from the next candidates, for a few rounds.
3. Constraints with negative weights (minimum and maximum shares) are then repaired by
   removing the lowest-priority assignments that count against them, which can only loosen the
   budgets, stock, caps and slots. A minimum count that cannot be reached this way is
   reported in ``info["unmet"]``, never hidden.

So eligibility, consent, slots, budgets, stock and caps hold exactly, by construction, and
shares hold after repair; tests check this on random instances.
"""

from __future__ import annotations

import numpy as np

from nextbest.decide.problem import Allocation, AllocationProblem

__all__ = ["round_allocation"]

_ROUNDS = 4
_CHUNK = 65_536


def _fillers(
    problem: AllocationProblem, prices: dict[str, np.ndarray], per: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per customer, her ``per`` best eligible offers of positive value by reduced value."""
    n, m = problem.shape
    per = min(per, m)
    cs, os, rs = [], [], []
    for start in range(0, n, _CHUNK):  # a loop over chunks of customers
        rows = slice(start, min(n, start + _CHUNK))
        r = problem.value[rows].astype(np.float64)
        for b, price in prices.items():
            basis = problem.basis(b, rows)
            r = r - price * basis
        ok = problem.eligible[rows] & (problem.value[rows] > 0)
        r = np.where(ok, r, -np.inf)
        top = (
            np.argpartition(-r, per - 1, axis=1)[:, :per]
            if per < m
            else np.tile(np.arange(m), (r.shape[0], 1))
        )
        val = np.take_along_axis(r, top, axis=1)
        c = np.repeat(np.arange(start, rows.stop), top.shape[1])
        keep = np.isfinite(val.ravel())
        cs.append(c[keep])
        os.append(top.ravel()[keep])
        rs.append(val.ravel()[keep])
    return np.concatenate(cs), np.concatenate(os), np.concatenate(rs)


def _rank_within(keys: np.ndarray) -> np.ndarray:
    """For rows sorted by ``keys``, each row's position among rows of the same key."""
    if not len(keys):
        return np.zeros(0, dtype=np.int64)
    start = np.r_[True, keys[1:] != keys[:-1]]
    idx = np.arange(len(keys))
    first = np.maximum.accumulate(np.where(start, idx, 0))
    return idx - first


def _systematic(customer: np.ndarray, share: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which entries systematic sampling keeps: each with probability exactly its share.

    Entries are sorted by customer; per customer one uniform ``u`` and the points ``u, u + 1,
    ...`` fall into the intervals laid end to end by the shares (Madow 1949), so a customer
    with shares summing to ``s`` gets ``floor(s)`` or ``ceil(s)`` offers, and each offer's
    expected volume, hence every share and budget, is kept in expectation.
    """
    if not len(customer):
        return np.zeros(0, dtype=bool)
    end = np.cumsum(share)
    start_of = np.r_[True, customer[1:] != customer[:-1]]
    base = np.maximum.accumulate(np.where(start_of, end - share, 0.0))
    u = rng.random(int(customer.max()) + 1)[customer]
    hi = end - base
    lo = hi - share
    return np.floor(hi - u + 1e-9) > np.floor(lo - u + 1e-9)


def round_allocation(
    problem: AllocationProblem, fractional: Allocation, *, random_state: int = 0
) -> Allocation:
    """Whole decisions (share 1) from ``fractional``, meeting every hard constraint."""
    n, m = problem.shape
    rng = np.random.default_rng(random_state)
    duals = fractional.duals if fractional.duals is not None else np.zeros(len(problem.couplings))
    w = problem.weights()
    prices = {b: duals @ w[b] for b in problem.used_bases()}
    kmax = int(problem.slots.max(initial=0))
    fc, fo, fr = _fillers(problem, prices, 2 * kmax + 2)
    scale = max(1e-12, float(np.abs(fr).max(initial=1.0)))
    ok = problem.eligible[fractional.customer, fractional.offer] & (fractional.share > 1e-9)
    by_customer = np.argsort(fractional.customer, kind="stable")
    sampled = np.zeros(len(ok), dtype=bool)
    sampled[by_customer] = _systematic(
        fractional.customer[by_customer],
        np.where(ok, np.minimum(1.0, fractional.share), 0.0)[by_customer],
        rng,
    )
    ok &= sampled
    cust = np.concatenate([fractional.customer[ok], fc])
    offer = np.concatenate([fractional.offer[ok], fo])
    value = problem.value[cust, offer].astype(np.float64)
    # primaries by share (ties by value), then fillers by reduced value: all in one number
    priority = np.concatenate(
        [fractional.share[ok] + 1e-6 * np.tanh(value[: ok.sum()]), fr / scale * 0.5 - 1.0]
    )
    order = np.lexsort((-priority, cust))
    cust, offer, priority = cust[order], offer[order], priority[order]
    pair = cust.astype(np.int64) * m + offer
    _, first = np.unique(pair, return_index=True)
    keep = np.zeros(len(pair), dtype=bool)
    keep[first] = True
    cust, offer, priority = cust[keep], offer[keep], priority[keep]
    group = problem.group if problem.group is not None else np.arange(m)
    cap = problem.max_per_group if problem.max_per_group is not None else m
    nonneg = [i for i, k in enumerate(problem.couplings) if (k.weight >= 0).all()]
    used = np.zeros(len(problem.couplings))
    coef = {
        i: problem.couplings[i].weight[offer]
        * problem.basis_at(problem.couplings[i].basis, cust, offer)
        for i in range(len(problem.couplings))
    }
    state = np.zeros(len(cust), dtype=np.int8)  # 0 open, 1 accepted, 2 refused
    global_order = np.argsort(-priority, kind="stable")
    for _ in range(_ROUNDS):  # a loop over proposal rounds
        taken = np.bincount(cust[state == 1], minlength=n)
        free = problem.slots - taken
        open_ = np.flatnonzero(state == 0)
        if not len(open_):
            break
        # at most `cap` per brand: accepted ones count first
        g = group[offer[open_]].astype(np.int64)
        gkey = cust[open_].astype(np.int64) * (int(group.max(initial=0)) + 1) + g
        acc = np.flatnonzero(state == 1)
        acc_key = cust[acc].astype(np.int64) * (int(group.max(initial=0)) + 1) + group[offer[acc]]
        ukeys, counts = np.unique(acc_key, return_counts=True)
        already = np.zeros(len(open_), dtype=np.int64)
        if len(ukeys):
            pos = np.minimum(np.searchsorted(ukeys, gkey), len(ukeys) - 1)
            already = np.where(ukeys[pos] == gkey, counts[pos], 0)
        by_group = np.lexsort((-priority[open_], gkey))
        rank_g = np.empty(len(open_), dtype=np.int64)
        rank_g[by_group] = _rank_within(gkey[by_group])
        fits_group = already + rank_g < cap
        cand = open_[fits_group]
        rank_c = _rank_within(cust[cand])  # cand is sorted by customer, then priority
        proposed = cand[rank_c < free[cust[cand]]]
        if not len(proposed):
            break
        # resources, in global priority order
        prop_mask = np.zeros(len(cust), dtype=bool)
        prop_mask[proposed] = True
        seq = global_order[prop_mask[global_order]]
        refuse = np.zeros(len(seq), dtype=bool)
        for i in nonneg:
            c = coef[i][seq]
            if not c.any():
                continue
            room = problem.couplings[i].bound - used[i]
            refuse |= (c > 0) & (np.cumsum(c) > room + 1e-9)
        accepted = seq[~refuse]
        state[accepted] = 1
        state[seq[refuse]] = 2
        for i in range(len(problem.couplings)):
            used[i] += coef[i][accepted].sum()
    chosen = np.flatnonzero(state == 1)
    chosen, unmet = _repair_shares(problem, chosen, coef, priority)
    a = Allocation(cust[chosen], offer[chosen], np.ones(len(chosen)), duals=fractional.duals)
    objective = problem.objective(a)
    upper = float(fractional.info.get("upper_bound", np.nan))
    a.info = {
        **fractional.info,
        "fractional_objective": float(fractional.info.get("objective", np.nan)),
        "objective": objective,
        "gap": (upper - objective) / max(1e-12, abs(upper)) if np.isfinite(upper) else np.nan,
        "assignments": len(chosen),
        "unmet": "; ".join(unmet),
    }
    return a


def _repair_shares(
    problem: AllocationProblem,
    chosen: np.ndarray,
    coef: dict[int, np.ndarray],
    priority: np.ndarray,
) -> tuple[np.ndarray, list[str]]:
    """Drop the lowest-priority assignments counting against a broken mixed-sign constraint."""
    mixed = [i for i, k in enumerate(problem.couplings) if (k.weight < 0).any()]
    alive = np.zeros(len(priority), dtype=bool)
    alive[chosen] = True
    for _ in range(10):  # a loop over repair passes; each only removes assignments
        changed = False
        for i in mixed:
            k = problem.couplings[i]
            idx = np.flatnonzero(alive)
            excess = coef[i][idx].sum() - k.bound
            if excess <= 1e-9:
                continue
            pos = idx[coef[i][idx] > 0]
            pos = pos[np.argsort(priority[pos], kind="stable")]
            need = np.searchsorted(np.cumsum(coef[i][pos]), excess - 1e-9) + 1
            alive[pos[:need]] = False
            changed = changed or len(pos[:need]) > 0
        if not changed:
            break
    unmet = []
    idx = np.flatnonzero(alive)
    for i, k in enumerate(problem.couplings):
        lhs = coef[i][idx].sum()
        if lhs > k.bound + 1e-6 * max(1.0, abs(k.bound)):
            unmet.append(f"{k.label or k.name}: short by {lhs - k.bound:.6g}")
    return idx, unmet
