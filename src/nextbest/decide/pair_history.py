"""The history part of a day's pairs: per customer and brand (or category), read once for both.

The warehouse join (:func:`nextbest.features.offer_customer_features`) groups the decision log
by customer and level value in SQL, once per level, over string keys: at 1M customers that is
two group-bys of 7M logged decisions into 4-8M groups, 6-7 s each, and one more per level for
popularity. Here the log is read once, as three small numbers a decision (the customer's row
in the day's order, the offer's code, whether it was clicked), and counted per level in numpy:
a sort of integer keys. The interactions (``aff_<level>_*``, from events) stay in SQL: they
are a few hundred thousand groups.

The numbers are the warehouse join's: counts, clicks per showing (``clicks / shown`` in
float64), popularity over every customer's decisions (not only the day's), and missing
popularity for a level value never shown or an offer without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa

from nextbest.data.warehouse import Warehouse
from nextbest.features.decision_features import shown_and_clicked

__all__ = ["Shown", "level_history", "pop_column", "read_affinity", "read_shown"]


@dataclass(frozen=True)
class Shown:
    """Every decision logged before the day that showed a known offer.

    ``row``: the customer's row in the day's order (-1: not one of the day's customers);
    ``offer``: the offer's index in ``offers`` (the warehouse's offers table); ``clicked``.
    """

    row: np.ndarray
    offer: np.ndarray
    clicked: np.ndarray
    offers: pd.DataFrame  # offer_id and the level columns


def read_shown(warehouse: Warehouse, keys: ir.Table, as_of: datetime) -> Shown:
    """One pass over the decision log before ``as_of``; ``keys`` maps customer_id to _row."""
    offers = warehouse.table("offers").select("offer_id", "brand", "category").to_pandas()
    codes = ibis.memtable(
        pd.DataFrame({"offer_id": offers.offer_id, "_offer": np.arange(len(offers))})
    )
    dec, clicks = shown_and_clicked(warehouse, as_of)
    clicks = clicks.mutate(_clicked=ibis.literal(True))
    shown = dec.join(codes, "offer_id")
    shown = shown.left_join(clicks, "decision_id")
    shown = shown.left_join(keys, shown.customer_id == keys.customer_id)
    table = shown.select(  # 9 bytes a decision (46M decisions at 5M customers x 4 days)
        _row=shown._row.fill_null(-1).cast("int32"),
        _offer=shown._offer.cast("int32"),
        _clicked=shown._clicked.notnull(),
    ).to_pyarrow()
    try:
        return Shown(
            row=table["_row"].to_numpy(),
            offer=table["_offer"].to_numpy(),
            clicked=table["_clicked"].to_numpy(zero_copy_only=False),
            offers=offers,
        )
    finally:
        warehouse.con.con.unregister(codes.op().name)


def _groups(key: np.ndarray, clicked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct keys (sorted), the decisions and the clicks of each (``key`` >= 0).

    The click rides in the key's lowest bit, so a plain sort (no argsort, no gather of the
    clicks by it) orders them: at 5M customers, 40M keys a level, that halves time and memory.
    """
    both = key * 2
    both += clicked
    both.sort()
    starts = _firsts(both >> 1)
    shown = np.diff(np.r_[starts, len(both)])
    clicks = np.add.reduceat(both & 1, starts) if len(both) else shown
    return both[starts] >> 1, shown, clicks


def _firsts(key: np.ndarray) -> np.ndarray:
    """Where each run of equal values of the sorted ``key`` starts."""
    return np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, int)


def read_affinity(affinity: ir.Table, keys: ir.Table, level: str, values: pd.Index) -> pa.Table:
    """The interactions (``aff_<level>_*``) of the day's customers with the level ``values``:
    a grouped table in the warehouse, joined to the day's rows (``_row``)."""
    aff = affinity.filter(affinity[level].isin(values.tolist())).join(keys, "customer_id")
    names = [c for c in aff.columns if c.startswith("aff_")]
    return aff.select("_row", level, *names).to_pyarrow()


def level_history(
    shown: Shown, got: pa.Table, level: str, values: pd.Index
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """The sparse rows of one level for the day's customers and level ``values``.

    Returns the customer rows and value codes (sorted by both), the ``aff_<level>_*`` columns
    (counts 0 where missing, ``aff_<level>_ctr`` NaN where never shown), and each value's
    popularity (``pop_<level>_ctr``; values never shown are absent).
    """
    w = len(values)
    code_of_offer = values.get_indexer(shown.offers[level])  # -1: not one of the day's values
    code = code_of_offer.astype(np.int32)[shown.offer]
    # popularity: every customer's decisions, per level value shown at all
    level_of_offer = pd.Index(shown.offers[level].dropna().unique())
    lv = level_of_offer.get_indexer(shown.offers[level])
    named = lv >= 0
    per_offer = np.bincount(shown.offer, minlength=len(lv))
    per_offer_clicks = np.bincount(shown.offer, weights=shown.clicked, minlength=len(lv))
    pop_n = np.bincount(lv[named], weights=per_offer[named], minlength=len(level_of_offer))
    pop_clicks = np.bincount(lv[named], weights=per_offer_clicks[named], minlength=len(pop_n))
    popular = {
        str(v): float(c) / float(n)
        for v, n, c in zip(level_of_offer, pop_n, pop_clicks, strict=True)
        if n > 0
    }
    # exposure: the day's customers, the day's values
    mine = (shown.row >= 0) & (code >= 0)
    exp_key, exp_n, exp_clicks = _groups(
        shown.row[mine].astype(np.int64) * w + code[mine], shown.clicked[mine]
    )
    # interactions, read by read_affinity
    names = [c for c in got.column_names if c.startswith("aff_")]
    aff_key = got["_row"].to_numpy().astype(np.int64) * w + values.get_indexer(
        got[level].to_pandas()
    )
    key = np.sort(np.concatenate([aff_key, exp_key]))
    key = key[_firsts(key)]
    columns: dict[str, np.ndarray] = {}
    at = np.searchsorted(key, aff_key)
    for name in names:  # each narrowed as it is made: 30M rows a level at 5M customers
        col = np.zeros(len(key))
        col[at] = got[name].to_numpy(zero_copy_only=False).astype(np.float64)
        columns[name] = _narrow(col)
    at = np.searchsorted(key, exp_key)
    col = np.zeros(len(key))
    col[at] = exp_n
    columns[f"aff_{level}_shown"] = _narrow(col)
    col = np.full(len(key), np.nan)
    col[at] = exp_clicks.astype(np.float64) / exp_n.astype(np.float64)
    columns[f"aff_{level}_ctr"] = _narrow(col)
    w = max(w, 1)
    return (key // w).astype(np.int32), (key % w).astype(np.int32), columns, popular


def _narrow(col: np.ndarray) -> np.ndarray:
    """``col`` as float32 when that keeps every value (counts: half the memory, and the
    float32 the trees read, so scoring needs no copy), else as it is (rates, amounts)."""
    narrow = col.astype(np.float32)
    return narrow if np.array_equal(narrow, col, equal_nan=True) else col


def pop_column(offers: pd.Series, popular: dict[str, float]) -> np.ndarray:
    """``pop_<level>_ctr`` of each offer: its value's popularity, NaN if never shown or none."""
    return np.array([popular.get(v, np.nan) if isinstance(v, str) else np.nan for v in offers])
