"""Basket analysis: the same itemsets and rules as mlxtend's fpgrowth, on real baskets."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError, DataError
from nextbest.models import (
    association_rules,
    basket_matrix,
    cross_sell_lift,
    frequent_itemsets,
    warehouse_baskets,
)
from tests.conftest import shared_data

mlxtend = pytest.importorskip("mlxtend.frequent_patterns", reason="mlxtend is a dev dependency")


@pytest.fixture(scope="module")
def groceries() -> list[list[str]]:
    path = shared_data("groceries", "groceries.csv")
    return [line.rstrip("\n").split(",") for line in path.open()]


def _reference(
    baskets: list[list[str]], support: float, confidence: float, max_len: int | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from mlxtend.preprocessing import TransactionEncoder

    te = TransactionEncoder()
    x = te.fit(baskets).transform(baskets, sparse=True)
    df = pd.DataFrame.sparse.from_spmatrix(x, columns=te.columns_)
    fi = mlxtend.fpgrowth(df, min_support=support, use_colnames=True, max_len=max_len)
    rules = mlxtend.association_rules(
        fi, num_itemsets=len(baskets), metric="confidence", min_threshold=confidence
    )
    return fi, rules


RULE_COLUMNS = (
    "antecedent support",
    "consequent support",
    "support",
    "confidence",
    "lift",
    "leverage",
    "conviction",
)


def _by_rule(df: pd.DataFrame) -> dict[tuple[frozenset, frozenset], tuple[float, ...]]:
    values = zip(*(df[c].tolist() for c in RULE_COLUMNS), strict=True)
    return dict(zip(zip(df.antecedents, df.consequents, strict=True), values, strict=True))


def _assert_same(
    mine: pd.DataFrame, rules: pd.DataFrame, fi: pd.DataFrame, ref_rules: pd.DataFrame
) -> None:
    """The same itemsets with the same supports and the same rules with the same metrics,
    exactly (the arithmetic is mlxtend's, so not even the last bit may differ)."""
    got_sets = dict(zip(mine.itemsets, mine.support, strict=True))
    want_sets = dict(zip(fi.itemsets, fi.support, strict=True))
    assert len(mine) == len(got_sets) and got_sets.keys() == want_sets.keys()
    assert got_sets == want_sets
    got, want = _by_rule(rules), _by_rule(ref_rules)
    assert len(rules) == len(got) and got.keys() == want.keys()
    assert got == want
    # sorted by lift, then confidence, both descending
    order = np.lexsort((-rules.confidence.to_numpy(), -rules.lift.to_numpy()))
    assert (order == np.arange(len(rules))).all()


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("support", "confidence", "max_len"),
    [
        (0.01, 0.3, None),
        (0.005, 0.2, None),
        (0.02, 0.1, 2),
        (0.003, 0.5, 3),
        # deep itemsets (up to 5 items) and every rule of them, the benchmark's hardest case
        (0.002, 0.3, None),
        (0.002, 0.0, None),
        (0.002, 0.1, 4),
        (0.05, 0.0, 1),
    ],
)
def test_groceries_rules_are_exactly_mlxtends(
    groceries: list[list[str]], support: float, confidence: float, max_len: int | None
) -> None:
    ids = [i for i, b in enumerate(groceries) for _ in b]
    items = [x for b in groceries for x in b]
    mine = frequent_itemsets(basket_matrix(ids, items), support, max_len)
    fi, ref_rules = _reference(groceries, support, confidence, max_len)
    sizes = mine.itemsets.map(len)
    assert sizes.max() == (max_len or sizes.max()) and sizes.is_monotonic_increasing
    if max_len == 1:  # no rules; mlxtend refuses to look, nextbest answers with none
        assert association_rules(mine, confidence).empty
        assert dict(zip(mine.itemsets, mine.support, strict=True)) == dict(
            zip(fi.itemsets, fi.support, strict=True)
        )
        return
    _assert_same(mine, association_rules(mine, confidence), fi, ref_rules)


