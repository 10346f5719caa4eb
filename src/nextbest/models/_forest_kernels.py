"""Compiled loops over a LightGBM forest flattened into arrays (numba).

``goes_left`` is LightGBM's own decision rule (``Tree::NumericalDecision`` and
``Tree::CategoricalDecision`` in its ``tree.h``): a NaN is read as 0 unless the node's missing
type is NaN; a missing value (NaN, or 0 for the Zero type) takes the node's default side; a
category goes left when its bit is set in the node's bitset, and NaN, negative or unseen codes go
right. Leaves are stored as negative children (``~leaf``). Sums run over the trees in order, as
LightGBM's, so the raw scores are the same numbers to the last bit.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["goes_left", "node_sides", "raw_scores", "raw_scores_here"]

_ZERO = 1e-35  # LightGBM's kZeroThreshold


@nb.njit(cache=True, inline="always")
def goes_left(
    node, x, threshold, categorical, default_left, missing, cat_start, cat_len, cat_words
):  # type: ignore[no-untyped-def]
    """Whether ``x`` goes left at ``node`` (the arrays are :meth:`Forest.decision`'s)."""
    if not categorical[node]:
        kind = missing[node]
        if np.isnan(x):
            if kind == 2:
                return default_left[node]
            x = 0.0
        if kind == 1 and -_ZERO <= x <= _ZERO:
            return default_left[node]
        return x <= threshold[node]
    if np.isnan(x) or x < 0:
        return False
    code = int(x)
    word = code >> 5
    if word >= cat_len[node]:
        return False
    return (cat_words[cat_start[node] + word] >> np.uint32(code & 31)) & np.uint32(1) == 1


def _raw_scores(
    X,
    roots,
    feature,
    left,
    right,
    leaf_value,
    threshold,
    categorical,
    default_left,
    missing,
    cat_start,
    cat_len,
    cat_words,
):  # type: ignore[no-untyped-def]
    """The forest's raw score (sum of leaf values) of every row of ``X``.

    The decision arrays are passed one by one (``*forest.decision()``): taken as one tuple and
    unpacked in ``goes_left``, they made the walk ten times slower. Compiled twice below:
    :data:`raw_scores` (threads) and :data:`raw_scores_here` (the calling thread).
    """
    n = X.shape[0]
    out = np.empty(n)
    for r in nb.prange(n):
        total = 0.0
        for t in range(roots.shape[0]):
            node = roots[t]
            while node >= 0:
                x = np.float64(X[r, feature[node]])
                node = (
                    left[node]
                    if goes_left(
                        node,
                        x,
                        threshold,
                        categorical,
                        default_left,
                        missing,
                        cat_start,
                        cat_len,
                        cat_words,
                    )
                    else right[node]
                )
            total += leaf_value[~node]
        out[r] = total
    return out


raw_scores = nb.njit(cache=True, parallel=True)(_raw_scores)
"""The forest's raw score of every row of ``X``, rows spread over numba's threads."""

# The same loop on the calling thread, for tens of rows (the real-time service): numba's
# parallel pipeline without its parallel loop. On 40 rows it took 15-20 % less CPU than
# ``raw_scores`` held to one thread (no thread pool to go through, nor a thread count to set
# and restore), while plain ``njit`` of the same function, without the parallel pipeline's
# passes, walked six times slower. numba warns that nothing was made parallel: expected here
# (see ``Forest.raw``).
raw_scores_here = nb.njit(cache=True, parallel={"prange": False})(_raw_scores)  # type: ignore[call-overload]  # numba takes a dict of parallel passes; its stubs say bool


@nb.njit(cache=True)
def node_sides(
    values, nodes, threshold, categorical, default_left, missing, cat_start, cat_len, cat_words
):  # type: ignore[no-untyped-def]
    """``out[i, j]``: whether value ``values[i, j]`` goes left at node ``nodes[i]``."""
    out = np.zeros(values.shape, dtype=np.bool_)
    for i in range(nodes.shape[0]):
        node = nodes[i]
        for j in range(values.shape[1]):
            out[i, j] = goes_left(
                node,
                np.float64(values[i, j]),
                threshold,
                categorical,
                default_left,
                missing,
                cat_start,
                cat_len,
                cat_words,
            )
    return out
