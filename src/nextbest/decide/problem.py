"""The allocation problem: which offers each customer gets, under constraints that couple them.

With ``x[c, o]`` in ``[0, 1]`` the share of customer ``c``'s slots given to offer ``o``::

    maximise    sum_{c,o} x[c,o] * value[c,o]
    subject to  x[c,o] = 0                          where o is not eligible for c
                sum_o x[c,o] <= slots[c]            (local: each customer on her own)
                sum_{c,o} x[c,o] * w_k[o] * B_k[c,o] <= b_k    for each coupling k

Every constraint that couples customers (budgets, stock, campaign budgets, channel
capacities, minimum and maximum shares, minimum counts) has the same shape: a weight per
offer ``w_k`` times one of three bases ``B_k``: ``count`` (1: slots used), ``units``
(expected units sold, ``P(purchase)``: stock) or ``cost`` (expected cost: budgets). A share
constraint "at least q of all slots go to new designers" is ``sum x * (q - [o is new]) <= 0``
and a minimum count "at least N slots for brand X" is ``-sum_{o of X} x <= -N``, so one form
covers them all, and the dual prices of the solvers are one number per coupling.

:class:`Allocation` is a solution in sparse form (customer, offer, share), so that millions of
customers x a few slots fit in memory; :meth:`AllocationProblem.usage` is the left-hand side of
every coupling for it, and :meth:`AllocationProblem.violations` what it breaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from nextbest.errors import ConfigError

__all__ = ["BASES", "Allocation", "AllocationProblem", "Coupling"]

Basis = Literal["count", "units", "cost"]
BASES: tuple[str, ...] = ("count", "units", "cost")


@dataclass(frozen=True)
class Coupling:
    """One constraint that couples customers: ``sum x[c,o] w[o] B[c,o] <= bound``.

    ``kind`` says what it is (``budget``, ``stock``, ``campaign_budget``, ``capacity``,
    ``min_share``, ``max_share``, ``min_count``) and ``label`` says it in words for summaries
    and explanations ("budget of offer S0012: 1,500.00").
    """

    name: str
    kind: str
    basis: Basis
    weight: np.ndarray
    bound: float
    label: str = ""

    @property
    def is_minimum(self) -> bool:
        """A lower limit written as an upper one (negative weights): x = 0 may break it."""
        return self.kind in ("min_count", "min_share")


@dataclass
class Allocation:
    """A solution in sparse form: ``x[customer[i], offer[i]] = share[i]``; the rest is 0."""

    customer: np.ndarray
    offer: np.ndarray
    share: np.ndarray
    duals: np.ndarray | None = None
    info: dict[str, float | int | str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.customer)


@dataclass
class AllocationProblem:
    """Values, eligibility, slots and coupling constraints of one allocation.

    Parameters
    ----------
    value
        ``n x m``: what assigning offer ``o`` to customer ``c`` is worth (the objective).
    eligible
        ``n x m`` booleans: the assignments allowed at all (rules, consent, contact policy).
    slots
        Per customer, the most offers she may get (0: none).
    units
        ``n x m`` expected units sold per assignment (the ``units`` basis), if any coupling
        uses it.
    cost
        ``n x m`` or per-offer ``m`` expected cost of an assignment (the ``cost`` basis).
    couplings
        The constraints across customers.
    offer_ids
        The offers' ids, for messages and output.
    group
        Per offer a group code (its brand): a slate holds at most ``max_per_group`` offers of
        one group. Enforced when decisions are made integral (see :mod:`.rounding`).
    """

    value: np.ndarray
    eligible: np.ndarray
    slots: np.ndarray
    couplings: list[Coupling] = field(default_factory=list)
    units: np.ndarray | None = None
    cost: np.ndarray | None = None
    offer_ids: np.ndarray | None = None
    group: np.ndarray | None = None
    max_per_group: int | None = None

    def __post_init__(self) -> None:
        self.value = np.asarray(self.value, dtype=np.float32)
        self.eligible = np.asarray(self.eligible, dtype=bool)
        self.slots = np.asarray(self.slots, dtype=np.int64)
        n, m = self.shape
        if self.eligible.shape != (n, m):
            raise ConfigError(
                f"eligible: expected shape {(n, m)} like value, got {self.eligible.shape}"
            )
        if self.slots.shape != (n,):
            raise ConfigError(f"slots: expected one per customer ({n}), got {self.slots.shape}")
        if (self.slots < 0).any():
            raise ConfigError("slots: expected whole numbers >= 0, got a negative one")
        for name in ("units", "cost"):
            arr = getattr(self, name)
            if arr is not None:
                arr = np.asarray(arr, dtype=np.float32)
                if arr.shape not in ((n, m), (m,)):
                    raise ConfigError(f"{name}: expected shape {(n, m)} or {(m,)}, got {arr.shape}")
                if (arr < 0).any():
                    raise ConfigError(f"{name}: expected values >= 0, got a negative one")
                setattr(self, name, arr)
        if self.offer_ids is None:
            self.offer_ids = np.array([f"offer{j}" for j in range(m)])
        for k in self.couplings:
            if k.weight.shape != (m,):
                raise ConfigError(
                    f"constraint {k.name}: expected one weight per offer ({m}), "
                    f"got shape {k.weight.shape}"
                )
            if k.basis not in BASES:
                raise ConfigError(
                    f"constraint {k.name}: basis must be one of {', '.join(BASES)}, got {k.basis!r}"
                )
            if getattr(self, k.basis) is None and k.basis != "count":
                raise ConfigError(
                    f"constraint {k.name} is on {k.basis}, but the problem has no {k.basis}"
                )

    @property
    def shape(self) -> tuple[int, int]:
        return self.value.shape  # type: ignore[return-value]

    @property
    def count(self) -> np.ndarray:
        return np.ones(self.shape[1], dtype=np.float32)

    def basis(self, name: str, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """The ``name`` basis for ``rows``: ``n_rows x m``, or ``m`` when per offer."""
        if name == "count":
            return self.count
        arr = getattr(self, name)
        return arr if arr.ndim == 1 else arr[rows]

    def basis_at(self, name: str, customer: np.ndarray, offer: np.ndarray) -> np.ndarray:
        """The ``name`` basis of the assignments ``(customer[i], offer[i])``."""
        if name == "count":
            return np.ones(len(customer))
        arr = getattr(self, name)
        return (arr[offer] if arr.ndim == 1 else arr[customer, offer]).astype(np.float64)

    def prices(self, duals: np.ndarray | None) -> dict[str, np.ndarray]:
        """Per basis, the price per offer of dual prices ``duals``: ``sum_k duals_k w_k[o]``."""
        if duals is None:
            duals = np.zeros(len(self.couplings))
        w = self.weights()
        return {b: duals @ w[b] for b in BASES}

    def shadow_cost(
        self, prices: dict[str, np.ndarray], customer: np.ndarray, offer: np.ndarray
    ) -> np.ndarray:
        """What the priced resources of assignments ``(customer[i], offer[i])`` cost."""
        total = np.zeros(len(customer))
        for b, price in prices.items():
            if b == "count" or getattr(self, b) is not None:
                total += np.asarray(price)[offer] * self.basis_at(b, customer, offer)
        return total

    def weights(self) -> dict[str, np.ndarray]:
        """Per basis, the ``K x m`` weights of the couplings (zero rows for other bases)."""
        out = {}
        for b in BASES:
            w = np.zeros((len(self.couplings), self.shape[1]))
            for i, k in enumerate(self.couplings):
                if k.basis == b:
                    w[i] = k.weight
            out[b] = w
        return out

    @property
    def bounds(self) -> np.ndarray:
        return np.array([k.bound for k in self.couplings], dtype=np.float64)

    def used_bases(self) -> list[str]:
        return [b for b in BASES if any(k.basis == b for k in self.couplings)]

    def usage(self, a: Allocation) -> np.ndarray:
        """The left-hand side of every coupling for allocation ``a``."""
        m = self.shape[1]
        lhs = np.zeros(len(self.couplings))
        w = self.weights()
        for b in self.used_bases():
            per_offer = np.bincount(
                a.offer, weights=a.share * self.basis_at(b, a.customer, a.offer), minlength=m
            )
            lhs += w[b] @ per_offer
        return lhs

    def objective(self, a: Allocation) -> float:
        return float(np.dot(a.share, self.value[a.customer, a.offer].astype(np.float64)))

    def violations(self, a: Allocation, tol: float = 1e-6) -> list[str]:
        """Every constraint ``a`` breaks, in words (empty when it is feasible)."""
        n = self.shape[0]
        found = []
        if len(a) and ((a.share < -tol) | (a.share > 1 + tol)).any():
            found.append("a share outside [0, 1]")
        if len(a) and not self.eligible[a.customer, a.offer][a.share > tol].all():
            found.append("an ineligible offer was allocated")
        per_customer = np.bincount(a.customer, weights=a.share, minlength=n)
        over = np.flatnonzero(per_customer > self.slots + tol)
        if len(over):
            found.append(f"{len(over)} customers over their slots (first: row {over[0]})")
        lhs = self.usage(a)
        for k, used in zip(self.couplings, lhs, strict=True):
            scale = max(1.0, abs(k.bound))
            if used > k.bound + tol * scale:
                found.append(f"{k.name}: {used:.6g} > {k.bound:.6g}")
        return found
