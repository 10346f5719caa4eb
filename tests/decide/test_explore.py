"""Exploration: logged propensities against simulation, quadrature against Monte Carlo, IPS."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.decide.explore import explore, offer_posteriors
from nextbest.errors import ConfigError

# One customer setup: 6 offers, offer 5 ineligible, offers 3 and 4 new to her, slate 0, 1, 2.
ALPHA = np.array([2.0, 5.0, 1.0, 30.0, 0.5, 1.0])
BETA = np.array([20.0, 30.0, 5.0, 300.0, 10.0, 1.0])
SLATE = np.array([0, 1, 2])
ELIGIBLE = np.array([True, True, True, True, True, False])
NOVEL = np.array([False, False, False, True, True, False])


def _same(n: int, *rows: np.ndarray) -> list[np.ndarray]:
    return [np.tile(r, (n, 1)) for r in rows]


def _candidates(slates: np.ndarray, final: np.ndarray, eligible: np.ndarray, j: int) -> np.ndarray:
    """Slot ``j``'s candidate set when it was decided: eligible minus the other slots' offers."""
    others = np.concatenate([final[:, :j], slates[:, j + 1 :]], axis=1)
    taken = np.zeros(eligible.shape, dtype=bool)
    r, s = np.nonzero(others >= 0)
    taken[r, others[r, s]] = True
    return eligible & ~taken


def _check_frequencies(slates: np.ndarray, out: Any, j: int) -> tuple[float, float]:
    """Per context of slot ``j`` (the final offers before it) and offer: frequency vs propensity.

    Returns the largest absolute difference and the largest difference in binomial errors.
    """
    worst, worst_z = 0.0, 0.0
    before = out.slates[:, :j]
    contexts, inverse = np.unique(before, axis=0, return_inverse=True)
    for ctx in range(len(contexts)):
        rows = inverse.ravel() == ctx
        if rows.sum() < 2_000:
            continue
        shown = out.slates[rows, j]
        for o in np.unique(shown):
            logged = out.propensity[rows, j][shown == o]
            assert np.ptp(logged) < 1e-12  # one context, one offer: one propensity
            p, freq = logged[0], (shown == o).mean()
            se = np.sqrt(p * (1 - p) / rows.sum())
            worst, worst_z = max(worst, abs(freq - p)), max(worst_z, abs(freq - p) / se)
    return worst, worst_z


def test_share_zero_leaves_slates_unchanged() -> None:
    rng = np.random.default_rng(1)
    slates = np.array([[0, 1, -1], [2, -1, -1], [-1, -1, -1], [3, 0, 4]])
    eligible = np.ones((4, 5), dtype=bool)
    for method in ("epsilon", "thompson"):
        out = explore(
            slates, eligible, share=0.0, method=method, rng=rng, posterior=(ALPHA[:5], BETA[:5])
        )
        np.testing.assert_array_equal(out.slates, slates)
        np.testing.assert_array_equal(out.propensity, (slates >= 0).astype(float))
        assert not out.explored.any() and not out.novel.any()


def test_share_one_epsilon_logs_one_over_the_candidates() -> None:
    rng = np.random.default_rng(2)
    n, m = 5_000, 8
    eligible = rng.random((n, m)) < 0.6
    eligible[:, :3] = True
    slates = np.where(rng.random((n, 3)) < 0.2, -1, np.arange(3))
    out = explore(slates, eligible, share=1.0, method="epsilon", rng=rng)
    for j in range(3):
        size = _candidates(slates, out.slates, eligible, j).sum(axis=1)
        filled = slates[:, j] >= 0
        assert (out.propensity[filled, j] == 1.0 / size[filled]).all()
        assert (out.explored[:, j] == filled).all()


@pytest.mark.parametrize(
    ("method", "novelty_share"),
    [("epsilon", 0.0), ("epsilon", 0.6), ("thompson", 0.0), ("thompson", 0.6)],
)
def test_frequencies_match_logged_propensities(method: str, novelty_share: float) -> None:
    n = 200_000
    slates, eligible, novel = _same(n, SLATE, ELIGIBLE, NOVEL)
    out = explore(
        slates,
        eligible,
        share=0.4,
        method=method,
        rng=np.random.default_rng(3),
        posterior=(ALPHA, BETA),
        novel=novel,
        novelty_share=novelty_share,
    )
    for j in range(3):  # slot 1 has one context of 200,000 rows, the later ones several
        worst, worst_z = _check_frequencies(slates, out, j)
        assert worst_z < 4.0, (j, worst, worst_z)
        assert j > 0 or worst < 0.004, worst
    if method == "epsilon":  # slot 1 by hand: S = {0, 3, 4}, its novel part {3, 4}
        q0 = (1 - novelty_share) / 3
        assert out.propensity[out.slates[:, 0] == 0, 0][0] == pytest.approx(0.6 + 0.4 * q0)
        q3 = novelty_share / 2 + (1 - novelty_share) / 3
        assert out.propensity[out.slates[:, 0] == 3, 0][0] == pytest.approx(0.4 * q3)


@pytest.mark.parametrize(
    ("alpha", "beta"),
    [
        ([2.0, 5.0, 1.0, 30.0], [20.0, 30.0, 5.0, 300.0]),  # click rates of a few percent
        ([2000.0, 2100.0, 1900.0], [98000.0, 97900.0, 98100.0]),  # very peaked, close
        ([1.0, 1.0, 0.5, 0.3], [1.0, 1.0, 0.5, 3.0]),  # very flat, U-shaped
        ([2000.0, 0.4, 1.0], [98000.0, 19.6, 30.0]),  # peaked beside flat
        ([0.2, 0.1, 5000.0], [0.2, 0.5, 5000.0]),
    ],
)
def test_thompson_quadrature_matches_monte_carlo(alpha: list[float], beta: list[float]) -> None:
    a, b = np.array(alpha), np.array(beta)
    m, per = len(a), 50
    # Exploit offer o in block o; share 1/2: an unexplored row logs 1/2 + q(o)/2.
    slates = np.repeat(np.arange(m), per)[:, None]
    out = explore(
        slates,
        np.ones((m * per, m), dtype=bool),
        share=0.5,
        rng=np.random.default_rng(4),
        posterior=(a, b),
    )
    kept = out.slates[:, 0] == slates[:, 0]
    q = np.array([2 * out.propensity[kept & (slates[:, 0] == o), 0][0] - 1 for o in range(m)])
    draws = np.random.default_rng(5).beta(a, b, size=(1_000_000, m))
    mc = np.bincount(draws.argmax(axis=1), minlength=m) / len(draws)
    assert np.abs(q - mc).max() < 0.005, (q, mc)
    assert q.sum() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("method", ["epsilon", "thompson"])
def test_propensities_of_the_possible_outcomes_sum_to_one(method: str) -> None:
    n = 40_000
    posterior = (np.array([3.0, 2.0, 2.0, 1.0, 2.0]), np.array([20.0, 20.0, 10.0, 10.0, 30.0]))
    slates, eligible, novel = _same(
        n, np.array([0, 1]), np.ones(5, dtype=bool), np.array([0, 0, 1, 1, 0], dtype=bool)
    )
    out = explore(
        slates,
        eligible,
        share=0.3,
        method=method,
        rng=np.random.default_rng(6),
        posterior=posterior,
        novel=novel,
        novelty_share=0.5,
    )
    tolerance = 1e-12 if method == "epsilon" else 2e-3
    # Slot 1 may show 0 (kept or drawn) or a candidate 2, 3, 4 (offer 1 is in slot 2).
    first = out.slates[:, 0]
    assert set(first) == {0, 2, 3, 4}
    total = sum(out.propensity[first == o, 0][0] for o in (0, 2, 3, 4))
    assert total == pytest.approx(1.0, abs=tolerance)
    for o in (2, 3, 4):  # given slot 1's offer, slot 2 shows 1 or one of the other three
        rows = first == o
        second = out.slates[rows, 1]
        outcomes = set(second)
        assert outcomes == {0, 1, 2, 3, 4} - {o}
        total = sum(out.propensity[rows, 1][second == s][0] for s in outcomes)
        assert total == pytest.approx(1.0, abs=tolerance)


def test_ips_with_the_logged_propensities_is_unbiased() -> None:
    rng = np.random.default_rng(7)
    n, m, k = 100_000, 8, 2
    reward = rng.beta(1.0, 6.0, size=(n, m))  # the true click probability per customer, offer
    eligible = rng.random((n, m)) < 0.6
    eligible[np.arange(n), rng.integers(0, m, n)] = True
    score = np.where(eligible, reward, -1.0)
    slates = np.argsort(-score, axis=1)[:, :k]  # greedy on the truth, one slot empty if need be
    slates = np.where(np.take_along_axis(eligible, slates, axis=1), slates, -1)
    out = explore(
        slates,
        eligible,
        share=0.3,
        rng=rng,
        posterior=(rng.uniform(1, 5, m), rng.uniform(20, 60, m)),
        novel=rng.random((n, m)) < 0.3,
        novelty_share=0.4,
    )
    for j in range(k):
        rows = out.slates[:, j] >= 0
        cand = _candidates(slates, out.slates, eligible, j)[rows]
        shown = out.slates[rows, j]
        clicked = rng.random(rows.sum()) < reward[rows, shown]
        # target: uniform over the slot's candidates (eligible, not in another slot)
        terms = clicked / cand.sum(axis=1) / out.propensity[rows, j]
        truth = (np.where(cand, reward[rows], 0.0).sum(axis=1) / cand.sum(axis=1)).mean()
        se = terms.std() / np.sqrt(len(terms))
        assert abs(terms.mean() - truth) < 3 * se, (j, terms.mean(), truth, se)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 60), st.integers(1, 9), st.integers(1, 4)),
    share=st.sampled_from([0.0, 0.3, 1.0]),
    method=st.sampled_from(["epsilon", "thompson"]),
    novelty_share=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_slates_stay_valid(
    seed: int, shape: tuple[int, int, int], share: float, method: str, novelty_share: float
) -> None:
    rng = np.random.default_rng(seed)
    n, m, k = shape
    eligible = rng.random((n, m)) < 0.6
    novel = rng.random((n, m)) < 0.4
    picks = np.argsort(-(rng.random((n, m)) + eligible), axis=1)[:, : min(k, m)]
    ok = np.take_along_axis(eligible, picks, axis=1) & (rng.random(picks.shape) < 0.8)
    slates = np.where(ok, picks, -1)
    out = explore(
        slates,
        eligible,
        share=share,
        method=method,
        rng=rng,
        posterior=(rng.uniform(0.2, 50, m), rng.uniform(0.2, 500, m)),
        novel=novel,
        novelty_share=novelty_share,
    )
    filled = out.slates >= 0
    np.testing.assert_array_equal(filled, slates >= 0)  # empty slots stay empty
    assert (out.propensity[~filled] == 0).all() and not out.explored[~filled].any()
    assert ((out.propensity[filled] > 0) & (out.propensity[filled] <= 1 + 1e-9)).all()
    r, s = np.nonzero(filled)
    assert eligible[r, out.slates[r, s]].all()  # explored or not, every offer is eligible
    np.testing.assert_array_equal(out.novel[r, s], novel[r, out.slates[r, s]])
    for row in out.slates:
        shown = row[row >= 0]
        assert len(set(shown)) == len(shown)  # no offer twice in a slate


AS_OF = datetime(2024, 6, 1, tzinfo=UTC)
FILES = {
    "customers.csv": "customer_id\nc1\nc2\nc3\n",
    "offers.csv": "offer_id,kind\no1,sale\no2,sale\no3,sale\n",
    "decisions.csv": """decision_id,ts,customer_id,offer_id,channel,slot,propensity
