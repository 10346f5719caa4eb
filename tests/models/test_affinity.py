"""Implicit-feedback affinity (ALS): a hand-made taste example, bad input, simulator truth."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError, DataError, NotFittedError
from nextbest.models.affinity import AffinityModel, evaluate_affinity, interactions

FAST: dict[str, Any] = {"num_threads": 1}
# light regularisation and strong confidence, as in Hu et al.'s examples; the defaults are
# heavier (8 factors, regularisation 50, alpha 1), which suit sparse retail data better
LIGHT: dict[str, Any] = {"factors": 32, "regularization": 0.05, "alpha": 10.0}

# -- two taste blocks, by hand ----------------------------------------------------------------
# Customers a0-a2 use items a, b, c (a0 never c); b0-b4 use x, y, z (b0 never z). Training
# popularity: x, y 5; z 4; a, b 3; c 2. In the test window a0 takes c and b0 takes z.
# Popularity, leaving out what each has seen, ranks for a0: x, y, z, c (c 4th) and for b0:
# z, a, b, c (z 1st). At k = 4: recall 1 for both; nDCG (1/log2(5) + 1) / 2. At k = 1:
# recall and nDCG 1/2. The model ranks each customer's own block first: 1 at both k.
BLOCKS = {"a": ("a", "b", "c"), "b": ("x", "y", "z")}


def _hand_train() -> pd.DataFrame:
    rows = []
    for block, n in (("a", 3), ("b", 5)):
        for j in range(n):
            for item in BLOCKS[block]:
                if j == 0 and item in ("c", "z"):
                    continue
                rows.append((f"{block}{j}", item, 1.0))
    return pd.DataFrame(rows, columns=["customer_id", "item", "weight"])


HAND_TEST = pd.DataFrame({"customer_id": ["a0", "b0"], "item": ["c", "z"], "weight": [1.0, 3.0]})


@pytest.fixture(scope="module")
def hand_model() -> AffinityModel:
    return AffinityModel(factors=2, regularization=0.01, iterations=30, **FAST).fit(_hand_train())


def test_recommends_the_unseen_item_of_her_own_block(hand_model: AffinityModel) -> None:
    recs = hand_model.recommend(["a0", "b0", "stranger"], k=1)
    assert recs[["customer_id", "item", "rank"]].values.tolist() == [["a0", "c", 1], ["b0", "z", 1]]
    # without exclusion she is offered what she already uses; with it, only 3 items are left
    assert set(hand_model.recommend(["a1"], k=3, exclude_seen=False).item) == {"a", "b", "c"}
    rest = hand_model.recommend(["a1"], k=5)
    assert set(rest.item) == {"x", "y", "z"} and rest["rank"].tolist() == [1, 2, 3]
    own, other = hand_model.score(["a0", "a0"], ["c", "z"])
    assert own > 0.5 > 0.1 > other
    assert np.isnan(hand_model.score(["a0", "stranger"], ["new", "a"])).all()  # cold start


def test_metrics_match_the_hand_computation(hand_model: AffinityModel) -> None:
    train = _hand_train()
    at4 = evaluate_affinity(hand_model, train, HAND_TEST, k=4)
    assert (at4.n_customers, at4.recall, at4.ndcg) == (2, 1.0, 1.0)
    assert at4.popularity_recall == 1.0
    assert at4.popularity_ndcg == pytest.approx((1 / np.log2(5) + 1) / 2)
    at1 = evaluate_affinity(hand_model, train, HAND_TEST, k=1)
    assert (at1.recall, at1.ndcg, at1.popularity_recall, at1.popularity_ndcg) == (1, 1, 0.5, 0.5)


def test_events_are_weighted_by_type_and_summed() -> None:
    events = pd.DataFrame(
        {
            "customer_id": ["u", "u", "u", "v"],
            "item": ["a", "a", "b", "b"],
            "type": ["view", "purchase", "email_sent", "add_to_cart"],
        }
    )
    model = AffinityModel(factors=2, **FAST).fit(events)
    assert model.user_items_.toarray().tolist() == [
        [6.0, 0.0],
        [0.0, 3.0],
    ]  # email_sent weighs nothing
    assert model.items_.tolist() == ["a", "b"] and model.customers_.tolist() == ["u", "v"]
    assert model.user_factors_.dtype == np.float32 and model.item_factors_.shape == (2, 2)


GOOD = pd.DataFrame({"customer_id": ["u"], "item": ["a"], "weight": [1.0]})


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: AffinityModel().fit(GOOD.drop(columns="weight")),
            DataError,
            "interactions: expected columns customer_id, item and weight (or type, an event "
            "type to weigh), got customer_id, item; missing type",
        ),
        (
            lambda: AffinityModel().fit(GOOD.rename(columns={"item": "brand"})),
            DataError,
            "missing item",
        ),
        (
            lambda: AffinityModel().fit(GOOD.iloc[:0]),
            DataError,
            "interactions: expected at least one interaction, got an empty frame",
        ),
        (
            lambda: AffinityModel().fit(
                pd.DataFrame({"customer_id": ["u", "v"], "item": "a", "weight": [1, -2]})
            ),
            DataError,
            "interactions.weight: expected a finite number >= 0, got -2.0 at row 1",
        ),
        (
            lambda: AffinityModel().fit(
                pd.DataFrame({"customer_id": ["u", None], "item": "a", "weight": 1.0})
            ),
            DataError,
            "interactions.customer_id: expected a value on every row, got a missing value at row 1",
        ),
        (
            lambda: AffinityModel().fit(GOOD.assign(weight=0.0)),
            DataError,
            "expected at least one pair of weight > 0, got 1 rows of weight 0",
        ),
        (
            lambda: AffinityModel().fit(GOOD.to_numpy()),
            DataError,
            "interactions: expected a pandas DataFrame with columns customer_id, item, weight, "
            "got ndarray",
        ),
        (
            lambda: AffinityModel(factors=0).fit(GOOD),
            ConfigError,
            "AffinityModel.factors: expected an integer >= 1, got 0",
        ),
        (
            lambda: AffinityModel(alpha=-1.0).fit(GOOD),
            ConfigError,
            "AffinityModel.alpha: expected a number >= 0, got -1.0",
        ),
        (
            lambda: AffinityModel(weights={"view": -1}).fit(GOOD),
            ConfigError,
            "AffinityModel.weights['view']: expected a number >= 0, got -1",
        ),
        (
            lambda: AffinityModel().score(["u"], ["a"]),
            NotFittedError,
            "this AffinityModel is not fitted yet: call fit(interactions) before score",
        ),
        (
            lambda: AffinityModel().recommend(["u"]),
            NotFittedError,
            "this AffinityModel is not fitted yet: call fit(interactions) before recommend",
        ),
        (
            lambda: evaluate_affinity(AffinityModel(), GOOD, GOOD),
            NotFittedError,
            "not fitted yet: call fit(interactions) before evaluate_affinity",
        ),
        (
            lambda: AffinityModel(factors=1, **FAST).fit(GOOD).score(["u", "u"], ["a"]),
            DataError,
            "score: expected customer_ids and items of one length (aligned pairs), got 2 and 1",
        ),
        (
            lambda: AffinityModel(factors=1, **FAST).fit(GOOD).recommend(["u"], k=0),
            ConfigError,
            "k: expected an integer >= 1, got 0",
        ),
        (
            lambda: interactions(None, "colour"),  # type: ignore[arg-type]
            ConfigError,
            "level: expected one of product, brand, category, got 'colour'",
        ),
    ],
)
def test_bad_input_is_named(call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


# -- the simulator ----------------------------------------------------------------------------
CUT = datetime(2026, 1, 22, tzinfo=UTC)
STOP = datetime(2026, 1, 29, tzinfo=UTC)
TASTE = [f"taste_{j}" for j in range(6)]
VEC = [f"vec_{j}" for j in range(6)]


@pytest.fixture(scope="module")
def sim_frames(sim_workspace: tuple[Workspace, Path]) -> dict[str, Any]:
    ws, sim = sim_workspace
    out: dict[str, Any] = {"truth": sim / "truth"}
    for level in ("brand", "category"):
        out[level] = (
            interactions(ws.warehouse, level, end=CUT),
            interactions(ws.warehouse, level, start=CUT, end=STOP),
        )
    return out


def _mean_spearman(model: AffinityModel, train: pd.DataFrame, truth: Path, level: str) -> tuple:
    """Mean Spearman of model (and popularity) scores with the true taste, per customer."""
    members = pd.read_parquet(truth / "members.parquet").set_index("customer_id")
    table = {"brand": "brands", "category": "categories"}[level]
    vectors = pd.read_parquet(truth / f"{table}.parquet").set_index(level)
    n = train.groupby("customer_id").size()
    customers = n.index[n >= 5]  # enough interactions to have a taste
    true = members.loc[customers, TASTE].to_numpy() @ vectors.loc[model.items_, VEC].to_numpy().T
    est = model.user_factors_[model.customer_rows(customers)] @ model.item_factors_.T
    popularity = train.groupby("item").weight.sum().reindex(model.items_).to_numpy()
    rho = np.array([spearmanr(e, t).statistic for e, t in zip(est, true, strict=True)])
    pop_rho = [spearmanr(popularity, t).statistic for t in true]
    return len(customers), float(np.mean(rho)), float(np.mean(pop_rho)), float(np.mean(rho > 0))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("level", "n", "least", "over_popularity"),
    # measured (seed 5): brand 1,614 customers, rho 0.129 (popularity 0.062, 86% positive);
    # category 1,062 customers, rho 0.229 (popularity 0.157)
    [("brand", 1614, 0.09, 0.04), ("category", 1062, 0.18, 0.04)],
)
def test_affinity_follows_the_simulators_taste(
    sim_frames: dict[str, Any], level: str, n: int, least: float, over_popularity: float
) -> None:
    train, _ = sim_frames[level]
    model = AffinityModel(**LIGHT, **FAST).fit(train)
    count, rho, pop_rho, positive = _mean_spearman(model, train, sim_frames["truth"], level)
    assert count == n
    assert rho > least
    assert rho > pop_rho + over_popularity  # taste, not just what everyone buys
    assert positive > 0.7


def _independent_metrics(train: pd.DataFrame, test: pd.DataFrame, k: int) -> tuple:
    """Popularity recall@k and a random ranking's expected recall@k, with pandas and sets."""
    seen = train.groupby("customer_id")["item"].apply(set)
    weight = train.groupby("item").weight.sum()
    order = weight.index[np.argsort(-weight.to_numpy(), kind="stable")].tolist()
    relevant = test[test["item"].isin(weight.index)].groupby("customer_id")["item"].apply(set)
    pop, rand = [], []
    for customer, items in relevant.items():
        if customer not in seen.index or not items - seen[customer]:
            continue
        items = items - seen[customer]
        top = [i for i in order if i not in seen[customer]][:k]
        pop.append(len(items & set(top)) / len(items))
        rand.append(min(1.0, k / (len(order) - len(seen[customer]))))
    return len(pop), float(np.mean(pop)), float(np.mean(rand))


@pytest.mark.slow
def test_brand_recommendations_for_the_next_week(sim_frames: dict[str, Any]) -> None:
    train, test = sim_frames["brand"]
    n, pop_recall, random_recall = _independent_metrics(train, test, 10)
    default = evaluate_affinity(AffinityModel(**LIGHT, **FAST).fit(train), train, test, 10)
    assert default.n_customers == n == 4576
    assert default.popularity_recall == pytest.approx(pop_recall)  # 0.251
    assert default.recall > 1.2 * random_recall  # 0.099 against 0.078
    # Heavier regularisation and confidence 1 + r suit these sparse data (2.6 brands each):
    tuned = AffinityModel(**FAST).fit(train)  # the defaults
    result = evaluate_affinity(tuned, train, test, 10)
    assert result.recall > 2.5 * random_recall  # 0.216
    assert result.ndcg > 2 * default.ndcg  # 0.116 against 0.052
    # Popularity wins on this simulator (recall 0.251, nDCG 0.136), and the true tastes
    # would not beat it either (recall 0.19): brands are on sale, and so seen, in proportion
    # to their popularity, which no taste model sees. Hence no "beats popularity" assertion.
    assert result.recall < default.popularity_recall
