"""The compiled pair scorer: one walk of the forest per customer for all of a day's offers.

A customer's pairs with the m offers share every customer feature; they differ only in the
offer's own features and in the customer's history with the offer's brand and category, which
is empty for most pairs. So each tree is walked once per customer, carrying the set of offers
still on a path as a bit mask (``W`` words of 64 offers):

- a split on a customer feature sends the whole set one way, with one comparison;
- a split on an offer feature splits the set by a mask computed once per node for the day;
- a split on a history feature sends the offers without history for that level (most of them)
  the default value's way, and checks the customer's few history rows one by one;
- a leaf adds its value to every offer left in the set.

The leaf values of each pair are added tree by tree in order, as LightGBM does, so the raw
scores are LightGBM's to the last bit (a test holds them so).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from nextbest.models._forest_kernels import goes_left

__all__ = ["DEBRUIJN_TABLE", "pair_raw"]

_MAGIC = 0x03F79D71B4CB0A89  # a de Bruijn sequence: bit i times it has a unique top 6 bits
_DEBRUIJN = np.uint64(_MAGIC)


def _debruijn_table() -> np.ndarray:
    table = np.zeros(64, dtype=np.int64)
    for i in range(64):
        table[(((1 << i) * _MAGIC) & (2**64 - 1)) >> 58] = i
    return table


DEBRUIJN_TABLE = _debruijn_table()


@nb.njit(cache=True, inline="always")
def _any(mask, W):  # type: ignore[no-untyped-def]
    found = False
    for w in range(W):
        found |= mask[w] != 0
    return found


@nb.njit(cache=True, parallel=True)
def pair_raw(  # type: ignore[no-untyped-def]
    rows,  # k: customer indices
    C,  # n x Fc: coded customer columns
    ptr,  # n + 1: each customer's history rows
    rlevel,  # R: the level of a history row
    rcode,  # R: its value code (global over the levels)
    RX,  # R x Fp: its coded history columns
    vmask,  # codes x W: the offers of each value
    kind,  # per feature: 0 customer, 1 offer, 2 history
    col,  # per feature: its column in C or RX
    level,  # per feature: the level of a history feature
    omask,  # nodes x W: offers going left at an offer node
    d0,  # nodes: the side of the default value at a history node
    n_levels,
    m,
    depth,  # the deepest tree's depth + 1 (the stack size)
    table,  # DEBRUIJN_TABLE
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
):
    """Raw scores, ``k x m``, of the pairs of customers ``rows`` with the m offers."""
    k = rows.shape[0]
    W = vmask.shape[1]
    out = np.zeros((k, m))
    full = np.zeros(W, dtype=np.uint64)
    for j in range(m):
        full[j >> 6] |= np.uint64(1) << np.uint64(j & 63)
    debruijn = _DEBRUIJN
    for g in nb.prange(k):
        c = rows[g]
        r0, r1 = ptr[c], ptr[c + 1]
        have = np.zeros((n_levels, W), dtype=np.uint64)
        for r in range(r0, r1):
            for w in range(W):
                have[rlevel[r], w] |= vmask[rcode[r], w]
        acc = np.zeros(m)
        snode = np.empty(depth, dtype=np.int64)
        smask = np.empty((depth, W), dtype=np.uint64)
        cur = np.empty(W, dtype=np.uint64)
        lm = np.empty(W, dtype=np.uint64)
        rm = np.empty(W, dtype=np.uint64)
        for t in range(roots.shape[0]):
            snode[0] = roots[t]
            for w in range(W):
                smask[0, w] = full[w]
            sp = 1
            while sp > 0:
                sp -= 1
                node = snode[sp]
                for w in range(W):
                    cur[w] = smask[sp, w]
                while node >= 0:
                    f = feature[node]
                    kf = kind[f]
                    if kf == 0:
                        x = np.float64(C[c, col[f]])
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
                        continue
                    if kf == 1:
                        for w in range(W):
                            lm[w] = cur[w] & omask[node, w]
                    else:
                        lv = level[f]
                        for w in range(W):
                            lm[w] = (cur[w] & ~have[lv, w]) if d0[node] else np.uint64(0)
                        for r in range(r0, r1):
                            if rlevel[r] != lv:
                                continue
                            hit = False
                            for w in range(W):
                                if cur[w] & vmask[rcode[r], w]:
                                    hit = True
                            if hit and goes_left(
                                node,
                                np.float64(RX[r, col[f]]),
                                threshold,
                                categorical,
                                default_left,
                                missing,
                                cat_start,
                                cat_len,
                                cat_words,
                            ):
                                for w in range(W):
                                    lm[w] |= cur[w] & vmask[rcode[r], w]
                    for w in range(W):
                        rm[w] = cur[w] & ~lm[w]
                    if not _any(lm, W):
                        node = right[node]
                    elif not _any(rm, W):
                        node = left[node]
                    else:
                        snode[sp] = right[node]
                        for w in range(W):
                            smask[sp, w] = rm[w]
                        sp += 1
                        node = left[node]
                        for w in range(W):
                            cur[w] = lm[w]
                v = leaf_value[~node]
                for w in range(W):
                    bits = cur[w]
                    while bits:
                        low = bits & (~bits + np.uint64(1))
                        acc[(w << 6) + table[(low * debruijn) >> np.uint64(58)]] += v
                        bits ^= low
        for j in range(m):
            out[g, j] = acc[j]
    return out
