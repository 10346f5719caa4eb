"""Compiled steps of basket mining (numba): depth-first itemset search and rule enumeration.

``mine`` finds every itemset bought in at least ``minsup`` baskets by a depth-first search
with occurrence lists (the occurrence deliver of LCM; Uno, Kiyomi & Arimura 2004): an itemset
P keeps the list of its baskets; one pass over those baskets' rows (items above P's last item)
counts every extension P + x at once, and a second pass delivers each basket to the list of
every frequent extension, which is searched next. Memory is the occurrence lists along the
current path, each at most the number of (basket, item) pairs, never a dense basket x item
matrix or a bit set per itemset, so 16,000-item catalogues and millions of baskets fit.

``rules`` enumerates, for every itemset of two or more items, each split into a non-empty
antecedent and consequent, looks both up in an open-addressing hash table of the itemsets,
and keeps the rules whose confidence (and lift) pass, returning indices into the itemsets.

Written with numba because both are short, branching loops per basket and per itemset, which
numpy can only express as one Python-level step per candidate; compiled they take
milliseconds where mlxtend takes seconds.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["mine", "order_rules", "rules", "sort_segments"]


@nb.njit(cache=True)
def _grow(a, need):  # type: ignore[no-untyped-def]
    """``a`` copied into an array of at least ``need`` entries (doubling)."""
    size = max(len(a) * 2, need, 16)
    b = np.empty(size, dtype=a.dtype)
    b[: len(a)] = a
    return b


@nb.njit(cache=True)
def mine(row_ptr, row_items, col_ptr, col_rows, minsup, max_len):  # type: ignore[no-untyped-def]
    """Frequent itemsets over items ``0..k-1`` (rows sorted ascending, one column per item,
    every column frequent). Returns ``(set_ptr, set_items, set_count)``: itemset ``s`` is
    ``set_items[set_ptr[s]:set_ptr[s + 1]]`` (ascending) in ``set_count[s]`` baskets."""
    k = len(col_ptr) - 1
    max_len = k if max_len <= 0 else min(max_len, k)
    # extensions of the frame at each depth: item, start and length of its occurrence list
    ext_item = np.empty(max(k, 16), dtype=np.int32)
    ext_start = np.empty(max(k, 16), dtype=np.int64)
    ext_len = np.empty(max(k, 16), dtype=np.int64)
    occ = col_rows.astype(np.int32)  # the root frame's lists are the item columns
    occ_top = len(occ)
    for j in range(k):
        ext_item[j] = j
        ext_start[j] = col_ptr[j]
        ext_len[j] = col_ptr[j + 1] - col_ptr[j]
    ext_top = k
    lo = np.zeros(max_len + 1, dtype=np.int64)
    hi = np.zeros(max_len + 1, dtype=np.int64)
    pos = np.zeros(max_len + 1, dtype=np.int64)
    base = np.zeros(max_len + 1, dtype=np.int64)
    prefix = np.empty(max_len + 1, dtype=np.int32)
    hi[0] = k
    base[0] = occ_top
    count = np.zeros(k, dtype=np.int64)
    slot = np.full(k, -1, dtype=np.int64)
    touched = np.empty(k, dtype=np.int32)
    write = np.empty(k, dtype=np.int64)
    fr = np.empty(k, dtype=np.int32)
    out_ptr = np.zeros(1024, dtype=np.int64)
    out_items = np.empty(4096, dtype=np.int32)
    out_count = np.empty(1024, dtype=np.int64)
    n_out = 0
    d = 0
    while d >= 0:
        if pos[d] == hi[d]:  # frame exhausted: free its lists and go back up
            ext_top = lo[d]
            occ_top = base[d]
            d -= 1
            continue
        j = pos[d]
        pos[d] += 1
        e = ext_item[j]
        prefix[d] = e
        size = d + 1
        if n_out + 2 > len(out_ptr):
            out_ptr = _grow(out_ptr, n_out + 2)
            out_count = _grow(out_count, n_out + 2)
        start = out_ptr[n_out]
        if start + size > len(out_items):
            out_items = _grow(out_items, start + size)
        out_items[start : start + size] = prefix[:size]
        out_count[n_out] = ext_len[j]
        out_ptr[n_out + 1] = start + size
        n_out += 1
        if size >= max_len or j + 1 == hi[d]:
            continue  # too long to extend, or no frequent sibling after e to extend it with
        s0 = ext_start[j]
        s1 = s0 + ext_len[j]
        # pass 1: count, over the baskets of prefix + e, every item that can extend it: the
        # siblings after e (P + x is frequent), the smallest of which is ext_item[j + 1]
        low = ext_item[j + 1]
        n_t = 0
        for p in range(s0, s1):
            r = occ[p]
            for q in range(row_ptr[r + 1] - 1, row_ptr[r] - 1, -1):
                x = row_items[q]
                if x < low:
                    break
                if count[x] == 0:
                    touched[n_t] = x
                    n_t += 1
                count[x] += 1
        # the frequent extensions, in ascending order: the siblings after e that passed
        n_f = 0
        for t in range(j + 1, hi[d]):
            x = ext_item[t]
            if count[x] >= minsup:
                fr[n_f] = x
                n_f += 1
        if n_f == 0:
            for t in range(n_t):
                count[touched[t]] = 0
            continue
        if ext_top + n_f > len(ext_item):
            ext_item = _grow(ext_item, ext_top + n_f)
            ext_start = _grow(ext_start, ext_top + n_f)
            ext_len = _grow(ext_len, ext_top + n_f)
        # only extensions that can be extended again need their baskets: not the last one
        # (no sibling after it), none when they are as long as allowed
        n_list = 0 if size + 1 >= max_len else n_f - 1
        total = 0
        for t in range(n_list):
            total += count[fr[t]]
        if occ_top + total > len(occ):
            occ = _grow(occ, occ_top + total)
        at = occ_top
        for t in range(n_f):
            x = fr[t]
            ext_item[ext_top + t] = x
            ext_len[ext_top + t] = count[x]
            ext_start[ext_top + t] = at
            if t < n_list:
                slot[x] = t
                write[t] = at
                at += count[x]
        for t in range(n_t):
            count[touched[t]] = 0
        # pass 2: deliver each basket to the list of every extension that needs one
        if n_list > 0:
            low = fr[0]
            for p in range(s0, s1):
                r = occ[p]
                for q in range(row_ptr[r + 1] - 1, row_ptr[r] - 1, -1):
                    x = row_items[q]
                    if x < low:
                        break
                    t = slot[x]
                    if t >= 0:
                        occ[write[t]] = r
                        write[t] += 1
            for t in range(n_list):
                slot[fr[t]] = -1
        d += 1
        lo[d] = ext_top
        hi[d] = ext_top + n_f
        pos[d] = ext_top
        base[d] = occ_top
        ext_top += n_f
        occ_top = at
    return out_ptr[: n_out + 1].copy(), out_items[: out_ptr[n_out]].copy(), out_count[:n_out].copy()


@nb.njit(cache=True)
def sort_segments(ptr, values):  # type: ignore[no-untyped-def]
    """Sort each segment ``values[ptr[i]:ptr[i + 1]]`` in place (insertion sort: itemsets are
    short)."""
    for i in range(len(ptr) - 1):
        for a in range(ptr[i] + 1, ptr[i + 1]):
            v = values[a]
            b = a - 1
            while b >= ptr[i] and values[b] > v:
                values[b + 1] = values[b]
                b -= 1
            values[b + 1] = v


@nb.njit(cache=True, inline="always")
def _hash(items, n):  # type: ignore[no-untyped-def]
    h = np.uint64(14695981039346656037)
    for t in range(n):
        h = (h ^ np.uint64(items[t])) * np.uint64(1099511628211)
    h ^= h >> np.uint64(29)
    return h


@nb.njit(cache=True)
def _find(table, mask, ptr, items, key, n):  # type: ignore[no-untyped-def]
    """Index of the itemset equal to ``key[:n]``, or -1."""
    h = _hash(key, n) & mask
    while True:
        s = table[h]
        if s < 0:
            return -1
        a = ptr[s]
        if ptr[s + 1] - a == n:
            same = True
            for t in range(n):
                if items[a + t] != key[t]:
                    same = False
                    break
            if same:
                return s
        h = (h + np.uint64(1)) & mask


@nb.njit(cache=True)
def rules(ptr, items, support, n_baskets, min_confidence, min_lift):  # type: ignore[no-untyped-def]
    """Rules A -> C over the itemsets (each sorted ascending): ``(whole, ante, cons)`` indices
    of the itemsets A u C, A and C, or a single ``-1 - s`` in ``whole`` when itemset ``s``
    lacks a subset. Confidence is computed as mlxtend does, ``s(AC) N / (s(A) N)``. Where an
    itemset appears more than once the last row counts, as in a dict built from the rows."""
    n_sets = len(ptr) - 1
    cap = 16
    while cap < 2 * n_sets:
        cap *= 2
    table = np.full(cap, -1, dtype=np.int64)
    mask = np.uint64(cap - 1)
    for s in range(n_sets):
        a = ptr[s]
        n = ptr[s + 1] - a
        key = items[a : a + n]
        h = _hash(key, n) & mask
        while table[h] >= 0:
            o = table[h]
            if ptr[o + 1] - ptr[o] == n and np.all(items[ptr[o] : ptr[o + 1]] == key):
                break
            h = (h + np.uint64(1)) & mask
        table[h] = s
    width = 1
    for s in range(n_sets):
        width = max(width, ptr[s + 1] - ptr[s])
    ante = np.empty(width, dtype=items.dtype)
    cons = np.empty(width, dtype=items.dtype)
    out_w = np.empty(1024, dtype=np.int64)
    out_a = np.empty(1024, dtype=np.int64)
    out_c = np.empty(1024, dtype=np.int64)
    n_out = 0
    for s in range(n_sets):
        a = ptr[s]
        m = ptr[s + 1] - a
        if m < 2 or _find(table, mask, ptr, items, items[a : a + m], m) != s:
            continue
        for bits in range(1, (1 << m) - 1):
            na = 0
            nc = 0
            for t in range(m):
                if bits >> t & 1:
                    ante[na] = items[a + t]
                    na += 1
                else:
                    cons[nc] = items[a + t]
                    nc += 1
            ia = _find(table, mask, ptr, items, ante, na)
            ic = _find(table, mask, ptr, items, cons, nc)
            if ia < 0 or ic < 0:
                out_w[0] = -1 - s
                return out_w[:1].copy(), out_a[:0].copy(), out_c[:0].copy()
            conf = (support[s] * n_baskets) / (support[ia] * n_baskets)
            if conf < min_confidence or conf / support[ic] < min_lift:
                continue
            if n_out == len(out_w):
                out_w = _grow(out_w, n_out + 1)
                out_a = _grow(out_a, n_out + 1)
                out_c = _grow(out_c, n_out + 1)
            out_w[n_out] = s
            out_a[n_out] = ia
            out_c[n_out] = ic
            n_out += 1
    return out_w[:n_out].copy(), out_a[:n_out].copy(), out_c[:n_out].copy()


@nb.njit(cache=True)
def order_rules(lift, conf):  # type: ignore[no-untyped-def]
    """Positions sorting the rules by lift, then confidence, both descending, then position
    (one quicksort and a pass over the runs of equal lift; ``np.lexsort`` is 4x slower)."""
    order = np.argsort(-lift)
    n = len(order)
    a = 0
    while a < n:
        b = a + 1
        while b < n and lift[order[b]] == lift[order[a]]:
            b += 1
        if b - a > 16:
            group = np.sort(order[a:b])
            order[a:b] = group[np.argsort(-conf[group], kind="mergesort")]
        else:
            for i in range(a + 1, b):
                v = order[i]
                j = i - 1
                while j >= a and (
                    conf[order[j]] < conf[v] or (conf[order[j]] == conf[v] and order[j] > v)
                ):
                    order[j + 1] = order[j]
                    j -= 1
                order[j + 1] = v
        a = b
    return order
