"""Basket analysis: the same itemsets and rules as mlxtend's fpgrowth, on real baskets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError
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


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("support", "confidence", "max_len"),
    [(0.01, 0.3, None), (0.005, 0.2, None), (0.02, 0.1, 2), (0.003, 0.5, 3)],
)
def test_groceries_rules_are_exactly_mlxtends(
    groceries: list[list[str]], support: float, confidence: float, max_len: int | None
) -> None:
    ids = [i for i, b in enumerate(groceries) for _ in b]
    items = [x for b in groceries for x in b]
    mine = frequent_itemsets(basket_matrix(ids, items), support, max_len)
    fi, ref_rules = _reference(groceries, support, confidence, max_len)
    assert dict(zip(mine.itemsets, mine.support, strict=True)) == pytest.approx(
        dict(zip(fi.itemsets, fi.support, strict=True)), abs=1e-12
    )
    rules = association_rules(mine, confidence)
    cols = ("support", "confidence", "lift", "leverage", "conviction")

    def by_rule(df: pd.DataFrame) -> dict[tuple[frozenset, frozenset], tuple[float, ...]]:
        return {
            (r.antecedents, r.consequents): tuple(getattr(r, c) for c in cols)
            for r in df.itertuples()
        }

    got, want = by_rule(rules), by_rule(ref_rules)
    assert len(got) > 0 and got.keys() == want.keys()
    for rule, values in got.items():
        np.testing.assert_allclose(values, want[rule], rtol=1e-9)


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


def test_bad_support_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"--min-support: expected a share in \(0, 1\], got 0"):
        frequent_itemsets(basket_matrix([1], ["a"]), 0)
