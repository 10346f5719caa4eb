"""Dual decomposition for allocations of millions of customers (after LinkedIn's DuaLip).

The linear programme of :mod:`nextbest.decide.problem` is made strongly concave by a ridge
term, ``max V.x - (gamma / 2) |x|^2``, so that its Lagrangian dual over the coupling
constraints,

    g(lambda) = lambda . b + sum_c max_{x_c in P_c} (V_c - A_c' lambda) . x_c - gamma/2 |x_c|^2,

is smooth, with gradient ``b - A x(lambda)``. Its only shared state is ``lambda``, one price
per coupling constraint; given the prices, each customer's best ``x_c`` is the Euclidean
projection of her reduced values ``(V_c - A_c' lambda) / gamma`` onto her local polytope
``P_c = {0 <= x <= 1, sum x <= slots_c, x = 0 where ineligible}``, computed for all customers
at once and independently, so the same step shards across a cluster by customer. ``g`` is
minimised over ``lambda >= 0`` by accelerated projected gradient descent (Nesterov; FISTA of
Beck & Teboulle 2009) with a backtracking step and adaptive restart (O'Donoghue & Candes
2015), or by L-BFGS-B on the same dual and gradient (the default: with tens of prices it
converges in far fewer passes), after Basu, Ghoting, Mazumder & Pan (2020), "ECLIPSE: An
Extreme-Scale Linear Program Solver for Web-Applications" (ICML), the method of DuaLip.

Reported quality, in :attr:`Allocation.info`:

- ``upper_bound``: the unregularised Lagrangian dual at the final prices,
  ``lambda . b + sum_c (top slots_c positive reduced values)``. By weak duality it bounds the
  LP optimum, and so every feasible allocation's value, from above.
- ``objective``: the value of the (fractional) primal ``x(lambda)``, with ``max_violation``
  its largest relative excess over a coupling bound. :mod:`.rounding` turns it into
  integral, feasible decisions, whose value against ``upper_bound`` is a proven gap.

The projection: with ``y = (V_c - A_c' lambda) / gamma``, ``x = clip(y - tau, 0, 1)`` with
``tau = 0`` when ``sum clip(y, 0, 1) <= slots``, else the ``tau > 0`` at which the sum equals the
slots. When the ``slots``-th and next largest ``y`` are at least 1 apart (most customers once
``gamma`` is small), that is the top-``slots`` indicator; the other rows are solved by
bisection on ``tau``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import minimize

from nextbest.decide._kernels import as_basis, evaluate, project_rows
from nextbest.decide.problem import Allocation, AllocationProblem
from nextbest.errors import ConfigError
from nextbest.progress import NullReporter, Reporter

__all__ = ["DualipSolver"]

log = logging.getLogger(__name__)


@dataclass
class _Eval:
    dual: float  # regularised dual objective g(lambda)
    grad: np.ndarray  # b - A x, scaled
    primal: float  # V . x
    ridge: float  # sum x^2
    upper: float  # unregularised Lagrangian dual


class DualipSolver:
    """Dual ascent on the ridge-regularised allocation LP, one price per coupling.

    Parameters
    ----------
    gamma
        Ridge weight, relative to the typical positive value (its 90th percentile): smaller is
        closer to the LP and slower to converge.
    method
        ``"agd"``: accelerated projected gradient (FISTA with backtracking and restarts), as
        DuaLip; ``"lbfgs"``: the same dual, gradient and projection, with bound-constrained
        quasi-Newton steps (L-BFGS-B, Byrd et al. 1995), which needs far fewer passes over the
        customers when the constraints are few (tens to hundreds), as here.
    max_iter
        Most passes over the customers.
    tol
        Stop when no coupling is exceeded by more than ``tol`` of its scale and the dual has
        stopped improving by more than ``tol`` relatively.
    time_limit
        Seconds after which the best prices so far are used.
    sample
        From 8,000 customers on, prices are first found on a random sample of a quarter of
        them, at most ``sample`` (bounds scaled to its share; the sample's own prices come
        from a sample in turn), then refined on all customers from there. 0: never.
    continuation
        Solve first with ``10 x gamma`` (smoother, better conditioned), then with ``gamma``
        from those prices. Without it, single-``gamma`` runs stopped on kinks of the dual
        with a primal several times over a bound on 2 of 5 test instances.
    """

    def __init__(
        self,
        gamma: float = 1e-3,
        method: str = "lbfgs",
        max_iter: int = 500,
        tol: float = 1e-5,
        time_limit: float | None = None,
        sample: int = 200_000,
        continuation: bool = True,
    ) -> None:
        self.sample = sample
        self.continuation = continuation
        self.gamma = gamma
        self.method = method
        self.max_iter = max_iter
        self.tol = tol
        self.time_limit = time_limit

    # -- one pass over the customers ---------------------------------------------------------

    def _setup(self, problem: AllocationProblem) -> None:
        if self.method not in ("lbfgs", "agd"):
            raise ConfigError(f"method must be lbfgs or agd, got {self.method!r}")
        if not self.gamma > 0:
            raise ConfigError(f"gamma must be > 0, got {self.gamma!r}")
        self.problem = problem
        n, m = problem.shape
        self._w = problem.weights()
        self._scale = np.ones(len(problem.couplings))
        self._b = problem.bounds
        positive = problem.value[problem.eligible & (problem.value > 0)]
        vscale = float(np.quantile(positive, 0.9)) if positive.size else 1.0
        self._gamma = self.gamma * vscale
        self._value = np.ascontiguousarray(problem.value, dtype=np.float32)
        self._eligible = np.ascontiguousarray(problem.eligible)
        self._units, self._u2d = as_basis(problem.units, m)
        self._cost, self._c2d = as_basis(problem.cost, m)
        self._slots = np.ascontiguousarray(problem.slots, dtype=np.int64)
        self._blocks = max(1, min(64, n // 1024 + 1))
        self.evaluations: float = 0.0

    def _prices(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per basis, the price per offer: ``sum_k lambda_k w_k[o]`` (in value units)."""
        unscaled = lam / self._scale
        return tuple(unscaled @ self._w[b] for b in ("count", "units", "cost"))  # type: ignore[return-value]

    def _kernel_args(self, lam: np.ndarray) -> tuple[object, ...]:
        """The problem's arrays and the prices at ``lam``, as the kernels take them."""
        pc, pu, pk = self._prices(lam)
        return (
            self._value, self._eligible, self._units, self._u2d, self._cost, self._c2d,
            self._slots, pc, pu, pk, self._gamma,
        )  # fmt: skip

    def _evaluate(self, lam: np.ndarray) -> _Eval:
        self.evaluations += 1
        use, (dual, primal, ridge, upper) = evaluate(*self._kernel_args(lam), self._blocks)  # type: ignore[call-arg]
        self._use = use
        ax = self._w["count"] @ use[0] + self._w["units"] @ use[1] + self._w["cost"] @ use[2]
        base = float(lam @ self._b)
        return _Eval(dual + base, self._b - ax / self._scale, primal, ridge, upper + base)

    def _allocation(self, lam: np.ndarray, chunk: int = 65_536) -> Allocation:
        n, _ = self.problem.shape
        parts = []
        for start in range(0, n, chunk):  # a loop over chunks of customers
            x = project_rows(*self._kernel_args(lam), start, min(n, start + chunk))  # type: ignore[call-arg]
            c, o = np.nonzero(x > 1e-6)
            parts.append((c + start, o, x[c, o]))
        if not parts:
            return Allocation(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        return Allocation(
            np.concatenate([p[0] for p in parts]).astype(np.int64),
            np.concatenate([p[1] for p in parts]).astype(np.int64),
            np.concatenate([p[2] for p in parts]),
        )

    # -- the outer loop ----------------------------------------------------------------------

    def solve(
        self,
        problem: AllocationProblem,
        *,
        warm_start: np.ndarray | None = None,
        reporter: Reporter | None = None,
    ) -> Allocation:
        """Prices, and the primal allocation they induce, for ``problem``.

        ``warm_start``: dual prices to start from (from yesterday's run, or a sample).
        """
        reporter = reporter or NullReporter()
        started = time.perf_counter()
        self._setup(problem)
        n, m = problem.shape
        kk = len(problem.couplings)
        self._evaluate(np.zeros(kk))
        report = _report_scales(problem, self._w, self._use)
        self._scale = _row_scales(problem, self._w)
        self._b = problem.bounds / self._scale
        gammas = [self._gamma]
        if warm_start is None and kk and self.sample and n >= 8_000:
            # prices from a random sample of customers (bounds scaled to its size): near the
            # full problem's, so that few passes over all customers remain
            warm_start = self._sample_prices(problem, reporter)
        elif self.continuation and warm_start is None:
            gammas = [10 * self._gamma, self._gamma]  # smooth first, then close to the LP
        lam = np.zeros(kk) if warm_start is None else np.asarray(warm_start) * self._scale
        reporter.start(
            self.max_iter * len(gammas), f"Allocating {n:,} customers x {m} offers (dual prices)"
        )
        final_gamma = self._gamma
        for gamma in gammas if kk else []:  # a loop over smoothing stages
            self._gamma = gamma
            lam = (
                self._lbfgs(lam, started, reporter)
                if self.method == "lbfgs"
                else self._agd(lam, started, reporter)
            )
        self._gamma = final_gamma
        reporter.finish()
        final = self._evaluate(lam)
        alloc = self._allocation(lam)
        violation = float(np.max(np.maximum(0.0, -final.grad * self._scale / report), initial=0.0))
        elapsed = time.perf_counter() - started
        alloc.duals = lam / self._scale
        alloc.info = {
            "solver": f"dualip-{self.method}",
            "objective": final.primal,
            "upper_bound": final.upper,
            "regularised_dual": final.dual,
            "gap": (final.upper - final.primal) / max(1e-12, abs(final.upper)),
            "max_violation": violation,
            "evaluations": self.evaluations,
            "seconds": elapsed,
            "gamma": self._gamma,
        }
        log.info(
            "dualip: %d x %d, objective %.6g, bound %.6g, %d passes, %.1f s",
            n,
            m,
            final.primal,
            final.upper,
            self.evaluations,
            elapsed,
        )
        return alloc

    def _sample_prices(self, problem: AllocationProblem, reporter: Reporter) -> np.ndarray:
        n = problem.shape[0]
        size = min(self.sample, n // 4)
        rows = np.sort(np.random.default_rng(0).choice(n, size, replace=False))
        fraction = size / n

        def cut(arr: np.ndarray | None) -> np.ndarray | None:
            return arr if arr is None or arr.ndim == 1 else arr[rows]

        sub = AllocationProblem(
            value=problem.value[rows],
            eligible=problem.eligible[rows],
            slots=problem.slots[rows],
            couplings=[replace(k, bound=k.bound * fraction) for k in problem.couplings],
            units=cut(problem.units),
            cost=cut(problem.cost),
            offer_ids=problem.offer_ids,
        )
        solver = DualipSolver(
            gamma=self.gamma,
            method=self.method,
            max_iter=self.max_iter,
            tol=self.tol,
            sample=self.sample,
            continuation=self.continuation,
        )
        duals = solver.solve(sub, reporter=reporter).duals
        self.evaluations += solver.evaluations * fraction  # in passes over all customers
        assert duals is not None
        return duals

    def _out_of_time(self, started: float) -> bool:
        return self.time_limit is not None and time.perf_counter() - started > self.time_limit

    def _lbfgs(self, lam: np.ndarray, started: float, reporter: Reporter) -> np.ndarray:
        def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
            ev = self._evaluate(v)
            reporter.advance(1)
            if self._out_of_time(started):
                raise _Stop(v)
            return ev.dual, ev.grad

        try:
            res = minimize(
                fun,
                lam,
                jac=True,
                method="L-BFGS-B",
                bounds=[(0.0, None)] * len(lam),
                options={
                    "maxfun": self.max_iter,
                    "maxiter": self.max_iter,
                    "ftol": self.tol * 1e-3,
                    "gtol": self.tol,
                },
            )
        except _Stop as stop:
            return np.maximum(0.0, stop.lam)
        return np.maximum(0.0, res.x)

    def _agd(self, lam: np.ndarray, started: float, reporter: Reporter) -> np.ndarray:
        y = lam.copy()
        t = 1.0
        lip = 1.0 / self._gamma
        ev_y = self._evaluate(y)
        best_dual, best = math.inf, lam
        while self.evaluations < self.max_iter and not self._out_of_time(started):
            while True:  # backtracking on the step 1 / lip
                new = np.maximum(0.0, y - ev_y.grad / lip)
                ev_new = self._evaluate(new)
                reporter.advance(1)
                d = new - y
                bound = ev_y.dual + ev_y.grad @ d + 0.5 * lip * (d @ d)
                if ev_new.dual <= bound + 1e-12 * (1 + abs(ev_y.dual)):
                    break
                lip *= 2.0
            if ev_new.dual < best_dual:
                best_dual, best = ev_new.dual, new
            violation = float(np.max(np.maximum(0.0, -ev_new.grad), initial=0.0))
            if violation <= self.tol and ev_y.dual - ev_new.dual <= self.tol * abs(ev_new.dual):
                return new
            restart = ev_y.grad @ (new - lam) > 0  # momentum points uphill of g: restart
            t_next = 1.0 if restart else (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = new.copy() if restart else np.maximum(0.0, new + ((t - 1) / t_next) * (new - lam))
            lam, t = new, t_next
            ev_y = ev_new if restart else self._evaluate(y)
            lip *= 0.7
        return best


class _Stop(Exception):
    def __init__(self, lam: np.ndarray) -> None:
        self.lam = lam


def _row_scales(problem: AllocationProblem, w: dict[str, np.ndarray]) -> np.ndarray:
    """Jacobi preconditioning: each coupling scaled by the norm of its row of ``A``.

    The dual's Hessian is ``A P A' / gamma`` (``P`` the projection's Jacobian); scaling row
    ``k`` by ``sqrt(sum_{c,o eligible} (w_k[o] B_k[c,o])^2)`` gives it a unit diagonal at most,
    so that a nearly sold-out offer (a tiny bound) and a share over every slot (a dense row)
    are stepped on alike. Without it the dual solver stalled at an 8% gap where HiGHS
    proves the optimum (tests/decide/test_ground_truth.py).
    """
    eligible = problem.eligible
    squares = {"count": eligible.sum(axis=0).astype(np.float64)}
    for b in ("units", "cost"):
        basis = problem.basis(b) if getattr(problem, b) is not None else None
        if basis is None:
            squares[b] = np.zeros(problem.shape[1])
        elif basis.ndim == 1:
            squares[b] = squares["count"] * basis.astype(np.float64) ** 2
        else:
            squares[b] = np.einsum(
                "ij,ij->j", eligible, basis.astype(np.float64) ** 2, dtype=np.float64
            )
    diag = sum((w[b] ** 2) @ squares[b] for b in ("count", "units", "cost"))
    return np.sqrt(np.maximum(diag, 1e-18))


def _report_scales(
    problem: AllocationProblem, w: dict[str, np.ndarray], use: np.ndarray
) -> np.ndarray:
    """What a violation is measured against: the bound, or 5% of the unconstrained usage."""
    carried = sum(np.abs(w[b]) @ use[i] for i, b in enumerate(("count", "units", "cost")))
    return np.maximum(np.maximum(np.abs(problem.bounds), 0.05 * carried), 1e-9)
