"""Allocation: rounding never breaks a hard limit, the dual solver against HiGHS, duals, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextbest.decide.dualip import DualipSolver
from nextbest.decide.exact import solve_exact
from nextbest.decide.instances import random_problem
from nextbest.decide.problem import Allocation, AllocationProblem, Coupling
from nextbest.decide.rounding import round_allocation
from nextbest.errors import ConfigError, InfeasibleError


def _small_problem(seed: int, n: int, m: int) -> AllocationProblem:
    """Random eligibility, slots 0..3, budgets/stock/caps (some zero), shares, brand caps."""
    rng = np.random.default_rng(seed)
    units = rng.uniform(0.0, 0.2, (n, m))
    cost = rng.uniform(0.0, 2.0, (n, m)) * (rng.random(m) < 0.7)
    value = rng.normal(1.0, 1.0, (n, m))
    couplings = []
    for j in range(m):  # a loop over offers: stock, a budget, a count cap, each maybe zero
        w = np.eye(m)[j]
        tight = rng.choice([0.0, 0.3, 1.0, 10.0])
        couplings.append(Coupling(f"stock[{j}]", "stock", "units", w, tight * units[:, j].sum()))
        if rng.random() < 0.5:
            couplings.append(Coupling(f"budget[{j}]", "budget", "cost", w, tight * n / 4))
        if rng.random() < 0.3:
            couplings.append(Coupling(f"cap[{j}]", "capacity", "count", w, float(rng.integers(5))))
    couplings.append(
        Coupling("campaign", "campaign_budget", "cost", np.ones(m), float(rng.uniform(0, n)))
    )
    new = rng.random(m) < 0.4
    q = float(rng.uniform(0.0, 0.6))
    couplings.append(Coupling("min_share[new]", "min_share", "count", q - new, 0.0))
    if rng.random() < 0.5:
        couplings.append(Coupling("max_share[new]", "max_share", "count", new - 0.8, 0.0))
    eligible = rng.random((n, m)) < rng.uniform(0.2, 1.0)
    eligible[0, 0] = True  # solve_exact fails on an LP with no column ("Empty"): see report
    return AllocationProblem(
        value=value,
        eligible=eligible,
        slots=rng.integers(0, 4, n),
        couplings=couplings,
        units=units,
        cost=cost,
        group=rng.integers(0, max(1, m // 2), m),
        max_per_group=int(rng.integers(1, 3)),
    )


def _check_integral(problem: AllocationProblem, a: Allocation) -> None:
    n, m = problem.shape
    assert np.all(a.share == 1.0)
    assert problem.eligible[a.customer, a.offer].all()
    assert len(np.unique(a.customer * m + a.offer)) == len(a)
    assert (np.bincount(a.customer, minlength=n) <= problem.slots).all()
    key = a.customer * (int(problem.group.max()) + 1) + problem.group[a.offer]
    _, per_group = np.unique(key, return_counts=True)
    assert per_group.max(initial=0) <= problem.max_per_group
    lhs = problem.usage(a)
    unmet = str(a.info["unmet"])
    for k, used in zip(problem.couplings, lhs, strict=True):
        if (k.weight >= 0).all():
            assert used <= k.bound + 1e-9, k.name
        elif used > k.bound + 1e-6:
            assert k.name in unmet, k.name
    named = [v for v in problem.violations(a) if not any(k.name in v for k in problem.couplings)]
    assert named == []
    broken = {v.split(":")[0] for v in problem.violations(a)}
    assert broken <= {k.name for k in problem.couplings if k.is_minimum or (k.weight < 0).any()}


@settings(deadline=None, max_examples=60, derandomize=True)
@given(
    seed=st.integers(0, 2**31 - 1), n=st.integers(1, 60), m=st.integers(1, 8)
)  # fmt: skip
def test_rounding_keeps_every_hard_constraint(seed: int, n: int, m: int) -> None:
    problem = _small_problem(seed, n, m)
    for fractional in (solve_exact(problem), DualipSolver(max_iter=60).solve(problem)):
        _check_integral(problem, round_allocation(problem, fractional, random_state=seed))


# -- the dual solver against HiGHS ---------------------------------------------------------------


def _against_highs(n: int, m: int, seed: int) -> tuple[float, float, float, float]:
    problem = random_problem(n, m, seed=seed)
    opt = float(solve_exact(problem).info["objective"])
    dual = DualipSolver().solve(problem)
    rounded = round_allocation(problem, dual)
    shares = {k.name for k in problem.couplings if k.kind in ("min_share", "max_share")}
    hard = [v for v in problem.violations(rounded) if v.split(":")[0] not in shares]
    assert hard == []
    for k, used in zip(problem.couplings, problem.usage(rounded), strict=True):
        if k.name in shares:  # within the tolerance of half a point of all slots
            assert used <= k.bound + 0.005 * len(rounded) + 1e-9, k.name
    return (
        opt,
        float(dual.info["upper_bound"]),
        problem.objective(rounded),
        float(rounded.info["gap"]),
    )


def _check_against_highs(n: int, m: int, seed: int) -> None:
    opt, upper, rounded, gap = _against_highs(n, m, seed)
    assert upper >= opt * (1 - 1e-6)  # a valid bound on the LP optimum
    assert rounded >= 0.995 * opt
    assert gap >= (opt - rounded) / opt - 1e-9  # the reported gap bounds the true one


@pytest.mark.parametrize("seed", [0, 1])
def test_dual_solver_is_within_half_a_percent_of_highs(seed: int) -> None:
    _check_against_highs(3_000, 20, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1])
def test_dual_solver_is_within_half_a_percent_of_highs_on_40_offers(seed: int) -> None:
    _check_against_highs(6_000, 40, seed)


def test_accelerated_gradient_reaches_a_bound_within_one_percent() -> None:
    problem = random_problem(500, 8, seed=3)
    opt = float(solve_exact(problem).info["objective"])
    upper = float(DualipSolver(method="agd", max_iter=2_000).solve(problem).info["upper_bound"])
    assert opt * (1 - 1e-6) <= upper <= 1.01 * opt


# -- shadow prices ----------------------------------------------------------------------------


def _priced_problem() -> AllocationProblem:
    """3 customers, 1 slot each; offer A worth 3 to all, B worth 1, 2, 1.5; 1.5 units of A.

    A goes whole to customer 0 (who loses 2 by taking B instead), half to customer 2 (1.5):
    one more unit of A moves the other half of customer 2 from B, earning 1.5 per unit.
    """
    return AllocationProblem(
        value=np.array([[3.0, 1.0], [3.0, 2.0], [3.0, 1.5]]),
        eligible=np.ones((3, 2), dtype=bool),
        slots=np.ones(3, dtype=np.int64),
        units=np.ones((3, 2)),
        couplings=[
            Coupling("stock[A]", "stock", "units", np.array([1.0, 0.0]), 1.5),
            Coupling("stock[B]", "stock", "units", np.array([0.0, 1.0]), 10.0),
        ],
    )


def test_highs_duals_are_the_shadow_prices() -> None:
    exact = solve_exact(_priced_problem())
    assert exact.info["objective"] == pytest.approx(3 + 0.5 * 3 + 2 + 0.5 * 1.5)
    np.testing.assert_allclose(exact.duals, [1.5, 0.0], atol=1e-9)


def test_dual_solver_prices_are_the_shadow_prices() -> None:
    duals = DualipSolver().solve(_priced_problem()).duals
    assert duals[0] == pytest.approx(1.5, rel=0.02)
    assert duals[1] == pytest.approx(0.0, abs=0.03)


# -- errors ------------------------------------------------------------------------------------


def test_an_unreachable_minimum_names_its_constraint() -> None:
    eligible = np.ones((5, 3), dtype=bool)
    eligible[3:, :2] = False  # brand X (offers 0 and 1) reaches 3 customers of one slot each
    problem = AllocationProblem(
        value=np.ones((5, 3)),
        eligible=eligible,
        slots=np.ones(5, dtype=np.int64),
        couplings=[
            Coupling(
                "min_count[X]",
                "min_count",
                "count",
                np.array([-1.0, -1.0, 0.0]),
                -4.0,
                "at least 4 slots for brand X",
            )
        ],
    )
    with pytest.raises(InfeasibleError, match="at least 4 slots for brand X"):
        solve_exact(problem)


def _coupling(basis: str = "count", weight: np.ndarray | None = None) -> Coupling:
    w = np.ones(3) if weight is None else weight
    return Coupling("k", "budget", basis, w, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"eligible": np.ones((2, 3), dtype=bool)},
            "eligible: expected shape (4, 3) like value, got (2, 3)",
        ),
        ({"slots": np.ones(3, dtype=np.int64)}, "slots: expected one per customer (4), got (3,)"),
        (
            {"slots": np.array([1, -1, 1, 1])},
            "slots: expected whole numbers >= 0, got a negative one",
        ),
        ({"units": np.ones((4, 2))}, "units: expected shape (4, 3) or (3,), got (4, 2)"),
        ({"cost": -np.ones(3)}, "cost: expected values >= 0, got a negative one"),
        (
            {"couplings": [_coupling(weight=np.ones(2))]},
            "constraint k: expected one weight per offer (3), got shape (2,)",
        ),
        (
            {"couplings": [_coupling("weight")]},
            "constraint k: basis must be one of count, units, cost, got 'weight'",
        ),
        (
            {"couplings": [_coupling("units")]},
            "constraint k is on units, but the problem has no units",
        ),
    ],
)
def test_bad_input_is_refused_with_a_message(change: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "value": np.ones((4, 3)),
        "eligible": np.ones((4, 3), dtype=bool),
        "slots": np.ones(4, dtype=np.int64),
    }
    with pytest.raises(ConfigError, match=re.escape(message)):
        AllocationProblem(**{**base, **change})  # type: ignore[arg-type]
