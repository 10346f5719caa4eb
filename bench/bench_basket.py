"""Benchmark: itemsets and rules on Groceries and FIMI retail, nextbest against mlxtend.

Both run in the same process on the same baskets and thresholds, from an already-built sparse
input (mlxtend: a sparse one-hot DataFrame, about as fast for its fpgrowth as a dense one on
Groceries and the only one that fits for retail; nextbest: a sparse basket x item matrix).
Per case: frequent itemsets (nextbest ``frequent_itemsets``, mlxtend ``fpgrowth``), then rules
at ``--min-confidence`` (nextbest ``association_rules``, mlxtend ``association_rules`` with
``num_itemsets`` = the number of baskets), each the best of ``--repeat`` runs for both sides;
the ratio is mlxtend's time over ours, per step and in total. The outputs are checked equal:
the same itemsets with the same supports, the same rules with the same five metrics (exactly).
nextbest's compiled kernels are loaded (numba cache) by a first call, timed and printed apart.
Peak memory is the most allocated at once during one run of each side's two steps, above
what was allocated before (tracemalloc, which sees numpy's and numba's arrays too).
Target: 10x faster than mlxtend.

Usage: python bench/bench_basket.py [--data ../shared/data] [--repeat 3] [--min-confidence 0.3]
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlxtend.frequent_patterns import association_rules as mlxtend_rules
from mlxtend.frequent_patterns import fpgrowth
from mlxtend.preprocessing import TransactionEncoder

from nextbest.models import BasketMatrix, association_rules, basket_matrix, frequent_itemsets

CASES = [
    ("groceries/groceries.csv", ",", (0.01, 0.005, 0.002)),
    ("retail_fimi/retail.dat", None, (0.01, 0.005, 0.002)),
]
METRICS = ("antecedent support", "consequent support", "support", "confidence", "lift")
METRICS += ("leverage", "conviction")


def peak_mb(work: Callable[[], Any]) -> float:
    """Peak memory allocated during ``work()`` above what was allocated before it, in MB, as
    tracemalloc counts it (Python objects, numpy arrays and numba's arrays)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def best_of(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    best, out = np.inf, None
    for _ in range(repeat):
        started = time.perf_counter()
        out = work()
        best = min(best, time.perf_counter() - started)
    return best, out


def same_rules(mine: pd.DataFrame, ref: pd.DataFrame) -> bool:
    def table(df: pd.DataFrame) -> dict[tuple[frozenset, frozenset], tuple[float, ...]]:
        values = zip(*(df[m] for m in METRICS), strict=True)
        return dict(zip(zip(df.antecedents, df.consequents, strict=True), values, strict=True))

    return table(mine) == table(ref)


def run_case(
    name: str,
    matrix: BasketMatrix,
    onehot: pd.DataFrame,
    n: int,
    s: float,
    conf: float,
    repeat: int,
) -> None:
    """Time, measure and compare one (data, support) case; print its line."""

    def ours() -> pd.DataFrame:
        return frequent_itemsets(matrix, s)

    def theirs() -> pd.DataFrame:
        return fpgrowth(onehot, min_support=s, use_colnames=True)

    def their_rules(itemsets: pd.DataFrame) -> pd.DataFrame:
        return mlxtend_rules(itemsets, num_itemsets=n, metric="confidence", min_threshold=conf)

    t_fi, mine = best_of(repeat, ours)
    t_ru, rules = best_of(repeat, lambda: association_rules(mine, conf))
    m_fi, ref = best_of(repeat, theirs)
    m_ru, ref_rules = best_of(repeat, lambda: their_rules(ref))
    mem = peak_mb(lambda: association_rules(ours(), conf))
    ref_mem = peak_mb(lambda: their_rules(theirs()))
    same = dict(zip(mine.itemsets, mine.support, strict=True)) == dict(
        zip(ref.itemsets, ref.support, strict=True)
    ) and same_rules(rules, ref_rules)
    print(
        f"  {name:11} {s:7} {len(mine):8,} {len(rules):6,} |"
        f" {t_fi:7.4f} + {t_ru:7.4f} = {t_fi + t_ru:7.4f} |"
        f" {m_fi:7.3f} + {m_ru:7.3f} = {m_fi + m_ru:7.3f} |"
        f" {m_fi / t_fi:6.1f}x {m_ru / t_ru:5.1f}x {(m_fi + m_ru) / (t_fi + t_ru):6.1f}x |"
        f" {mem:7.1f} {ref_mem:7.1f} | {same}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--min-confidence", type=float, default=0.3)
    args = parser.parse_args()
    conf = args.min_confidence
    print(
        f"basket mining: nextbest vs mlxtend fpgrowth + association_rules (confidence >= {conf}),"
        f" same process, best of {args.repeat}; load average {os.getloadavg()[0]:.2f}"
    )
    started = time.perf_counter()
    association_rules(frequent_itemsets(basket_matrix([0, 0, 1], ["a", "b", "a"]), 0.5), 0.5)
    print(
        f"  nextbest first call (loads the compiled kernels): {time.perf_counter() - started:.2f} s"
    )
    print(
        f"  {'data':11} {'support':>7} {'itemsets':>8} {'rules':>6} | seconds nextbest"
        " itemsets + rules = total | mlxtend itemsets + rules = total | ratio itemsets rules"
        " total | peak MB nextbest mlxtend | same"
    )
    for name, sep, supports in CASES:
        path = args.data / name
        if not path.exists():
            print(f"  {name}: not found under {args.data}, skipped")
            continue
        baskets = [
            line.split(sep) if sep else line.split() for line in path.read_text().splitlines()
        ]
        ids = [i for i, b in enumerate(baskets) for _ in b]
        items = [x for b in baskets for x in b]
        matrix = basket_matrix(ids, items)
        te = TransactionEncoder()
        onehot = pd.DataFrame.sparse.from_spmatrix(
            te.fit(baskets).transform(baskets, sparse=True), columns=te.columns_
        )
        for s in supports:
            run_case(name.split("/")[0], matrix, onehot, len(baskets), s, conf, args.repeat)
    print(f"  load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