@pytest.mark.shared_data
def test_groceries_depth_at_0002(groceries: list[list[str]]) -> None:
    """Groceries at 0.002: 4,223 itemsets, 147/1,674/1,991/395/16 of 1 to 5 items (mlxtend's
    counts), 21,304 rules at confidence 0."""
    ids = [i for i, b in enumerate(groceries) for _ in b]
    mine = frequent_itemsets(basket_matrix(ids, [x for b in groceries for x in b]), 0.002)
    fi, ref_rules = _reference(groceries, 0.002, 0.0, None)
    assert mine.itemsets.map(len).value_counts().sort_index().tolist() == [147, 1674, 1991, 395, 16]
    assert fi.itemsets.map(len).value_counts().sort_index().tolist() == [147, 1674, 1991, 395, 16]
    assert len(association_rules(mine, 0.0)) == len(ref_rules) == 21_304


@pytest.mark.shared_data
@pytest.mark.slow
def test_retail_rules_are_exactly_mlxtends() -> None:
    path = shared_data("retail_fimi", "retail.dat")
    baskets = [line.split() for line in path.open()]
    ids = [i for i, b in enumerate(baskets) for _ in b]
    mine = frequent_itemsets(basket_matrix(ids, [x for b in baskets for x in b]), 0.004)
    fi, ref_rules = _reference(baskets, 0.004, 0.2, None)
    _assert_same(mine, association_rules(mine, 0.2), fi, ref_rules)


def _random_baskets(seed: int, n: int, n_items: int) -> list[list[str]]:
    """Baskets with a few popular items and correlated pairs, so deep itemsets occur."""
    rng = np.random.default_rng(seed)
    popularity = rng.dirichlet(np.full(n_items, 0.3))
    out = []
    for _ in range(n):
        size = 1 + rng.poisson(4)
        basket = set(rng.choice(n_items, size=size, p=popularity).tolist())
        if 0 in basket:
            basket.add(1)  # item 1 follows item 0
        out.append([f"i{x:02d}" for x in sorted(basket)])
    return out


def _brute_force(baskets: list[list[str]], min_count: int, max_len: int) -> dict[frozenset, int]:
    counts: dict[frozenset, int] = {}
    for b in baskets:
        for r in range(1, min(len(b), max_len) + 1):
            for c in combinations(b, r):
                counts[frozenset(c)] = counts.get(frozenset(c), 0) + 1
    return {k: c for k, c in counts.items() if c >= min_count}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_itemsets_are_the_brute_force_counts(seed: int) -> None:
    baskets = _random_baskets(seed, 300, 12)
    ids = [i for i, b in enumerate(baskets) for _ in b]
    m = basket_matrix(ids, [x for b in baskets for x in b])
    for min_count, max_len in [(3, 12), (10, 3), (30, 12), (1, 2)]:
        mine = frequent_itemsets(m, min_count / len(baskets), max_len)
        want = _brute_force(baskets, min_count, max_len)
        assert dict(zip(mine.itemsets, mine.support * len(baskets), strict=True)) == (
            pytest.approx({k: float(c) for k, c in want.items()}, abs=1e-9)
        )
        assert len(mine) == len(want)


