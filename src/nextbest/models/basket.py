"""Market-basket analysis: frequent itemsets, association rules and cross-sell lift.

Frequent itemsets are mined level by level with vertical basket sets (Eclat; Zaki 2000): each
frequent itemset keeps the set of its baskets as a packed bit array, a candidate's baskets are
its prefix's AND its last item's (all candidates of one prefix in one vectorised step, counted
with a popcount; pairs are counted all at once by a sparse product), and a candidate is counted
only if all its subsets are frequent (Agrawal & Srikant 1994). The result is exactly the set
mlxtend's ``fpgrowth`` finds (a test checks it on Groceries), with supports computed the same
way, as counts over the number of baskets. Memory grows with the frequent itemsets' bit sets
(baskets / 8 bytes each), never with a dense basket x item matrix, so 16,000-item catalogues
and very large baskets are fine.

Rule metrics, for a rule A -> C with support s(A u C):
confidence = s(AC) / s(A); lift = confidence / s(C); leverage = s(AC) - s(A) s(C);
conviction = (1 - s(C)) / (1 - confidence) (infinite when confidence is 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import ibis
import ibis.expr.types as ir
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
    level: dict[tuple[int, ...], np.ndarray] = {}
    for j in np.flatnonzero(counts >= need - 1e-9).tolist():
        column = np.zeros(n, dtype=bool)
        column[m.indices[m.indptr[j] : m.indptr[j + 1]]] = True
        level[(j,)] = np.packbits(column)  # the item's baskets as a bit set
    found: list[tuple[tuple[int, ...], int]] = [(k, int(counts[k[0]])) for k in level]
    size = 1
    if level and (max_len is None or max_len >= 2):
        # Pairs in one sparse product (X'X counts every pair of frequent items at once).
        items = np.array([k[0] for k in sorted(level)])
        sub = m[:, items].astype(np.int32)
        pairs = sp.triu((sub.T @ sub).tocsr(), k=1).tocoo()
        keep = pairs.data >= need - 1e-9
        nxt: dict[tuple[int, ...], np.ndarray] = {}
        for i, j, c in zip(
            pairs.row[keep].tolist(),
            pairs.col[keep].tolist(),
            pairs.data[keep].tolist(),
            strict=True,
        ):
            first, second = int(items[i]), int(items[j])
            nxt[(first, second)] = level[(first,)] & level[(second,)]
            found.append(((first, second), int(c)))
        level = nxt
        size = 2
    while level and (max_len is None or size < max_len):
        keys = sorted(level)
        frequent = set(keys)
        nxt = {}
        by_prefix: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for k in keys:
            by_prefix.setdefault(k[:-1], []).append(k)
        for group in by_prefix.values():
            for i, a in enumerate(group[:-1]):
                partners = [
                    b
                    for b in group[i + 1 :]
                    if all(
                        (*a, b[-1])[:x] + (*a, b[-1])[x + 1 :] in frequent for x in range(size - 1)
                    )
                ]
                if not partners:
                    continue
                # One vectorised AND and popcount for all candidates sharing the prefix a.
                both = level[a] & np.stack([level[b] for b in partners])
                support = np.bitwise_count(both).sum(axis=1, dtype=np.int64)
                for b, bits, c in zip(partners, both, support.tolist(), strict=True):
                    if c >= need - 1e-9:
                        nxt[(*a, b[-1])] = bits
                        found.append(((*a, b[-1]), c))
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
    return line_baskets(warehouse, ev.select(basket=key, product_id=ev.product_id), level)


def line_baskets(warehouse: Warehouse, lines: ir.Table, level: str) -> BasketMatrix:
    """The basket matrix of ``lines`` (an Ibis table of ``basket``, ``product_id``) at
    ``level``; lines whose product has no value at that level are left out."""
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
