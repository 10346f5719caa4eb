"""Benchmark: constrained allocation, dual solver + rounding against HiGHS, and at scale.

Quality (10k and 30k customers x 40 offers, ``random_problem`` seed 0): HiGHS's exact LP
(the reference, run in the same process) against the dual solver followed by rounding; the
speed ratio (target >= 20x) and the gap of the rounded, integral decisions to HiGHS's LP
optimum (target < 0.5%).

Scale (1M and 5M x 40, 3 slots, stock, budgets, a campaign budget, a minimum share of new
designers): time to generate, solve and round, end to end, and peak memory (targets: 1M < 60 s
and < 4 GB; 5M < 5 min and < 12 GB), with the gap reported by the solver (against its own upper
bound) and the largest relative excess of the fractional solution over a bound. Each size runs
in a fresh process (spawn), so its peak memory is its own.

Usage: python bench/bench_decide.py [--quality-sizes 10000,30000] [--sizes 1000000,5000000]
       [--no-highs] [--highs-time-limit 900] [--no-quality] [--no-scale]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

from _memory import peak_gb

from nextbest.decide.dualip import DualipSolver
from nextbest.decide.exact import solve_exact
from nextbest.decide.instances import random_problem
from nextbest.decide.rounding import round_allocation
from nextbest.errors import InfeasibleError


def _sizes(text: str) -> list[int]:
    return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]


def _quality(n: int, highs: bool, time_limit: float) -> None:
    problem = random_problem(n, 40, seed=0)
    t = time.perf_counter()
    dual = DualipSolver().solve(problem)
    solved = time.perf_counter() - t
    t = time.perf_counter()
    rounded = round_allocation(problem, dual)
    ours = solved + time.perf_counter() - t
    broken = problem.violations(rounded)
    print(
        f"{n:,} x 40: dual solver {solved:.2f} s ({dual.info['evaluations']} passes) + rounding "
        f"{ours - solved:.2f} s = {ours:.2f} s; reported gap {rounded.info['gap']:.3%}, "
        f"violations {broken or 'none'}"
    )
    if not highs:
        return
    t = time.perf_counter()
    try:
        exact = solve_exact(problem, time_limit=time_limit)
    except InfeasibleError as exc:  # stopped by the time limit: no optimum to compare with
        reference = time.perf_counter() - t
        print(
            f"  reference (HiGHS, exact LP): no optimum in {reference:.0f} s ({exc}); speed "
            f"ratio > {reference / ours:.1f}x (target >= 20x); rounded dual within "
            f"{rounded.info['gap']:.3%} of its own proven upper bound (target < 0.5%)"
        )
        return
    reference = time.perf_counter() - t
    opt = float(exact.info["objective"])
    exact_rounded = problem.objective(round_allocation(problem, exact))
    print(
        f"  reference (HiGHS, exact LP): {reference:.2f} s; speed ratio {reference / ours:.1f}x "
        f"(target >= 20x); rounded dual {problem.objective(rounded) / opt:.5f} of the LP optimum, "
        f"gap {1 - problem.objective(rounded) / opt:.3%} (target < 0.5%); HiGHS's own solution "
        f"rounded: {exact_rounded / opt:.5f}; dual bound / optimum "
        f"{float(dual.info['upper_bound']) / opt:.5f}"
    )


def _scale(n: int) -> None:
    """One size, end to end; run in a fresh process so that the peak memory is its own."""
    started = time.perf_counter()
    problem = random_problem(n, 40, seed=0)
    generated = time.perf_counter() - started
    t = time.perf_counter()
    dual = DualipSolver().solve(problem)
    solved = time.perf_counter() - t
    t = time.perf_counter()
    rounded = round_allocation(problem, dual)
    rounding = time.perf_counter() - t
    total = time.perf_counter() - started
    target = "< 60 s, < 4 GB" if n <= 1_000_000 else "< 5 min, < 12 GB"
    print(
        f"{n:,} x 40, {len(problem.couplings)} couplings: generate {generated:.1f} s, solve "
        f"{solved:.1f} s ({dual.info['evaluations']} passes), round {rounding:.1f} s, total "
        f"{total:.1f} s; peak RSS {peak_gb():.2f} GB (target {target}); reported gap "
        f"{rounded.info['gap']:.3%}, fractional max violation {dual.info['max_violation']:.2e}, "
        f"rounded violations {problem.violations(rounded) or 'none'}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality-sizes", default="10000,30000")
    parser.add_argument("--sizes", default="1000000,5000000")
    parser.add_argument("--no-highs", action="store_true", help="skip the HiGHS reference")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument(
        "--highs-time-limit", type=float, default=900.0, help="seconds HiGHS may take per size"
    )
    parser.add_argument("--no-scale", action="store_true")
    args = parser.parse_args()
    if not args.no_quality:
        small = random_problem(200, 40)  # compile the kernels outside the timings
        round_allocation(small, DualipSolver(max_iter=3).solve(small))
        for n in _sizes(args.quality_sizes):
            _quality(n, highs=not args.no_highs, time_limit=args.highs_time_limit)
    if not args.no_scale:
        ctx = mp.get_context("spawn")
        for n in _sizes(args.sizes):
            proc = ctx.Process(target=_scale, args=(n,))
            proc.start()
            proc.join()


if __name__ == "__main__":
    main()
