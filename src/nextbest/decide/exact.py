"""The exact linear programme of an allocation, solved by HiGHS (Huangfu & Hall 2018).

One column per eligible (customer, offer) pair, one row per customer (her slots) and one per
coupling constraint. HiGHS returns the optimum, its dual prices (the shadow price of every
coupling: what one more unit of budget or stock would earn) and, when the constraints
contradict each other, an irreducible infeasible subset, which :func:`solve_exact` turns into
an :class:`~nextbest.errors.InfeasibleError` naming the constraints in conflict.

Exact solutions suit small and medium problems (tens of thousands of customers x 40 offers);
beyond, :mod:`nextbest.decide.dualip` solves the same problem by dual decomposition.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import highspy
import numpy as np
import scipy.sparse as sp

from nextbest.decide.problem import Allocation, AllocationProblem
from nextbest.errors import InfeasibleError

__all__ = ["solve_exact"]

log = logging.getLogger(__name__)


def _matrix(problem: AllocationProblem, rows: np.ndarray, cols: np.ndarray) -> sp.csc_matrix:
    """Constraint matrix: customers' slot rows, then one row per coupling."""
    n, _ = problem.shape
    nvar = len(rows)
    var = np.arange(nvar)
    slot_part = sp.csr_matrix((np.ones(nvar), (rows, var)), shape=(n, nvar))
    blocks = [slot_part]
    for k in problem.couplings:
        coef = k.weight[cols] * problem.basis_at(k.basis, rows, cols)
        keep = np.flatnonzero(coef != 0)
        blocks.append(sp.csr_matrix((coef[keep], (np.zeros(len(keep)), keep)), shape=(1, nvar)))
    return sp.vstack(blocks, format="csc")


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1: highspy prints its banner from C++ on construction, before
    ``output_flag`` can be set, and it would corrupt ``--json`` output."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _highs() -> highspy.Highs:
    with _quiet_stdout():
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
    return h


def solve_exact(
    problem: AllocationProblem, *, time_limit: float | None = None, threads: int = 1
) -> Allocation:
    """The optimal fractional allocation of ``problem``, with the couplings' dual prices.

    Raises
    ------
    InfeasibleError
        When no allocation meets every constraint; the message names the constraints of an
        irreducible conflicting subset.
    """
    started = time.perf_counter()
    n, m = problem.shape
    rows, cols = np.nonzero(problem.eligible)
    if not len(rows):  # nothing can be allocated: x = 0 is the only solution
        short = [k.label or k.name for k in problem.couplings if k.bound < 0]
        if short:
            raise InfeasibleError(
                "the constraints cannot all hold: no customer is eligible for any offer, so "
                + "; ".join(short)
                + " cannot be met. Widen eligibility or lower the minimum"
            )
        return Allocation(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0),
            duals=np.zeros(len(problem.couplings)),
            info={"solver": "highs", "objective": 0.0, "upper_bound": 0.0, "gap": 0.0},
        )
    a = _matrix(problem, rows, cols)
    lp = highspy.HighsLp()
    lp.num_col_ = len(rows)
    lp.num_row_ = a.shape[0]
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = problem.value[rows, cols].astype(np.float64)
    lp.col_lower_ = np.zeros(len(rows))
    lp.col_upper_ = np.ones(len(rows))
    lp.row_lower_ = np.full(a.shape[0], -highspy.kHighsInf)
    lp.row_upper_ = np.concatenate([problem.slots.astype(np.float64), problem.bounds])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr
    lp.a_matrix_.index_ = a.indices
    lp.a_matrix_.value_ = a.data
    lp.a_matrix_.num_col_ = len(rows)
    lp.a_matrix_.num_row_ = a.shape[0]
    h = _highs()
    h.setOptionValue("threads", threads)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        raise InfeasibleError(_conflict(h, problem))
    if status != highspy.HighsModelStatus.kOptimal:
        raise InfeasibleError(
            f"HiGHS stopped without an optimum ({h.modelStatusToString(status)}) on "
            f"{n:,} customers x {m} offers; raise the time limit or use the dualip solver"
        )
    solution = h.getSolution()
    x = np.asarray(solution.col_value)
    # For a maximisation HiGHS gives a binding upper limit a dual >= 0: what one more unit of
    # the bound would earn (its shadow price).
    duals = np.asarray(solution.row_dual)[n:]
    keep = x > 1e-9
    elapsed = time.perf_counter() - started
    objective = float(h.getInfo().objective_function_value)
    log.info("HiGHS: %d x %d, objective %.6g in %.2f s", n, m, objective, elapsed)
    return Allocation(
        customer=rows[keep],
        offer=cols[keep],
        share=np.minimum(1.0, x[keep]),
        duals=np.maximum(0.0, duals),
        info={
            "solver": "highs",
            "objective": objective,
            "upper_bound": objective,
            "gap": 0.0,
            "seconds": elapsed,
            "iterations": int(h.getInfo().simplex_iteration_count),
        },
    )


def _conflict(h: highspy.Highs, problem: AllocationProblem) -> str:
    """The constraints of an irreducible infeasible subset, in words."""
    n, _ = problem.shape
    names: list[str] = []
    try:
        status, iis = h.getIis()
        found = list(iis.row_index_) if status == highspy.HighsStatus.kOk else []
    except (AttributeError, RuntimeError, TypeError):  # an older highspy without IIS
        found = []
    slots_named = False
    for row in found:
        if row >= n:
            k = problem.couplings[row - n]
            names.append(k.label or k.name)
        elif not slots_named:
            names.append("customers' slots")
            slots_named = True
    if not names:
        names = [k.label or k.name for k in problem.couplings if k.is_minimum]
    return (
        "the constraints cannot all hold: "
        + "; ".join(names)
        + ". Lower a minimum (share or count), raise a budget or stock, or widen eligibility"
    )
