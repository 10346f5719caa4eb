"""The flat forest and the per-customer pair walk give LightGBM's own scores."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from nextbest.decide.scoring import PairScorer, _History
from nextbest.errors import DataError
from nextbest.models import CalibratedBoostedClassifier
from nextbest.models.forest import Forest


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    z = rng.poisson(0.7, size=n).astype(float)  # many exact zeros
    x[rng.random(n) < 0.15] = np.nan
    colour = rng.choice(["red", "green", "blue", "amber", "teal"], size=n).astype(object)
    colour[rng.random(n) < 0.1] = None
    logit = np.nan_to_num(x) + 0.8 * z - 1.5 * (colour == "red") + 0.5 * (colour == "teal")
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"x": x, "z": z, "colour": colour}), y


def test_raw_scores_equal_lightgbm_to_the_last_bit() -> None:
    X, y = _frame(4000, 0)
    model = CalibratedBoostedClassifier(n_estimators=60, min_child_samples=20).fit(X, y)
    test, _ = _frame(3000, 1)
    test.loc[:40, "colour"] = "violet"  # unseen: NaN for the trees
    coded = np.column_stack([model.encode(c, test[c]) for c in model.features_])
    coded[:5, 2] = -1.0  # a negative category code goes right, as in LightGBM
    booster = model.booster_.booster_
    forest = model.forest()
    assert forest.categorical.any() and np.isnan(coded).any()
    expected = booster.predict(coded, raw_score=True)
    np.testing.assert_array_equal(forest.raw(coded), expected)
    np.testing.assert_array_equal(forest.raw(coded, threads=False), expected)  # the service's
    assert forest.feature.dtype == forest.left.dtype == forest.roots.dtype == np.int32
    np.testing.assert_allclose(
        model.predict_proba_raw(expected), model.predict_proba_matrix(coded)[:, 1], rtol=1e-12
    )


def test_zero_as_missing_and_the_best_iteration() -> None:
    X, y = _frame(4000, 2)
    data = X[["x", "z"]].to_numpy()
    params = {"objective": "binary", "zero_as_missing": True, "verbose": -1, "seed": 0}
    train = lgb.Dataset(data[:3000], y[:3000])
    valid = lgb.Dataset(data[3000:], y[3000:], reference=train)
    booster = lgb.train(
        params,
        train,
        num_boost_round=400,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(5, verbose=False)],
        keep_training_booster=True,  # keeps the trees after the best round
    )
    assert 0 < booster.best_iteration < booster.num_trees()
    forest = Forest.from_booster(booster)
    assert len(forest.roots) == booster.best_iteration
    assert (forest.missing == 1).any()  # the Zero missing type was used
    np.testing.assert_array_equal(forest.raw(data), booster.predict(data, raw_score=True))
    np.testing.assert_array_equal(forest.raw(data, threads=False), forest.raw(data))
    np.testing.assert_allclose(forest.probability(forest.raw(data)), booster.predict(data))


def test_a_regression_booster_is_refused() -> None:
    X, y = _frame(500, 3)
    booster = lgb.train(
        {"objective": "regression", "verbose": -1}, lgb.Dataset(X[["x"]].to_numpy(), y), 5
    )
    with pytest.raises(DataError, match="binary LightGBM classifier"):
        Forest.from_booster(booster)


def _scorer(n: int, m: int, seed: int) -> PairScorer:
    """A day's pieces: n customers, m offers (more than 64: two mask words), brand histories."""
    rng = np.random.default_rng(seed)
    tenure = rng.gamma(2.0, 100.0, size=n)
    tenure[rng.random(n) < 0.1] = np.nan
    customers = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "tenure_days": tenure,
            "region": rng.choice(["north", "south", "east"], size=n),
        }
    )
    brands = np.array([f"b{i}" for i in range(12)], dtype=object)
    offer_brand = rng.choice(brands, size=m).astype(object)
    offer_brand[rng.random(m) < 0.1] = None  # offers of no brand
    offers = pd.DataFrame(
        {
            "offer_id": [f"o{j}" for j in range(m)],
            "offer_margin": rng.uniform(2, 40, size=m),
            "offer_category": rng.choice(["shoes", "bags", "coats", "hats"], size=m),
            "offer_brand": offer_brand,
        }
    )
    values = pd.Index(pd.Series(offer_brand).dropna().unique())
    rows = sorted(
        {
            (int(c), int(v))
            for c, v in zip(
                rng.integers(0, n, 3 * n), rng.integers(0, len(values), 3 * n), strict=True
            )
        }
    )
    cust = np.array([r[0] for r in rows], dtype=np.int64)
    code = np.array([r[1] for r in rows], dtype=np.int64)
    shown = rng.poisson(2.0, size=len(rows)).astype(float)
    ctr = rng.beta(1, 8, size=len(rows))
    ctr[shown == 0] = np.nan
    history = {
        "brand": _History(
            customer=cust,
            value=code,
            values={"aff_brand_shown": shown, "aff_brand_ctr": ctr},
            offer_value=values.get_indexer(offer_brand),
            n_values=len(values),
        )
    }
    return PairScorer(customers=customers, offers=offers, history=history)


def test_the_pair_walk_scores_every_pair_as_lightgbm_does() -> None:
    n, m = 400, 70
    scorer = _scorer(n, m, 4)
    names = ["tenure_days", "region", "offer_margin", "offer_category", "aff_brand_shown",
             "aff_brand_ctr", "slot"]  # fmt: skip
    pairs = pd.DataFrame(
        {name: np.concatenate([scorer.column(name, j) for j in range(m)]) for name in names}
    )  # offer-major: all customers with offer 0, then offer 1, ...
    rng = np.random.default_rng(5)
    shown = pairs.aff_brand_shown.to_numpy()
    logit = (
        -2.0
        + 0.05 * pairs.offer_margin.to_numpy()
        + 0.6 * np.minimum(shown, 3)
        + 0.8 * (pairs.region.to_numpy() == "north")
        - 0.002 * np.nan_to_num(pairs.tenure_days.to_numpy())
    )
    y = (rng.random(len(pairs)) < 1 / (1 + np.exp(-logit))).astype(int)
    model = CalibratedBoostedClassifier(n_estimators=80, min_child_samples=30).fit(pairs, y)
    forest = model.forest()
    kinds = {names[f] for f in forest.feature}
    assert {"tenure_days", "offer_margin", "aff_brand_shown"} <= kinds  # every kind is split on
    p = scorer.score(model)
    expected = model.predict_proba(pairs)[:, 1].reshape(m, n).T
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-15)
    # some customers only, and the row-by-row matrix the model scores directly
    rows = np.array([3, 17, 18, 250, 399])
    part = scorer.score(model, rows=rows)
    np.testing.assert_allclose(part[rows], expected[rows], rtol=1e-12, atol=1e-15)
    assert (np.delete(part, rows, axis=0) == 0).all()
    X = scorer.matrix(model, rows, scorer.coded(model))
    np.testing.assert_allclose(
        model.predict_proba_matrix(X)[:, 1].reshape(len(rows), m), expected[rows], rtol=1e-12
    )
