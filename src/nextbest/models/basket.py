"""Market-basket analysis: frequent itemsets, association rules and cross-sell lift.

Frequent itemsets are found by a depth-first search over occurrence lists (LCM's occurrence
deliver; Uno, Kiyomi & Arimura 2004), compiled with numba in :mod:`._basket_kernels`: each
itemset keeps the list of its baskets, and one pass over those baskets counts all its
extensions at once. The result is exactly the set mlxtend's ``fpgrowth`` finds, with the same
supports (counts over the number of baskets) and the same threshold arithmetic; tests check it
on Groceries. Memory grows with the occurrence lists of the current search path, each at most
the number of (basket, item) pairs, never with a dense basket x item matrix, so 16,000-item
catalogues and millions of baskets are fine. Rules are enumerated by the same module over a
hash table of the itemsets, and the metrics computed as mlxtend computes them.

Rule metrics, for a rule A -> C with support s(A u C):
confidence = s(AC) / s(A); lift = confidence / s(C); leverage = s(AC) - s(A) s(C);
conviction = (1 - s(C)) / (1 - confidence) (infinite when confidence is 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import scipy.sparse as sp

from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError, DataError
from nextbest.models import _basket_kernels as _k

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


def _min_count(min_support: float, n: int) -> int:
    """The fewest baskets an itemset needs: the count mlxtend's fpgrowth prunes at,
    ``ceil(min_support * n)``, raised until ``count / n >= min_support`` holds in floating point
    as mlxtend's final filter has it."""
    need = max(1, math.ceil(min_support * n))
    while need <= n and need / n < min_support:
        need += 1
    return need


def frequent_itemsets(
    baskets: BasketMatrix, min_support: float, max_len: int | None = None
) -> pd.DataFrame:
    """Itemsets with support >= ``min_support``: columns ``support``, ``itemsets`` (frozensets),
    shortest first. ``attrs["n_baskets"]`` keeps the number of baskets for
    :func:`association_rules`."""
    if not 0 < min_support <= 1:
        raise ConfigError(f"--min-support: expected a share in (0, 1], got {min_support}")
    if max_len is not None and max_len < 1:
        raise ConfigError(f"--max-len: expected a whole number >= 1, got {max_len}")
    n = baskets.n_baskets
    m = baskets.matrix
    need = _min_count(min_support, n)
    counts = np.diff(m.indptr)
    # frequent items only, numbered from the rarest up (each itemset is extended by more
    # frequent items, which keeps the occurrence lists of deep itemsets short)
    keep = np.flatnonzero(counts >= need)
    order = keep[np.argsort(counts[keep], kind="stable")]
    sub = m[:, order]
    sub.sort_indices()
    rows = sub.tocsr()
    rows.sort_indices()
    ptr, items, count = _k.mine(
        rows.indptr.astype(np.int64, copy=False),
        rows.indices.astype(np.int32, copy=False),
        sub.indptr.astype(np.int64, copy=False),
        sub.indices.astype(np.int32, copy=False),
        need,
        0 if max_len is None else max_len,
    )
    sizes = np.diff(ptr)
    by_size = np.argsort(sizes, kind="stable")
    labels = baskets.items[order][items].tolist()
    starts, ends = ptr[:-1].tolist(), ptr[1:].tolist()
    sets = [frozenset(labels[starts[s] : ends[s]]) for s in by_size.tolist()]
    out = pd.DataFrame({"support": count[by_size] / n, "itemsets": sets}, copy=False)
    out.attrs["n_baskets"] = n
    return out


def association_rules(
    itemsets: pd.DataFrame, min_confidence: float = 0.5, min_lift: float | None = None
) -> pd.DataFrame:
    """Rules A -> C from frequent itemsets, with support, confidence, lift, leverage, conviction.

    Every itemset's subsets must be among ``itemsets`` (as :func:`frequent_itemsets` gives
    them). The metrics are computed as mlxtend's ``association_rules`` computes them with
    ``num_itemsets`` set to ``itemsets.attrs["n_baskets"]`` (1 when absent, mlxtend's
    default), so the same rules pass the thresholds; sorted by lift, then confidence.
    """
    sets = itemsets["itemsets"].to_numpy(dtype=object)
    support = itemsets["support"].to_numpy(dtype=np.float64)
    n_baskets = float(itemsets.attrs.get("n_baskets", 1))
    sizes = np.fromiter(map(len, sets), dtype=np.int64, count=len(sets))
    ptr = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    codes, _ = pd.factorize(np.fromiter(chain.from_iterable(sets), dtype=object, count=ptr[-1]))
    codes = codes.astype(np.int64)
    _k.sort_segments(ptr, codes)
    whole, ante, cons = _k.rules(
        ptr, codes, support, n_baskets, min_confidence, -np.inf if min_lift is None else min_lift
    )
    if len(whole) == 1 and whole[0] < 0:
        s = -1 - int(whole[0])
        raise DataError(
            f"itemsets row {s}: a subset of {sorted(map(str, sets[s]))} is missing; expected "
            "every subset of every itemset (as frequent_itemsets gives them)"
        )
    s_ac, s_a, s_c = support[whole], support[ante], support[cons]
    conf = (s_ac * n_baskets) / (s_a * n_baskets)
    lift = conf / s_c
    with np.errstate(divide="ignore", invalid="ignore"):
        conviction = np.where(conf < 1.0, (1.0 - s_c) / (1.0 - conf), np.inf)
    first = _k.order_rules(lift, conf)
    return pd.DataFrame(
        {
            "antecedents": sets[ante[first]],
            "consequents": sets[cons[first]],
            "antecedent support": s_a[first],
            "consequent support": s_c[first],
            "support": s_ac[first],
            "confidence": conf[first],
            "lift": lift[first],
            "leverage": (s_ac - s_a * s_c)[first],
            "conviction": conviction[first],
        },
        copy=False,  # fresh arrays, nothing to protect
    )


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
