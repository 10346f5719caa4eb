"""Benchmark: simulate a retailer, then ingest its output, each in its own process.

Prints wall time and peak memory (the child's own maximum resident set size) for

1. ``nextbest simulate --customers N --days D`` (target: 1M x 30 in < 10 min, < 8 GB);
2. ``nextbest ingest`` of its output into a new workspace (validated, idempotent);
3. the reference: DuckDB loading the same Parquet files with no validation at all
   (``CREATE TABLE ... AS SELECT * FROM read_parquet``), so the ratio shows what validation,
   quarantine and idempotency cost.

Usage: python bench/bench_ingest.py [--customers 1000000] [--days 30] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(argv: list[str]) -> None:
    """Run one step in this process and report its time and peak memory as JSON on stderr."""
    step, *rest = argv
    started = time.perf_counter()
    if step == "duckdb":
        import duckdb

        sim, db = Path(rest[0]), rest[1]
        con = duckdb.connect(db)
        rows = 0
        for table in ("customers", "products", "offers", "decisions", "events"):
            con.execute(
                f"CREATE TABLE {table} AS SELECT * FROM read_parquet('{sim / table}.parquet')"
            )
            rows += con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        con.close()
        result: dict[str, object] = {"rows": rows}
    else:
        from nextbest.cli.main import main

        sys.argv = ["nextbest", step, *rest]
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                raise
        result = {}
    result["seconds"] = time.perf_counter() - started
    result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    sys.stderr.write("BENCH " + json.dumps(result) + "\n")


def _measure(*args: str) -> tuple[dict[str, float], str]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"step {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    line = next(x for x in done.stderr.splitlines() if x.startswith("BENCH "))
    return json.loads(line[6:]), done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep the outputs in this folder")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="nextbest-bench-"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    sim = root / "sim"
    print(f"nextbest ingestion benchmark: {args.customers:,} customers x {args.days} days")
    s, _ = _measure(
        "simulate",
        "--customers",
        str(args.customers),
        "--days",
        str(args.days),
        "--seed",
        str(args.seed),
        "--out",
        str(sim),
        "--json",
    )
    size = sum(p.stat().st_size for p in sim.glob("*.parquet")) / 1024**2
    print(
        f"  simulate        {s['seconds']:8.1f} s   peak {s['peak_gb']:5.2f} GB   "
        f"({size:,.0f} MB of Parquet)"
    )
    _measure("init", str(root / "ws"))
    i, out = _measure("ingest", str(sim), "--workspace", str(root / "ws"), "--json")
    loads = json.loads(out)
    rows = sum(t["read"] for x in loads for t in x["tables"].values())
    loaded = sum(t["loaded"] for x in loads for t in x["tables"].values())
    print(
        f"  nextbest ingest {i['seconds']:8.1f} s   peak {i['peak_gb']:5.2f} GB   "
        f"{rows:,} rows read, {loaded:,} loaded, {rows / i['seconds']:,.0f} rows/s"
    )
    d, _ = _measure("duckdb", str(sim), str(root / "raw.duckdb"))
    print(
        f"  duckdb raw load {d['seconds']:8.1f} s   peak {d['peak_gb']:5.2f} GB   "
        f"{d['rows']:,} rows, no validation (reference)"
    )
    print(f"  ratio: nextbest ingest takes {i['seconds'] / d['seconds']:.1f}x the raw load")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
    else:
        main()
