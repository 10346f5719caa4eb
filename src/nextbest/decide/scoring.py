"""Every customer x offer pair of a day, scored in blocks of customers.

The features of a pair are the join of its customer's row, its offer's row and the customer's
history with the offer's brand and category (:class:`nextbest.features.PairParts`). Training
joins them in the warehouse, one row per logged decision. A day's batch would need n x m rows
(40 million for 1M customers and 40 offers, 60 columns each): too many for one frame. So the
pieces are read once (n customers, m offers, and the sparse history rows of today's brands and
categories), coded once into the float32 the trees read, and the pairs are put together a
block of customers at a time and scored; only the probabilities and a few masks are kept.

A test checks that this gives the same probabilities as the warehouse join
(:func:`nextbest.features.offer_customer_features`) that training uses.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import ibis
import numpy as np
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.decide import _pair_kernels
from nextbest.decide.pair_history import level_history, pop_column, read_affinity, read_shown
from nextbest.errors import DataError
from nextbest.features.decision_features import LEVELS, pair_parts
from nextbest.progress import NullReporter, Reporter

__all__ = ["PairScorer", "pair_scorer"]

_BLOCK_ROWS = 1_000_000  # pairs scored at once (60 float32 columns: 240 MB)


@dataclass
class _History:
    """The sparse pair columns of one level: rows (customer, level value) and their values.

    ``value`` codes the brand (or category) among today's; ``offer_value`` gives each offer's
    code (``-1``: the offer has none), so a row counts for every offer of that value.
    """

    customer: np.ndarray  # customer index, sorted
    value: np.ndarray  # level value code
    values: dict[str, np.ndarray]  # aff_<level>_* columns
    offer_value: np.ndarray  # m: each offer's value code
    n_values: int

    def for_offer(self, offer: int) -> np.ndarray:
        """The rows that count for ``offer``."""
        code = self.offer_value[offer]
        return np.flatnonzero(self.value == code) if code >= 0 else np.zeros(0, np.int64)


@dataclass
class PairScorer:
    """The pieces of a day's pairs in memory, ready to be scored or read column by column.

    ``customers`` and ``offers`` are in the order of the matrices (rows and columns);
    missing counts are 0 and missing rates NaN, as in the warehouse join.
    """

    customers: pd.DataFrame  # n rows: customer 360 and demographics
    offers: pd.DataFrame  # m rows: offer_* and pop_* columns
    history: dict[str, _History]  # level -> sparse pair columns
    _coded_for: Any = field(default=None, repr=False)
    _coded: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.customers), len(self.offers)

    def _defaults(self) -> dict[str, float]:
        return {
            col: (np.nan if col.endswith("_ctr") else 0.0)
            for h in self.history.values()
            for col in h.values
        }

    def known(self) -> set[str]:
        """Every feature a day's pairs have."""
        history = {c for h in self.history.values() for c in h.values}
        return {"slot", *self.customers.columns, *self.offers.columns, *history}

    def column(self, name: str, offer: int) -> np.ndarray:
        """One feature of every customer's pair with one offer, as in the warehouse join."""
        n = len(self.customers)
        if name in self.customers.columns:
            return self.customers[name].to_numpy()
        if name in self.offers.columns:
            return np.repeat(self.offers[name].to_numpy()[offer : offer + 1], n)
        for h in self.history.values():
            if name in h.values:
                out = np.full(n, self._defaults()[name])
                hit = h.for_offer(offer)
                out[h.customer[hit]] = h.values[name][hit]
                return out
        if name == "slot":
            return np.ones(n)
        raise DataError(f"no feature named {name!r} in a day's pairs")

    def novel(self) -> np.ndarray:
        """n x m: the customer never interacted with the offer's brand nor was shown it."""
        out = np.ones(self.shape, dtype=bool)
        h = self.history["brand"]
        seen = (h.values["aff_brand"] > 0) | (h.values["aff_brand_shown"] > 0)
        for j in range(self.shape[1]):  # a loop over offers
            hit = h.for_offer(j)
            out[h.customer[hit[seen[hit]]], j] = False
        return out

    def coded(self, model: Any) -> dict[str, np.ndarray]:
        """Every piece's columns coded for ``model`` (customers, offers, history rows), once."""
        if self._coded_for is model:
            return self._coded
        out: dict[str, np.ndarray] = {}
        for name in model.features_:
            for frame in (self.customers, self.offers):
                if name in frame.columns:
                    out[name] = model.encode(name, frame[name])
            for h in self.history.values():
                if name in h.values:
                    out[name] = model.encode(name, h.values[name])
        self._coded_for, self._coded = model, out
        return out

    def forget_coded(self) -> None:
        """Drop the coded columns (rebuilt on demand): the batch frees them after scoring."""
        self._coded_for, self._coded = None, {}

    def source(self, name: str) -> str:
        """Where a model feature comes from: ``slot``, ``customer``, ``offer`` or ``history``."""
        if name == "slot":
            return "slot"
        if name in self.customers.columns:
            return "customer"
        if name in self.offers.columns:
            return "offer"
        if any(name in h.values for h in self.history.values()):
            return "history"
        raise DataError(
            f"the propensity model needs feature {name!r}, which decisions do not "
            "build: retrain it on the current features"
        )

    def matrix(self, model: Any, rows: np.ndarray, coded: dict[str, np.ndarray]) -> np.ndarray:
        """The coded features of the pairs of customers ``rows`` (sorted), customer-major."""
        m = len(self.offers)
        k = len(rows)
        names = list(model.features_)
        X = np.empty((k * m, len(names)), dtype=np.float32)
        defaults = self._defaults()
        for f, name in enumerate(names):
            source = self.source(name)
            if source == "slot":
                X[:, f] = 1.0
            elif source == "customer":
                X[:, f] = np.repeat(coded[name][rows], m)
            elif source == "offer":
                X[:, f] = np.tile(coded[name], k)
            else:  # a history column: its default, then the rows filled in below
                X[:, f] = defaults[name]
        where = {name: f for f, name in enumerate(names)}
        for h in self.history.values():
            lo, hi = np.searchsorted(h.customer, [rows[0], rows[-1] + 1]) if k else (0, 0)
            at = np.searchsorted(rows, h.customer[lo:hi])
            ok = np.flatnonzero(rows[np.minimum(at, k - 1)] == h.customer[lo:hi])
            # per column, a block x (values + 1) table, the last column the default, read
            # for every offer through its value code
            codes = np.where(h.offer_value >= 0, h.offer_value, h.n_values)
            for col in h.values:
                if col not in where:
                    continue
                table = np.full((k, h.n_values + 1), defaults[col], dtype=np.float32)
                table[at[ok], h.value[lo:hi][ok]] = coded[col][lo:hi][ok]
                X[:, where[col]] = table[:, codes].reshape(-1)
        return X

    def score(
        self,
        model: Any,
        *,
        rows: np.ndarray | None = None,
        reporter: Reporter | None = None,
        dtype: Any = np.float64,
    ) -> np.ndarray:
        """n x m: the model's probability for every pair at slot 1 (0 outside ``rows``).

        ``dtype``: the batch keeps float32 (160 MB, not 320, per million customers x 40 offers).

        The trees are walked once per customer for all offers (:mod:`._pair_kernels`), with
        LightGBM's numbers; :meth:`matrix` and the model's ``predict_proba_matrix`` give the
        same probabilities row by row.
        """
        reporter = reporter or NullReporter()
        n, m = self.shape
        rows = np.arange(n) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
        reporter.start(len(rows), f"Scoring {len(rows):,} customers x {m} offers")
        walk = _Walk.build(self, model)
        p = np.zeros((n, m), dtype=dtype)
        step = max(1, _BLOCK_ROWS // max(m, 1))
        for a in range(0, len(rows), step):
            block = rows[a : a + step]
            p[block] = model.predict_proba_raw(walk.raw(block).reshape(-1)).reshape(-1, m)
            reporter.advance(len(block))
        reporter.finish()
        return p

    def sample(self, model: Any, size: int, seed: int = 0) -> np.ndarray:
        """About ``size`` coded pair rows of customers drawn at random (position weights)."""
        n, m = self.shape
        k = min(n, max(1, size // max(m, 1)))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
        return self.matrix(model, rows, self.coded(model))


@dataclass
class _Walk:
    """A day's pieces laid out for :func:`._pair_kernels.pair_raw`, for one model."""

    args: tuple[Any, ...]  # the kernel's arguments after ``rows``

    @classmethod
    def build(cls, scorer: PairScorer, model: Any) -> _Walk:
        forest = model.forest()
        coded = scorer.coded(model)
        names = list(model.features_)
        n, m = scorer.shape
        words = (m + 63) // 64
        defaults = scorer._defaults()
        kind = np.zeros(len(names), dtype=np.int64)
        col = np.zeros(len(names), dtype=np.int64)
        level = np.zeros(len(names), dtype=np.int64)
        customer_cols: list[np.ndarray] = []
        offer_values = np.zeros((len(names), m))
        levels = list(scorer.history)
        own: list[list[str]] = [[] for _ in levels]  # per level, its history features
        for f, name in enumerate(names):
            source = scorer.source(name)
            if source in ("slot", "customer"):
                col[f] = len(customer_cols)
                one = np.ones(n, np.float32) if source == "slot" else coded[name]
                customer_cols.append(np.asarray(one, dtype=np.float32))
            elif source == "offer":
                kind[f] = 1
                offer_values[f] = coded[name]
            else:
                kind[f] = 2
                level[f] = next(
                    i for i, lv in enumerate(levels) if name in scorer.history[lv].values
                )
                col[f] = len(own[level[f]])
                own[level[f]].append(name)
        C = np.column_stack(customer_cols) if customer_cols else np.zeros((n, 1), np.float32)
        # the history rows of every level, by customer (each level's rows are sorted by
        # customer: a stable sort of them all interleaves the levels); a row holds only its
        # own level's columns, the only ones the walk reads of it, so there are no defaults
        # to fill and each value is written once, in place
        hs = [scorer.history[lv] for lv in levels]
        customer = np.concatenate([h.customer for h in hs]) if hs else np.zeros(0, np.int32)
        at_row = np.empty(len(customer), dtype=np.int64)
        at_row[np.argsort(customer, kind="stable")] = np.arange(len(customer))
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(customer, minlength=n), out=ptr[1:])
        del customer
        rlevel = np.empty(len(at_row), dtype=np.int32)  # 50M rows at 5M customers: narrow
        rcode = np.empty(len(at_row), dtype=np.int32)
        RX = np.zeros((len(at_row), max([1, *map(len, own)])), dtype=np.float32)
        vmask_bits = []
        start, offset = 0, 0
        for i, h in enumerate(hs):
            dest = at_row[start : start + len(h.customer)]
            rlevel[dest] = i
            rcode[dest] = h.value + offset
            for j, name in enumerate(own[i]):
                RX[dest, j] = coded[name]
            bits = np.zeros((h.n_values, m), dtype=bool)
            has = h.offer_value >= 0
            bits[h.offer_value[has], np.flatnonzero(has)] = True
            vmask_bits.append(bits)
            start += len(h.customer)
            offset += h.n_values
        del at_row
        vmask = _pack(np.concatenate(vmask_bits) if vmask_bits else np.zeros((1, m), bool), words)
        # per node: the offers going left at an offer split, the default's side at a history one
        node_kind = kind[forest.feature]
        omask = np.zeros((forest.n_nodes, words), dtype=np.uint64)
        at = np.flatnonzero(node_kind == 1)
        if len(at):
            omask[at] = _pack(forest.sides(at, offer_values[forest.feature[at]]), words)
        d0 = np.zeros(forest.n_nodes, dtype=np.bool_)
        at = np.flatnonzero(node_kind == 2)
        if len(at):
            default = np.array([defaults[names[f]] for f in forest.feature[at]])
            d0[at] = forest.sides(at, default[:, None])[:, 0]
        args = (
            C,
            ptr,
            rlevel,
            rcode,
            RX,
            vmask,
            kind,
            col,
            level,
            omask,
            d0,
            len(levels),
            m,
            forest.depth() + 1,
            _pair_kernels.DEBRUIJN_TABLE,
            forest.roots,
            forest.feature,
            forest.left,
            forest.right,
            forest.leaf_value,
            *forest.decision(),
        )
        return cls(args=args)

    def raw(self, rows: np.ndarray) -> np.ndarray:
        """k x m raw scores of the pairs of customers ``rows``."""
        return np.asarray(_pair_kernels.pair_raw(np.asarray(rows, dtype=np.int64), *self.args))


def _pack(bits: np.ndarray, words: int) -> np.ndarray:
    """Rows of booleans as ``words`` little-endian uint64 bit masks each."""
    padded = np.zeros((len(bits), words * 64), dtype=bool)
    padded[:, : bits.shape[1]] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def pair_scorer(
    warehouse: Warehouse, customer_ids: np.ndarray, offers: pd.DataFrame, as_of: datetime
) -> PairScorer:
    """Read the pieces of the pairs ``customer_ids`` x ``offers.offer_id`` as of ``as_of``."""
    parts = pair_parts(warehouse, as_of)
    n = len(customer_ids)
    keys = ibis.memtable(
        pd.DataFrame({"customer_id": np.asarray(customer_ids, dtype=object), "_row": np.arange(n)})
    )
    offer_ids = list(offers.offer_id)
    got = parts.offers.filter(parts.offers.offer_id.isin(offer_ids)).to_pandas()
    got = got.set_index("offer_id").loc[offer_ids].reset_index()
    values = {level: pd.Index(got[f"offer_{level}"].dropna().unique()) for level in LEVELS}
    shown = read_shown(warehouse, keys, as_of)
    aff = {lv: read_affinity(parts.affinity[lv], keys, lv, values[lv]) for lv in LEVELS}

    def count() -> dict[str, tuple[Any, ...]]:
        return {lv: level_history(shown, aff[lv], lv, values[lv]) for lv in LEVELS}

    # the counting (numpy, which releases the GIL in its sorts) on a thread while the
    # warehouse computes the customer 360 (the connection runs one query at a time: this one)
    with ThreadPoolExecutor(1, thread_name_prefix="pair-history") as pool:
        counted = pool.submit(count)
        people = parts.customers.join(keys, "customer_id").order_by("_row")
        table = people.to_pyarrow()
        # each column freed as it is converted: at 5M customers Arrow's copy is 1.7 GB
        customers = table.to_pandas(self_destruct=True, split_blocks=True).drop(columns="_row")
        del table
        per_level = counted.result()
    if len(customers) != n:
        missing = sorted(set(customer_ids) - set(customers.customer_id))
        raise DataError(f"customer {missing[0]} has no row in the customers table")
    history: dict[str, _History] = {}
    for level in LEVELS:
        customer, value, columns, popular = per_level[level]
        got[f"pop_{level}_ctr"] = pop_column(got[f"offer_{level}"], popular)
        history[level] = _History(
            customer=customer,
            value=value,
            values=columns,
            offer_value=values[level].get_indexer(got[f"offer_{level}"]),
            n_values=len(values[level]),
        )
    return PairScorer(customers=customers, offers=got, history=history)
