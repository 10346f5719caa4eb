"""Benchmark: simulate a flash-sale retailer and report time, peak memory, rows and bytes.

Target (DESIGN.md): 1M customers over 30 days in < 10 minutes and < 8 GB peak memory on a
2-core machine. Runs :func:`nextbest.simulate.simulate` in this process into a temporary
folder (deleted afterwards unless ``--keep`` names one) and prints the wall time, the peak
resident set size of the process (``resource.getrusage``, imports included), the rows written
per table and the bytes on disk, data and ground truth apart.

Usage: python bench/bench_simulate.py [--customers 1000000] [--days 30] [--seed 1]
       [--file-format parquet|csv] [--policy random|popular] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _memory import peak_gb

from nextbest.simulate import SimConfig, simulate


class _DayReporter:
    """Prints a line every few simulated days, so a long run shows it is alive."""

    def __init__(self) -> None:
        self.done, self.total, self.started = 0, 0, time.perf_counter()

    def start(self, total: int, description: str, /) -> None:
        self.total = total

    def advance(self, n: int = 1, /) -> None:
        self.done += n
        if self.done % 5 == 0 or self.done == self.total:
            elapsed = time.perf_counter() - self.started
            print(f"  day {self.done:4d}/{self.total}  {elapsed:7.1f} s", file=sys.stderr)

    def finish(self) -> None:
        return None


def _size(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--file-format", choices=("parquet", "csv"), default="parquet")
    parser.add_argument("--policy", choices=("random", "popular"), default="random")
    parser.add_argument("--keep", type=Path, help="write into this folder and keep it")
    args = parser.parse_args()
    config = SimConfig(
        n_customers=args.customers,
        days=args.days,
        seed=args.seed,
        file_format=args.file_format,
        policy=args.policy,
    )
    out = args.keep or Path(tempfile.mkdtemp(prefix="nextbest-bench-sim-")) / "sim"
    print(f"nextbest simulator benchmark: {args.customers:,} customers x {args.days} days")
    before = peak_gb()
    started = time.perf_counter()
    summary = simulate(config, out, reporter=_DayReporter())
    seconds = time.perf_counter() - started
    data = [p for p in out.iterdir() if p.is_file()]
    truth = [p for p in (out / "truth").iterdir() if p.is_file()]
    print(f"  wall time   {seconds:8.1f} s")
    print(f"  peak RSS    {peak_gb():8.2f} GB  (after imports: {before:.2f} GB)")
    for name, rows in summary.rows.items():
        print(f"  {name:<11} {rows:>14,} rows")
    events = summary.rows["events"] + summary.rows["decisions"]
    print(f"  throughput  {events / seconds:>14,.0f} decisions + events per second")
    print(f"  data        {_size(data):8.1f} MB  ({args.file_format})")
    print(f"  truth       {_size(truth):8.1f} MB  (parquet)")
    rates = ", ".join(f"{k} {v:.4f}" for k, v in summary.rates.items())
    print(f"  rates       {rates}")
    if args.keep is None:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
