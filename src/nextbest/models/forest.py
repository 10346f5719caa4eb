"""A LightGBM model's trees as flat arrays, scored by compiled loops with LightGBM's numbers.

:class:`Forest` reads a trained ``lightgbm.Booster`` (through ``dump_model``) into one array
per node field: split feature, threshold, numeric or categorical, default side, missing type,
children (``~leaf`` for a leaf) and the categorical bitsets. :meth:`Forest.raw` scores rows
with LightGBM's decision rule, and the pair scorer of :mod:`nextbest.decide.scoring` walks the
same arrays once per customer for all of a day's offers at a time, which is where the speed
comes from (see there). Raw scores equal ``Booster.predict(raw_score=True)`` to the last bit;
a test holds them so on trained models with missing values and categories.

Written by hand because the libraries that compile LightGBM models do not serve here: lleaves
1.3 no longer builds against llvmlite 0.50 (its legacy pass manager is gone), and Treelite with
TL2cgen needs a C compiler at load time, took 35 s to build the demo's 300 trees and measured
only 1.9x LightGBM's speed. Neither can share the work of one customer across offers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba.core.errors import NumbaPerformanceWarning

from nextbest.errors import DataError
from nextbest.models import _forest_kernels as kernels

__all__ = ["Forest"]

_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
# Node, leaf and bitset indices: 32 bits halve the walk's index arrays in the cache (the walk
# measured about 15 % faster than with 64 bits, the same sums), far from their limit (a 300-tree
# model has about 9,000 nodes).
_INDEX = np.int32


@dataclass(frozen=True)
class Forest:
    """The trees of a LightGBM booster (up to its best iteration) in flat arrays."""

    roots: np.ndarray  # per tree: its root node, or ~leaf for a one-leaf tree (int32, as every
    # index array here: feature, left, right, cat_start, cat_len)
    feature: np.ndarray  # per node: the feature it splits on
    threshold: np.ndarray  # per node: numeric threshold (left when x <= threshold)
    categorical: np.ndarray  # per node: a categorical split
    default_left: np.ndarray  # per node: the side of missing values
    missing: np.ndarray  # per node: LightGBM's missing type, 0 None, 1 Zero, 2 NaN
    left: np.ndarray  # per node: left child (>= 0 a node, < 0 ~leaf)
    right: np.ndarray
    cat_start: np.ndarray  # per categorical node: its first bitset word in cat_words
    cat_len: np.ndarray  # and the number of its words
    cat_words: np.ndarray  # uint32 bitsets: category c goes left if its bit is set
    leaf_value: np.ndarray
    n_features: int
    sigmoid: float  # the binary objective's link: p = 1 / (1 + exp(-sigmoid * raw))

    @classmethod
    def from_booster(cls, booster: Any) -> Forest:
        """Flatten ``booster``'s trees (a binary classifier's; other objectives are refused)."""
        dump = booster.dump_model()
        objective = str(dump.get("objective", "")).split()
        if not objective or objective[0] != "binary":
            raise DataError(
                f"a forest is read from a binary LightGBM classifier, got objective "
                f"{' '.join(objective) or 'none'!r}"
            )
        params = dict(p.split(":", 1) for p in objective[1:] if ":" in p)
        trees = dump["tree_info"]
        best = getattr(booster, "best_iteration", 0) or 0
        if best > 0:
            trees = trees[:best]
        b = _Builder()
        roots = [b.add(tree["tree_structure"]) for tree in trees]
        if max(len(b.feature), len(b.leaf_value), len(b.cat_words)) >= 2**31:
            raise DataError(
                f"a forest is read into 32-bit node indices, got {len(b.feature):,} nodes, "
                f"{len(b.leaf_value):,} leaves and {len(b.cat_words):,} bitset words"
            )
        return cls(
            roots=np.asarray(roots, dtype=_INDEX),
            feature=np.asarray(b.feature, dtype=_INDEX),
            threshold=np.asarray(b.threshold, dtype=np.float64),
            categorical=np.asarray(b.categorical, dtype=np.bool_),
            default_left=np.asarray(b.default_left, dtype=np.bool_),
            missing=np.asarray(b.missing, dtype=np.int8),
            left=np.asarray(b.left, dtype=_INDEX),
            right=np.asarray(b.right, dtype=_INDEX),
            cat_start=np.asarray(b.cat_start, dtype=_INDEX),
            cat_len=np.asarray(b.cat_len, dtype=_INDEX),
            cat_words=np.asarray(b.cat_words, dtype=np.uint32),
            leaf_value=np.asarray(b.leaf_value, dtype=np.float64),
            n_features=int(dump["max_feature_idx"]) + 1,
            sigmoid=float(params.get("sigmoid", 1.0)),
        )

    def probability(self, raw: np.ndarray) -> np.ndarray:
        """P(positive) from raw scores, as LightGBM's binary objective converts them."""
        return np.asarray(1.0 / (1.0 + np.exp(-self.sigmoid * np.asarray(raw, dtype=np.float64))))

    def depth(self) -> int:
        """The number of nodes on the longest root-to-leaf path."""
        deepest = 0
        for root in self.roots:
            stack = [(int(root), 0)]
            while stack:
                node, d = stack.pop()
                if node < 0:
                    deepest = max(deepest, d)
                else:
                    stack += [(int(self.left[node]), d + 1), (int(self.right[node]), d + 1)]
        return deepest

    @property
    def n_nodes(self) -> int:
        return len(self.feature)

    def decision(self) -> tuple[np.ndarray, ...]:
        """The arrays the node decision reads (``goes_left``'s ``rule``)."""
        return (
            self.threshold,
            self.categorical,
            self.default_left,
            self.missing,
            self.cat_start,
            self.cat_len,
            self.cat_words,
        )

    def raw(self, X: np.ndarray, *, threads: bool = True) -> np.ndarray:
        """The raw score of every row of ``X`` (columns in the model's order), the rows spread
        over numba's threads, or (``threads=False``) all on the calling thread: the same
        numbers, for tens of rows (a real-time request), where a thread pool costs more than
        it gives."""
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise DataError(f"expected {self.n_features} feature columns, got shape {X.shape}")
        args = (self.roots, self.feature, self.left, self.right, self.leaf_value)
        if threads:
            return np.asarray(kernels.raw_scores(X, *args, *self.decision()))
        walk = kernels.raw_scores_here
        if walk.signatures:
            return np.asarray(walk(X, *args, *self.decision()))
        with warnings.catch_warnings():  # compiling: "no transformation for parallel execution"
            warnings.simplefilter("ignore", NumbaPerformanceWarning)
            return np.asarray(walk(X, *args, *self.decision()))

    def sides(self, nodes: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Whether each value goes left: ``values[i, j]`` at node ``nodes[i]``."""
        nodes = np.asarray(nodes, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64).reshape(len(nodes), -1)
        return np.asarray(kernels.node_sides(values, nodes, *self.decision()))


class _Builder:
    """Appends the nodes and leaves of dumped trees, depth first."""

    def __init__(self) -> None:
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.categorical: list[bool] = []
        self.default_left: list[bool] = []
        self.missing: list[int] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.cat_start: list[int] = []
        self.cat_len: list[int] = []
        self.cat_words: list[int] = []
        self.leaf_value: list[float] = []

    def add(self, node: dict[str, Any]) -> int:
        if "split_feature" not in node:
            self.leaf_value.append(float(node["leaf_value"]))
            return ~(len(self.leaf_value) - 1)
        if node.get("decision_type") not in ("<=", "=="):
            raise DataError(f"unsupported split {node.get('decision_type')!r} in a LightGBM tree")
        i = len(self.feature)
        self.feature.append(int(node["split_feature"]))
        self.default_left.append(bool(node["default_left"]))
        self.missing.append(_MISSING[node["missing_type"]])
        if node["decision_type"] == "==":
            cats = [int(c) for c in str(node["threshold"]).split("||")]
            words = np.zeros(max(cats) // 32 + 1, dtype=np.uint64)
            for c in cats:
                words[c >> 5] |= np.uint64(1 << (c & 31))
            self.categorical.append(True)
            self.threshold.append(0.0)
            self.cat_start.append(len(self.cat_words))
            self.cat_len.append(len(words))
            self.cat_words.extend(int(w) for w in words)
        else:
            self.categorical.append(False)
            self.threshold.append(float(node["threshold"]))
            self.cat_start.append(0)
            self.cat_len.append(0)
        self.left.append(0)
        self.right.append(0)
        self.left[i] = self.add(node["left_child"])
        self.right[i] = self.add(node["right_child"])
        return i
