"""Market-basket analysis: frequent itemsets, association rules and cross-sell lift.

Frequent itemsets are mined level by level over a sparse basket x item matrix with vertical
basket lists (Eclat; Zaki 2000): an itemset's baskets are the intersection of its prefix's
baskets with its last item's, and a candidate is counted only if all its subsets are frequent
(Agrawal & Srikant 1994). The result is exactly the set mlxtend's ``fpgrowth`` finds (a test
checks it on Groceries), with supports computed the same way, as counts over the number of
baskets. Memory grows with the frequent itemsets' basket lists, never with a dense matrix, so
16,000-item catalogues and very large baskets are fine.

Rule metrics, for a rule A -> C with support s(A u C):
confidence = s(AC) / s(A); lift = confidence / s(C); leverage = s(AC) - s(A) s(C);
conviction = (1 - s(C)) / (1 - confidence) (infinite when confidence is 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import ibis
import numpy as np
import pandas as pd
import scipy.sparse as sp

from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError

__all__ = [
    "LEVELS",
    "BasketMatrix",
    "association_rules",
    "basket_matrix",
    "cross_sell_lift",
    "frequent_itemsets",
    "warehouse_baskets",
]


@dataclass(frozen=True)
class BasketMatrix:
    """Baskets (rows) by items (columns), boolean and sparse, with the item labels."""

    matrix: sp.csc_matrix
    items: np.ndarray

    @property
    def n_baskets(self) -> int:
        return int(self.matrix.shape[0])


def basket_matrix(basket: Sequence[object], item: Sequence[object]) -> BasketMatrix:
    """Build the matrix from parallel basket-id and item columns (repeats count once)."""
    b_codes, _ = pd.factorize(pd.Series(basket), sort=True)
    i_codes, items = pd.factorize(pd.Series(item), sort=True)
    data = np.ones(len(b_codes), dtype=bool)
    m = sp.coo_matrix(
        (data, (b_codes, i_codes)),
        shape=(int(b_codes.max()) + 1 if len(b_codes) else 0, len(items)),
    )
    csc = m.tocsc()
    csc.sum_duplicates()
    csc.data[:] = True
    return BasketMatrix(csc, np.asarray(items, dtype=object))


def frequent_itemsets(
    baskets: BasketMatrix, min_support: float, max_len: int | None = None
) -> pd.DataFrame:
    """Itemsets with support >= ``min_support``: columns ``support``, ``itemsets`` (frozensets)."""
    if not 0 < min_support <= 1:
        raise ConfigError(f"--min-support: expected a share in (0, 1], got {min_support}")
    n = baskets.n_baskets
    need = min_support * n
    m = baskets.matrix
    counts = np.diff(m.indptr)
    level: dict[tuple[int, ...], np.ndarray] = {
        (j,): m.indices[m.indptr[j] : m.indptr[j + 1]]
        for j in np.flatnonzero(counts >= need - 1e-9).tolist()
    }
    found: list[tuple[tuple[int, ...], int]] = [(k, len(v)) for k, v in level.items()]
    size = 1
    while level and (max_len is None or size < max_len):
        keys = sorted(level)
        frequent = set(keys)
        nxt: dict[tuple[int, ...], np.ndarray] = {}
        by_prefix: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for k in keys:
            by_prefix.setdefault(k[:-1], []).append(k)
        for group in by_prefix.values():
            for a, b in combinations(group, 2):
                cand = (*a, b[-1])
                if size > 1 and any(
                    cand[:i] + cand[i + 1 :] not in frequent for i in range(len(cand) - 2)
                ):
                    continue
                tids = np.intersect1d(level[a], level[b], assume_unique=True)
                if len(tids) >= need - 1e-9:
                    nxt[cand] = tids
        found.extend((k, len(v)) for k, v in nxt.items())
        level = nxt
        size += 1
    found = [(k, c) for k, c in found if c / n >= min_support]
    return pd.DataFrame(
        {
            "support": [c / n for _, c in found],
            "itemsets": [frozenset(baskets.items[list(k)]) for k, _ in found],
        }
    )


def association_rules(
    itemsets: pd.DataFrame, min_confidence: float = 0.5, min_lift: float | None = None
) -> pd.DataFrame:
    """Rules A -> C from frequent itemsets, with support, confidence, lift, leverage, conviction."""
    support = dict(zip(itemsets.itemsets, itemsets.support, strict=True))
    rows = []
    for items, s in support.items():
        if len(items) < 2:
            continue
        for r in range(1, len(items)):
            for ante in combinations(sorted(items, key=str), r):
                a = frozenset(ante)
                c = items - a
                conf = s / support[a]
                if conf < min_confidence:
                    continue
                sc = support[c]
                lift = conf / sc
                if min_lift is not None and lift < min_lift:
                    continue
                rows.append(
                    {
                        "antecedents": a,
                        "consequents": c,
                        "antecedent support": support[a],
                        "consequent support": sc,
                        "support": s,
                        "confidence": conf,
                        "lift": lift,
                        "leverage": s - support[a] * sc,
                        "conviction": np.inf if conf >= 1 else (1 - sc) / (1 - conf),
                    }
                )
    columns = [
        "antecedents",
        "consequents",
        "antecedent support",
        "consequent support",
        "support",
        "confidence",
        "lift",
        "leverage",
        "conviction",
    ]
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values(["lift", "confidence"], ascending=False, ignore_index=True)


def cross_sell_lift(baskets: BasketMatrix) -> pd.DataFrame:
    """Pairwise lift between items: P(B | A) / P(B) for every pair bought together."""
    m = baskets.matrix.astype(np.int32)
    n = baskets.n_baskets
    together = (m.T @ m).tocoo()
    single = np.asarray(m.sum(axis=0)).ravel()
    keep = together.row != together.col
    a, b, both = together.row[keep], together.col[keep], together.data[keep]
    p_b_given_a = both / single[a]
    return pd.DataFrame(
        {
            "a": baskets.items[a],
            "b": baskets.items[b],
            "baskets": both,
            "p_b_given_a": p_b_given_a,
            "p_b": single[b] / n,
            "lift": p_b_given_a / (single[b] / n),
        }
    ).sort_values("lift", ascending=False, ignore_index=True)


LEVELS = ("product", "category", "brand")


def warehouse_baskets(warehouse: Warehouse, level: str = "product") -> BasketMatrix:
    """Purchase baskets from the warehouse at product, category or brand level.

    A basket is a ``basket_id`` where the source has one, else a customer's purchases of one
    day. Lines whose product has no category (or brand) are left out at those levels.
    """
    if level not in LEVELS:
        raise ConfigError(f"--level: expected one of {', '.join(LEVELS)}, got {level!r}")
    ev = warehouse.table("events")
    ev = ev.filter(ev.type == "purchase", ev.product_id.notnull())
    key = ibis.coalesce(ev.basket_id, ev.customer_id.concat(":", ev.ts.date().cast("string")))
    lines = ev.select(basket=key, product_id=ev.product_id)
    if level != "product":
        products = warehouse.table("products")
        lines = lines.join(products, "product_id").select("basket", item=products[level])
        lines = lines.filter(lines.item.notnull())
    else:
        lines = lines.select("basket", item=lines.product_id)
    data = lines.to_pyarrow()
    return basket_matrix(
        data.column("basket").to_numpy(zero_copy_only=False),
        data.column("item").to_numpy(zero_copy_only=False),
    )