@pytest.mark.parametrize("seed", [3, 4])
def test_thresholds_at_the_boundary_match_mlxtend(seed: int) -> None:
    """Supports of exactly count / n and confidences equal to a rule's own confidence: the
    borderline itemsets and rules are in or out exactly as in mlxtend."""
    baskets = _random_baskets(seed, 137, 10)
    ids = [i for i, b in enumerate(baskets) for _ in b]
    m = basket_matrix(ids, [x for b in baskets for x in b])
    for count in (3, 7, 20):
        support = count / len(baskets)
        mine = frequent_itemsets(m, support)
        fi, all_rules = _reference(baskets, support, 0.0, None)
        for confidence in sorted(set(all_rules.confidence))[:: max(1, len(all_rules) // 7)]:
            ref_rules = mlxtend.association_rules(
                fi, num_itemsets=len(baskets), metric="confidence", min_threshold=confidence
            )
            _assert_same(mine, association_rules(mine, confidence), fi, ref_rules)


def test_rules_from_mlxtends_itemsets_match_its_default() -> None:
    """Itemsets without nextbest's basket count (mlxtend's own) give mlxtend's rules with its
    default ``num_itemsets=1``; ``min_lift`` keeps the rules at or above it."""
    baskets = _random_baskets(5, 200, 10)
    fi, _ = _reference(baskets, 0.02, 0.0, None)
    ref_rules = mlxtend.association_rules(fi, metric="confidence", min_threshold=0.25)
    rules = association_rules(fi, 0.25)
    assert _by_rule(rules) == _by_rule(ref_rules) and len(rules) > 10
    lifted = association_rules(fi, 0.25, min_lift=1.5)
    assert _by_rule(lifted) == _by_rule(ref_rules[ref_rules.lift >= 1.5])


def test_rules_need_every_subset() -> None:
    itemsets = pd.DataFrame(
        {"support": [0.5, 0.4], "itemsets": [frozenset({"a"}), frozenset({"a", "b"})]}
    )
    with pytest.raises(DataError, match=r"itemsets row 1: a subset of \['a', 'b'\] is missing"):
        association_rules(itemsets, 0.1)


def test_rules_by_hand() -> None:
    # 4 baskets: {a, b}, {a, b}, {a}, {c}; a -> b: support 1/2, confidence 2/3, lift 4/3
    mine = frequent_itemsets(basket_matrix([1, 1, 2, 2, 3, 4], ["a", "b", "a", "b", "a", "c"]), 0.5)
    assert dict(zip(mine.itemsets, mine.support, strict=True)) == {
        frozenset("a"): 0.75,
        frozenset("b"): 0.5,
        frozenset("ab"): 0.5,
    }
    rules = _by_rule(association_rules(mine, 0.0))
    a, b = frozenset("a"), frozenset("b")
    assert rules.keys() == {(a, b), (b, a)}
    # antecedent support, consequent support, support, confidence, lift, leverage, conviction
    assert rules[(a, b)] == pytest.approx(
        (0.75, 0.5, 0.5, 2 / 3, 4 / 3, 0.5 - 0.75 * 0.5, (1 - 0.5) / (1 - 2 / 3))
    )
    assert rules[(b, a)][3:5] == pytest.approx((1.0, 4 / 3)) and rules[(b, a)][6] == np.inf
    assert frequent_itemsets(basket_matrix([1], ["a"]), 1.0).itemsets.tolist() == [frozenset("a")]
    empty = frequent_itemsets(basket_matrix([1, 2], ["a", "b"]), 1.0)
    assert empty.empty and association_rules(empty, 0.1).empty


@pytest.mark.shared_data
def test_rules_from_the_warehouse_match(workspace: Workspace, groceries: list[list[str]]) -> None:
    path = shared_data("groceries", "groceries.csv")
    ingest(workspace.warehouse, [path], workspace.config.ingest, fmt="baskets")
    baskets = warehouse_baskets(workspace.warehouse, "product")
    assert baskets.n_baskets == 9_835
    mine = frequent_itemsets(baskets, 0.01)
    fi, _ = _reference(groceries, 0.01, 0.3, None)
    names = {frozenset(x.split(":", 1)[1] for x in s) for s in mine.itemsets}
    assert names == set(fi.itemsets)


def test_cross_sell_lift_by_hand() -> None:
    # 4 baskets: {a, b}, {a, b}, {a}, {c}: P(b | a) = 2/3, P(b) = 1/2, lift 4/3.
    m = basket_matrix([1, 1, 2, 2, 3, 4], ["a", "b", "a", "b", "a", "c"])
    lift = cross_sell_lift(m).set_index(["a", "b"])
    assert lift.loc[("a", "b"), "lift"] == pytest.approx(4 / 3)
    assert lift.loc[("b", "a"), "lift"] == pytest.approx(1.0 / (3 / 4))
    assert ("a", "c") not in lift.index  # never bought together


@pytest.mark.parametrize(
    ("support", "max_len", "message"),
    [
        (0, None, r"--min-support: expected a share in \(0, 1\], got 0"),
        (1.5, None, r"--min-support: expected a share in \(0, 1\], got 1.5"),
        (0.5, 0, r"--max-len: expected a whole number >= 1, got 0"),
    ],
)
def test_bad_thresholds_are_errors(support: float, max_len: int | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        frequent_itemsets(basket_matrix([1], ["a"]), support, max_len)


@pytest.mark.parametrize("n", [0, 1, 7, 2_000, 30_000])
def test_rule_order_is_lexsorts(n: int) -> None:
    """The compiled ordering (lift, then confidence, descending, then position) is exactly
    numpy's lexsort, with many ties in both keys (runs short and long)."""
    from nextbest.models._basket_kernels import order_rules

    rng = np.random.default_rng(n)
    lift = rng.integers(0, n // 40 + 1, n) / 7
    conf = rng.integers(0, 5, n) / 3
    want = np.lexsort((np.arange(n), -conf, -lift))
    assert (order_rules(lift, conf) == want).all()
