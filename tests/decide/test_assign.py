"""Hashed assignment: the holdout of the daily batch exactly, stable, proportions as weighted."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from nextbest.decide import assign, holdout_mask, parse_campaign
from nextbest.decide.assign import hash_position
from nextbest.errors import ConfigError

IDS = np.array([f"C{i:07d}" for i in range(50_000)])


@pytest.mark.parametrize(
    ("experiment", "salt", "share"),
    [("daily-email", "2026", 0.1), ("flash", "", 0.37), ("x", "s", 0.5)],
)
def test_the_holdout_arm_is_exactly_the_holdout_mask(
    experiment: str, salt: str, share: float
) -> None:
    arms = {"holdout": share, "optimised": 1 - share}
    got = assign(IDS, experiment, salt, arms) == 0
    np.testing.assert_array_equal(got, holdout_mask(IDS, experiment, salt, share))
    # and so is the campaign's own weighting, holdout first, with several treatment arms
    spec = parse_campaign(
        {
            "campaign": {
                "name": "c",
                "experiment": {
                    "name": experiment,
                    "salt": salt,
                    "holdout": share,
                    "arms": {"a": 2.0, "b": 1.0},
                },
            }
        }
    )
    weights = spec.campaign.experiment.weights()
    assert list(weights) == ["holdout", "a", "b"]
    assert weights["a"] == pytest.approx((1 - share) * 2 / 3)
    names = assign(IDS, experiment, salt, weights, names=True)
    np.testing.assert_array_equal(names == "holdout", holdout_mask(IDS, experiment, salt, share))


def test_positions_are_the_documented_hash() -> None:
    # computed independently: md5 of "salt:experiment", 16 hex digits as pandas' hash key
    key = hashlib.md5(b"2026:daily-email").hexdigest()[:16]
    expected = pd.util.hash_array(IDS[:100].astype(object), hash_key=key) / 2.0**64
    np.testing.assert_array_equal(hash_position(IDS[:100], "daily-email", "2026"), expected)
    arms = {"a": 0.25, "b": 0.25, "c": 0.5}
    want = np.where(expected < 0.25, 0, np.where(expected < 0.5, 1, 2))
    np.testing.assert_array_equal(assign(IDS[:100], "daily-email", "2026", arms), want)


def test_assignment_is_stable_and_depends_on_salt_and_experiment() -> None:
    arms = {"holdout": 1.0, "a": 1.0, "b": 2.0}  # not normalised: shares 1/4, 1/4, 1/2
    first = assign(IDS, "e", "s", arms)
    np.testing.assert_array_equal(first, assign(IDS.copy(), "e", "s", dict(arms)))
    shuffled = np.random.default_rng(0).permutation(len(IDS))
    np.testing.assert_array_equal(first[shuffled], assign(IDS[shuffled], "e", "s", arms))
    # a customer's arm does not depend on who else is assigned
    np.testing.assert_array_equal(first[:10], assign(IDS[:10], "e", "s", arms))
    for other in (assign(IDS, "e", "t", arms), assign(IDS, "f", "s", arms)):
        # independent reshuffles agree about as often as chance: 1/16 + 1/16 + 1/4
        assert np.mean(first == other) == pytest.approx(0.375, abs=0.01)


def test_a_weight_change_moves_only_customers_near_the_boundary() -> None:
    before = assign(IDS, "e", "s", {"holdout": 0.10, "optimised": 0.90})
    after = assign(IDS, "e", "s", {"holdout": 0.12, "optimised": 0.88})
    moved = before != after
    assert np.all(before[moved] == 1) and np.all(after[moved] == 0)
    assert moved.mean() == pytest.approx(0.02, abs=0.003)


@settings(max_examples=40, deadline=None)
@given(
    weights=hs.lists(hs.floats(0.05, 1.0), min_size=1, max_size=5),
    experiment=hs.text(min_size=1, max_size=12),
    salt=hs.text(max_size=8),
)
def test_arm_proportions_match_the_weights(
    weights: list[float], experiment: str, salt: str
) -> None:
    arms = {f"arm{i}": w for i, w in enumerate(weights)}
    n = 20_000
    got = np.bincount(assign(IDS[:n], experiment, salt, arms), minlength=len(arms))
    share = np.array(weights) / sum(weights)
    sd = np.sqrt(n * share * (1 - share))
    # a 5-sd band: a fair hash falls outside it with probability below 1e-6 per arm
    assert np.all(np.abs(got - n * share) <= 5 * sd + 1), (got, n * share)


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ({}, "expected at least one arm name -> weight, got none"),
        ({"a": 0.5, "b": 0.0}, "every weight must be a number > 0, got {'b': 0.0}"),
        ({"a": -1.0}, "every weight must be a number > 0, got {'a': -1.0}"),
        ({"a": float("nan")}, "every weight must be a number > 0, got {'a': nan}"),
    ],
)
def test_bad_weights_are_named(arms: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        assign(IDS[:5], "e", "s", arms)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("experiment", "message"),
    [
        ({"name": "e", "arms": {"holdout": 1.0}}, "'holdout' is the control arm"),
        ({"name": "e", "arms": {"a": 0}}, "arm weights must be > 0, got {'a': 0.0}"),
        ({"name": "e", "arms": {}}, "'campaign.experiment.arms'"),
    ],
)
def test_bad_campaign_arms_are_named(experiment: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_campaign({"campaign": {"name": "c", "experiment": experiment}})
    assert message in str(info.value)


def test_the_default_is_one_optimised_arm_beside_the_holdout() -> None:
    spec = parse_campaign({"campaign": {"name": "c", "experiment": {"name": "e"}}})
    assert spec.campaign.experiment.weights() == {"holdout": 0.1, "optimised": 0.9}
    none = parse_campaign({"campaign": {"name": "c", "experiment": {"name": "e", "holdout": 0}}})
    assert none.campaign.experiment.weights() == {"optimised": 1.0}