d1,2024-05-30T08:00:00Z,c1,o1,email,0,1
d2,2024-05-30T08:00:00Z,c2,o1,email,0,1
d3,2024-05-30T08:00:00Z,c1,o2,email,1,1
d4,2024-05-31T08:00:00Z,c2,o2,email,1,1
d5,2024-05-31T08:00:00Z,c3,o2,email,0,1
d6,2024-06-01T08:00:00Z,c1,o1,email,0,1
d7,2024-05-31T08:00:00Z,c3,,email,,0.1
""",
    "events.csv": """event_id,customer_id,ts,type,offer_id,channel,decision_id
e1,c1,2024-05-30T09:00:00Z,email_click,o1,email,d1
e2,c1,2024-05-30T09:05:00Z,email_click,o1,email,d1
e3,c1,2024-05-30T10:00:00Z,push_open,o2,push,d3
e4,c2,2024-05-31T10:00:00Z,purchase,o2,web,d4
e5,c2,2024-06-02T10:00:00Z,email_click,o1,email,d2
e6,c3,2024-05-31T10:00:00Z,email_open,o2,email,d5
e7,c1,2024-06-01T09:00:00Z,email_click,o1,email,d6
""",
}


@pytest.fixture
def logged(workspace: Workspace) -> Workspace:
    for name, text in FILES.items():
        (workspace.root / name).write_text(text)
    paths = [workspace.root / name for name in FILES]
    results = ingest(workspace.warehouse, paths, workspace.config.ingest)
    assert all(r.total("quarantined") == 0 for r in results), [r.problems for r in results]
    return workspace


def test_offer_posteriors_count_shows_and_clicks_before_the_date(logged: Workspace) -> None:
    ids = ["o1", "o2", "o3", "o9"]
    # Before June 1st: o1 shown twice (d1 clicked twice: once), o2 three times (d3 opened in
    # push); pooled rate 2 / 5, prior Beta(8, 12). o3 and the unknown o9: the prior alone.
    alpha, beta = offer_posteriors(logged.warehouse, ids, AS_OF)
    np.testing.assert_allclose(alpha, [9.0, 9.0, 8.0, 8.0])
    np.testing.assert_allclose(beta, [13.0, 14.0, 12.0, 12.0])
    # Purchases: only d4, rate 1 / 5, prior Beta(2, 8) at strength 10.
    alpha, beta = offer_posteriors(
        logged.warehouse, ids, AS_OF, prior_strength=10.0, response="purchase"
    )
    np.testing.assert_allclose(alpha, [2.0, 3.0, 2.0, 2.0])
    np.testing.assert_allclose(beta, [10.0, 10.0, 8.0, 8.0])
    # Before any decision: the default rate 0.02.
    alpha, beta = offer_posteriors(logged.warehouse, ids, datetime(2024, 1, 1, tzinfo=UTC))
    np.testing.assert_allclose(alpha, [0.4] * 4)
    np.testing.assert_allclose(beta, [19.6] * 4)


GOOD: dict[str, Any] = {
    "slates": np.array([[0, 1], [2, -1]]),
    "eligible": np.ones((2, 3), dtype=bool),
    "share": 0.2,
    "method": "thompson",
    "posterior": (np.ones(3), np.ones(3)),
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"share": 1.5}, "share must be a probability in [0, 1], got 1.5"),
        ({"share": -0.1}, "share must be a probability in [0, 1], got -0.1"),
        ({"novelty_share": 2.0}, "novelty_share must be a probability in [0, 1], got 2.0"),
        ({"method": "ucb"}, "method must be one of thompson, epsilon, got 'ucb'"),
        (
            {"posterior": None},
            "method 'thompson' needs posterior=(alpha, beta), one Beta per offer: "
            "pass offer_posteriors(...) or use method='epsilon'",
        ),
        ({"grid": 1}, "grid must be a whole number >= 2, got 1"),
        (
            {"slates": np.array([0, 1])},
            "slates must be a 2-D integer array (customers x slots), got shape (2,) of int64",
        ),
        (
            {"slates": np.array([[0.0, 1.0]])},
            "slates must be a 2-D integer array (customers x slots), got shape (1, 2) of float64",
        ),
        (
            {"eligible": np.ones((3, 3), dtype=bool)},
            "eligible must have shape (2, m), one row per slate, got (3, 3)",
        ),
        (
            {"novel": np.ones((2, 4), dtype=bool)},
            "novel must have shape (2, 3) like eligible, got (2, 4)",
        ),
        (
            {"posterior": (np.ones(4), np.ones(3))},
            "posterior alpha must have shape (3,), got (4,)",
        ),
        (
            {"posterior": (np.ones(3), np.array([1.0, 0.0, 1.0]))},
            "posterior beta must be > 0 for every offer",
        ),
        (
            {"slates": np.array([[0, 1], [3, -1]])},
            "slates[1, 0] = 3: expected an offer index in 0..2 or -1 for an empty slot",
        ),
        (
            {"eligible": np.array([[True, True, True], [True, True, False]])},
            "slates[1, 0] = offer 2 is not eligible for customer row 1: "
            "the optimiser must place only eligible offers",
        ),
        (
            {"slates": np.array([[0, 1], [2, 2]])},
            "slates row 1 shows offer 2 twice: a slate must not repeat an offer",
        ),
    ],
)
def test_bad_arguments_are_named(change: dict[str, Any], message: str) -> None:
    kwargs = {**GOOD, **change}
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        explore(rng=np.random.default_rng(0), **kwargs)


def test_offer_posteriors_reject_bad_arguments(workspace: Workspace) -> None:
    with pytest.raises(ConfigError, match=r"^response must be one of click, purchase, got 'view'$"):
        offer_posteriors(workspace.warehouse, ["o1"], AS_OF, response="view")
    with pytest.raises(ConfigError, match=r"^prior_strength must be a number > 0, got 0\.0$"):
        offer_posteriors(workspace.warehouse, ["o1"], AS_OF, prior_strength=0.0)
