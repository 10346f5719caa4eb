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

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np

from nextbest.decide._kernels import as_basis
from nextbest.decide.problem import BASES, Allocation, AllocationProblem

__all__ = ["round_allocation"]

_CHUNK = 65_536


def _fillers(
    problem: AllocationProblem,
    prices: dict[str, np.ndarray],
    per: int,
    seen: np.ndarray,
    among: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per customer, her ``per`` best eligible offers of positive value by reduced value, less
    the pairs already ``seen`` (an ``n x m`` mask, which this marks with the new ones).

    Returns customers and offers (int32), reduced values, and the largest absolute reduced
    value among all the best ones, seen or not (the scale of the priorities). Each chunk of
    customers drops its seen pairs itself: at 5M customers the unfiltered fillers were 40M
    rows, a GB kept twice while they were joined.

    ``among``: a mask of the offers to choose from (all by default).
    """
    n, m = problem.shape
    per = min(per, m)
    if per <= 0 or n == 0:
        empty = np.zeros(0, dtype=np.int32)
        return empty, empty, np.zeros(0), 0.0

    def chunk(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        rows = slice(start, min(n, start + _CHUNK))
        r = problem.value[rows].astype(np.float64)
        for b, price in prices.items():
            basis = problem.basis(b, rows)
            r = r - price * basis
        ok = problem.eligible[rows] & (problem.value[rows] > 0)
        if among is not None:
            ok &= among
        r = np.where(ok, r, -np.inf)
        top = (
            np.argpartition(-r, per - 1, axis=1)[:, :per]
            if per < m
            else np.tile(np.arange(m), (r.shape[0], 1))
        )
        val = np.take_along_axis(r, top, axis=1).ravel()
        c = np.repeat(np.arange(start, rows.stop, dtype=np.int32), top.shape[1])
        o = top.ravel().astype(np.int32)
        keep = np.isfinite(val)
        largest = float(np.abs(val[keep]).max(initial=0.0))
        keep &= ~seen[c, o]  # the chunks' customers are disjoint: each marks its own rows
        c, o = c[keep], o[keep]
        seen[c, o] = True
        return c, o, val[keep], largest

    # chunks of customers on two threads (numpy releases the GIL in these kernels), in order
    with ThreadPoolExecutor(2, thread_name_prefix="rounding-fillers") as pool:
        cs, os, rs, top = zip(*pool.map(chunk, range(0, n, _CHUNK)), strict=True)
    return np.concatenate(cs), np.concatenate(os), np.concatenate(rs), max(top)


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
    problem: AllocationProblem,
    fractional: Allocation,
    *,
    random_state: int = 0,
    share_tolerance: float = 0.005,
) -> Allocation:
    """Whole decisions (share 1) from ``fractional``, meeting every hard constraint.

    ``share_tolerance``: how far (as a share of all slots) a minimum or maximum share may be
    missed before assignments are dropped to meet it. When the offers a share needs are also
    short of stock, meeting it exactly costs several other assignments for each one missing
    (four for a 20% minimum); the default half a point keeps those, and the shortfall is
    reported in ``info["unmet"]``. Budgets, stock, caps, consent and slots have no tolerance.
    """
    m = problem.shape[1]
    rng = np.random.default_rng(random_state)
    duals = fractional.duals if fractional.duals is not None else np.zeros(len(problem.couplings))
    w = problem.weights()
    prices = {b: duals @ w[b] for b in problem.used_bases()}
    kmax = int(problem.slots.max(initial=0))
    mixed = [i for i, k in enumerate(problem.couplings) if (k.weight < 0).any()]
    ok = problem.eligible[fractional.customer, fractional.offer] & (fractional.share > 1e-9)
    by_customer = np.argsort(fractional.customer, kind="stable")
    sampled = np.zeros(len(ok), dtype=bool)
    sampled[by_customer] = _systematic(
        fractional.customer[by_customer],
        np.where(ok, np.minimum(1.0, fractional.share), 0.0)[by_customer],
        rng,
    )
    ok &= sampled
    # Candidates: the sampled primaries, in random order (each is what the LP meant with
    # probability its share, so when sampling overshoots a budget a random few go, and every
    # offer keeps its mix; ordering them by value or share instead took the stock of a
    # thinly spread new designer's offer first and broke its share), then fillers by
    # reduced value; one pair once (a dense mask: n x m bits is small beside the values).
    seen = np.zeros(problem.shape, dtype=bool)
    parts_c, parts_o = [fractional.customer[ok]], [fractional.offer[ok]]
    seen[parts_c[0], parts_o[0]] = True
    parts_p = [1.0 + 0.5 * rng.random(len(parts_c[0]))]
    wanted = [(2 * kmax + 2, None)] + [
        (kmax, problem.couplings[i].weight < 0) for i in mixed
    ]  # the best offers for each minimum too, so that repair can add them
    for per, mask in wanted:  # a loop over kinds of fillers
        fc, fo, fr, largest = _fillers(problem, prices, per, seen, mask)
        scale = max(1.0, largest)
        parts_c.append(fc)
        parts_o.append(fo)
        parts_p.append(fr / scale * 0.5 - 1.0)
    del seen, fc, fo, fr
    # candidates as int32 (customers and offers both fit): 50M of them at 5M customers
    cust = np.concatenate(parts_c, dtype=np.int32)
    del parts_c
    order = np.argsort(cust, kind="stable")
    cust = cust[order]
    offer = np.concatenate(parts_o, dtype=np.int32)[order]
    del parts_o
    priority = np.concatenate(parts_p)[order]
    del parts_p, order
    group = problem.group if problem.group is not None else np.arange(m)
    cap = problem.max_per_group if problem.max_per_group is not None else m
    kk = len(problem.couplings)
    book = _Book(problem, cust, offer, np.asarray(group, dtype=np.int64), cap)
    global_order = np.argsort(-priority, kind="stable")
    enforce = np.array([i not in mixed for i in range(kk)], dtype=bool)
    book.greedy(global_order, enforce)  # hard constraints only: every candidate, best first
    if mixed:
        every = np.ones(kk, dtype=bool)
        helps = np.zeros(len(cust), dtype=bool)
        for i in mixed:  # add assignments that lift a broken minimum into free slots
            if book.used[i] > problem.couplings[i].bound + 1e-9:
                helps |= problem.couplings[i].weight[offer] < 0
        if helps.any():
            book.greedy(global_order[helps[global_order]], every)
        alive = _repair_shares(
            problem, book.state == 1, book.coef, priority, mixed, share_tolerance
        )
        book.state[(book.state == 1) & ~alive] = 0
        book.used = book.usage(np.flatnonzero(alive))
        book.greedy(global_order, every)  # refill what the repair freed, keeping every limit
    chosen = np.flatnonzero(book.state == 1)
    unmet = []
    for k, lhs in zip(problem.couplings, book.usage(chosen), strict=True):
        if lhs > k.bound + 1e-6 * max(1.0, abs(k.bound)):
            if k.kind in ("min_share", "max_share") and len(chosen):
                unmet.append(
                    f"{k.name} ({k.label or k.kind}): missed by {lhs / len(chosen):.2%} of slots "
                    f"(tolerance {share_tolerance:.2%})"
                )
            else:
                unmet.append(f"{k.name} ({k.label or k.kind}): short by {lhs - k.bound:.6g}")
    a = Allocation(
        cust[chosen].astype(np.int64),
        offer[chosen].astype(np.int64),
        np.ones(len(chosen)),
        duals=fractional.duals,
    )
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


class _Book:
    """Candidates sorted by customer, which of them are taken, and what the couplings use."""

    def __init__(
        self,
        problem: AllocationProblem,
        cust: np.ndarray,
        offer: np.ndarray,
        group: np.ndarray,
        cap: int,
    ) -> None:
        n, m = problem.shape
        self.problem, self.cust, self.offer, self.group, self.cap = problem, cust, offer, group, cap
        self.start = np.searchsorted(cust, np.arange(n + 1))
        self.state = np.zeros(len(cust), dtype=np.int8)  # 0 open, 1 taken, 2 refused
        self.used = np.zeros(len(problem.couplings))
        # per offer, the couplings with a non-zero weight on it (CSR), and their bases
        kidx, basis, wt, ptr = [], [], [], [0]
        for o in range(m):  # a loop over offers
            for i, k in enumerate(problem.couplings):
                if k.weight[o] != 0:
                    kidx.append(i)
                    basis.append(BASES.index(k.basis))
                    wt.append(float(k.weight[o]))
            ptr.append(len(kidx))
        self.kidx, self.kbasis = np.array(kidx, np.int64), np.array(basis, np.int64)
        self.kw, self.kptr = np.array(wt, np.float64), np.array(ptr, np.int64)
        self.units, self.u2d = as_basis(problem.units, m)
        self.cost, self.c2d = as_basis(problem.cost, m)

    def usage(self, idx: np.ndarray) -> np.ndarray:
        """Every coupling's left-hand side over the candidates ``idx``."""
        return _usage(
            idx, self.cust, self.offer, len(self.problem.couplings), self.kptr, self.kidx,
            self.kbasis, self.kw, self.units, self.u2d, self.cost, self.c2d,
        )  # fmt: skip

    def coef(self, i: int, idx: np.ndarray) -> np.ndarray:
        """Coupling ``i``'s coefficient of the candidates ``idx``."""
        k = self.problem.couplings[i]
        c, o = self.cust[idx], self.offer[idx]
        return k.weight[o].astype(np.float64) * self.problem.basis_at(k.basis, c, o)

    def greedy(self, order: np.ndarray, enforce: np.ndarray) -> None:
        """Take the open candidates of ``order`` in turn when they still fit (see `_greedy`)."""
        bounds = self.problem.bounds
        _greedy(
            order, self.cust, self.offer, self.group, self.cap, self.start,
            self.problem.slots, self.state, self.used, bounds, enforce,
            self.kptr, self.kidx, self.kbasis, self.kw, self.units, self.u2d, self.cost, self.c2d,
        )  # fmt: skip


@nb.njit(cache=True, inline="always")
def _base(b, c, o, units, u2d, cost, c2d):  # type: ignore[no-untyped-def]
    """The basis ``b`` (0 count, 1 units, 2 cost) of assignment ``(c, o)``."""
    if b == 0:
        return 1.0
    return units[c if u2d else 0, o] if b == 1 else cost[c if c2d else 0, o]


@nb.njit(cache=True)
def _usage(idx, cust, offer, kk, kptr, kidx, kbasis, kw, units, u2d, cost, c2d):  # type: ignore[no-untyped-def]
    used = np.zeros(kk)
    for j in idx:
        c, o = cust[j], offer[j]
        for t in range(kptr[o], kptr[o + 1]):
            base = _base(kbasis[t], c, o, units, u2d, cost, c2d)
            used[kidx[t]] += kw[t] * base
    return used


@nb.njit(cache=True)
def _greedy(
    order,
    cust,
    offer,
    group,
    cap,
    start,
    slots,
    state,
    used,
    bounds,
    enforce,
    kptr,
    kidx,
    kbasis,
    kw,
    units,
    u2d,
    cost,
    c2d,
):  # type: ignore[no-untyped-def]
    """One pass in ``order``: take a candidate if her slots, her brand cap and every enforced
    coupling it adds to still allow it (refused ones are tried again by later passes).

    Compiled: the check is sequential (each decision changes what is left), a loop numpy
    cannot express; one pass over millions of candidates takes well under a second.
    """
    taken = np.zeros(len(slots), dtype=np.int64)
    for j in range(len(state)):
        if state[j] == 1:
            taken[cust[j]] += 1
    for j in order:
        if state[j] == 1:
            continue
        c, o = cust[j], offer[j]
        if taken[c] >= slots[c]:
            state[j] = 2
            continue
        same = 0
        if taken[c] > 0:
            for t in range(start[c], start[c + 1]):
                if state[t] == 1 and group[offer[t]] == group[o]:
                    same += 1
        if same >= cap:
            state[j] = 2
            continue
        fits = True
        for t in range(kptr[o], kptr[o + 1]):
            base = _base(kbasis[t], c, o, units, u2d, cost, c2d)
            a = kw[t] * base
            i = kidx[t]
            if enforce[i] and a > 0 and used[i] + a > bounds[i] + 1e-9:
                fits = False
                break
        if not fits:
            state[j] = 2
            continue
        state[j] = 1
        taken[c] += 1
        for t in range(kptr[o], kptr[o + 1]):
            base = _base(kbasis[t], c, o, units, u2d, cost, c2d)
            used[kidx[t]] += kw[t] * base


def _repair_shares(
    problem: AllocationProblem,
    taken: np.ndarray,
    coef: Callable[[int, np.ndarray], np.ndarray],
    priority: np.ndarray,
    mixed: list[int],
    tolerance: float = 0.0,
) -> np.ndarray:
    """Drop the lowest-priority assignments counting against a broken mixed-sign constraint."""
    alive = taken.copy()
    for _ in range(10):  # a loop over repair passes; each only removes assignments
        changed = False
        for i in mixed:
            k = problem.couplings[i]
            idx = np.flatnonzero(alive)
            ci = coef(i, idx)
            slack = tolerance * len(idx) if k.kind in ("min_share", "max_share") else 0.0
            excess = ci.sum() - k.bound - slack
            if excess <= 1e-9:
                continue
            pos = idx[ci > 0]
            pos = pos[np.argsort(priority[pos], kind="stable")]
            need = np.searchsorted(np.cumsum(coef(i, pos)), excess - 1e-9) + 1
            alive[pos[:need]] = False
            changed = changed or len(pos[:need]) > 0
        if not changed:
            break
    return alive
