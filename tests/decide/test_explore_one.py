"""One customer's exploration: the list path gives the array path's numbers to the last bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextbest.decide.explore import (
    _checked,
    _explore_rows,
    _one_customer,
    explore,
    thompson_table,
)


def _case(seed: int, m: int, k: int, share: float, method: str, novelty: float | None) -> dict:
    """A random customer: eligible offers, a valid slate (some empty slots), novel offers."""
    rng = np.random.default_rng(seed)
    eligible = rng.random((1, m)) < rng.uniform(0.2, 1.0)
    picks = np.argsort(-(rng.random(m) + eligible[0]))[: min(k, m)]
    keep = eligible[0, picks] & (rng.random(len(picks)) < 0.85)
    slate = np.full((1, k), -1, dtype=np.int64)
    slate[0, : len(picks)] = np.where(keep, picks, -1)
    slate[0] = slate[0, rng.permutation(k)]  # empty slots anywhere, as the array path allows
    alpha, beta = rng.uniform(0.2, 40, m), rng.uniform(0.2, 400, m)
    return {
        "slates": slate,
        "eligible": eligible,
        "share": share,
        "method": method,
        "posterior": (alpha, beta),
        "novel": None if novelty is None else rng.random((1, m)) < 0.4,
        "novelty_share": 0.0 if novelty is None else novelty,
        "grid": int(rng.integers(2, 40)),
    }


def _both(case: dict[str, Any], seed: int, table: bool) -> tuple[Any, Any, float, float]:
    """The list path (``explore`` on one customer) and the array path on the same case."""
    args = dict(case)
    if table and args["method"] == "thompson":
        args["table"] = thompson_table(*args["posterior"], args["grid"])
    assert _one_customer(*(case[n] for n in _ORDER)) is not None  # the list path is taken
    rng_one, rng_rows = np.random.default_rng(seed), np.random.default_rng(seed)
    one = explore(rng=rng_one, **args)
    slates, eligible, novel, posterior = _checked(*(case[n] for n in _ORDER))
    rows = _explore_rows(
        slates,
        eligible,
        novel,
        posterior,
        share=case["share"],
        novelty_share=case["novelty_share"],
        grid=case["grid"],
        table=args.get("table"),
        rng=rng_rows,
    )
    return one, rows, rng_one.random(), rng_rows.random()


_ORDER = ("slates", "eligible", "share", "method", "posterior", "novel", "novelty_share", "grid")


def _assert_same(one: Any, rows: Any, after_one: float, after_rows: float) -> None:
    for name in ("slates", "propensity", "explored", "novel"):
        a, b = getattr(one, name), getattr(rows, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), (name, a, b)  # bit for bit
    assert after_one == after_rows  # the generator was left in the same state


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    m=st.integers(1, 12),
    k=st.integers(1, 5),
    share=st.one_of(st.sampled_from([0.0, 0.05, 0.5, 1.0]), st.floats(0.0, 1.0)),
    method=st.sampled_from(["epsilon", "thompson"]),
    novelty=st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)),
    table=st.booleans(),
)
def test_one_customer_equals_the_array_path(
    seed: int, m: int, k: int, share: float, method: str, novelty: float | None, table: bool
) -> None:
    _assert_same(*_both(_case(seed, m, k, share, method, novelty), seed + 1, table))


def test_one_customer_equals_the_array_path_over_a_seeded_table() -> None:
    """2,000 seeded cases like the service's (share 5 %, half the draws novel, 40 offers) and
    smaller ones where exploration lands often, so every branch is met many times."""
    explored = novel_draws = 0
    for seed in range(2_000):
        rng = np.random.default_rng(seed)
        m, k = (40, 3) if seed % 2 else (int(rng.integers(2, 8)), int(rng.integers(1, 4)))
        share = 0.05 if seed % 4 == 1 else float(rng.choice([0.3, 0.8, 1.0]))
        method = "thompson" if seed % 3 == 0 else "epsilon"
        case = _case(seed, m, k, share, method, 0.5 if seed % 5 else None)
        one, *rest = _both(case, 10_000 + seed, table=seed % 7 != 0)
        _assert_same(one, *rest)
        explored += int(one.explored.sum())
        novel_draws += int((one.explored & one.novel).sum())
    assert explored > 1_000 and novel_draws > 300  # the draws were exercised, not skipped


@pytest.mark.parametrize(
    "change",
    [
        {"slates": np.array([[0, 0]])},  # a repeat: the array path's checks refuse it
        {"slates": np.array([[0, 5]])},  # out of range
        {"eligible": np.array([[True, False, True]])},  # offer 1 is not eligible
        {"eligible": np.ones((1, 3), dtype=int)},  # not booleans: the array path converts
        {"share": 1.5},
        {"method": "ucb"},
        {"posterior": (np.ones(3), np.zeros(3))},
        {"novel": np.ones((1, 4), dtype=bool)},
    ],
)
def test_anything_unusual_goes_to_the_array_path(change: dict[str, Any]) -> None:
    case = {
        "slates": np.array([[0, 1]]),
        "eligible": np.ones((1, 3), dtype=bool),
        "share": 0.2,
        "method": "thompson",
        "posterior": (np.ones(3), np.ones(3)),
        "novel": None,
        "novelty_share": 0.0,
        "grid": 16,
        **change,
    }
    assert _one_customer(*(case[n] for n in _ORDER)) is None
