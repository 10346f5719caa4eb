"""Benchmark: the real-time decision service over HTTP, ``nextbest serve`` with 1M profiles.

A simulated retailer (20,000 members over 14 days, seeded) is loaded into a fresh workspace, a
propensity model is trained, and the batch decides the web campaign of the day after the data
under a budget that binds, so its summary carries dual prices the service must pay. The
snapshot of that day is built, then expanded to ``--customers`` profiles (default 1,000,000):
the simulated members' rows resampled under new ids ``B0000001``..., written in the snapshot's
own format and made current. The 1M profiles are therefore copies of the 20,000 simulated ones;
what is measured is the service with 1M profiles loaded, not a model of 1M distinct members.

Then ``nextbest serve`` runs as a separate process on 127.0.0.1 (``--workers``, one run per
number given), and a load generator in another process sends, open loop at ``--rate`` requests
per second for ``--seconds``, ``POST /v1/decide`` for random new ids on the web channel with a
context (weather, device, a time in the afternoon of the day after the data, when the 40 sales
opened that day at noon are the web's open offers). Latency is counted from each request's
scheduled send time, so queueing shows. Then ``POST /v1/events``: batches of 500 canonical
events from a few connections for ``--event-seconds``, and a replay of one batch, which must
answer 500 duplicates.

Before the server starts, one request at a time in this process (no HTTP): what a decision
costs, the model's share, how long it holds the online store's write lock (SQLite lets one
writer in at a time, across workers, so that time caps the whole service), and the cost with
Thompson exploration. The web campaign explores epsilon-greedy under load (``--exploration``),
as the service's tests do: with Thompson sampling each decision rebuilds the Thompson table of
every offer, far over the latency target, so that is reported in process only.

Reported against the DESIGN targets (decide p99 < 20 ms at 500 requests/s with 40 candidate
offers and 1M profiles; event intake >= 5,000 events/s): latency percentiles, achieved
throughput, answers other than 200, the server's memory and CPU per request, the load
generator's own CPU, and the machine's load average (other work may share the 2 cores).
A missed target is printed as MISSED; the script still exits 0 (a benchmark, not a test).

The pieces: the workspace and its expansion in ``_serve_workspace.py``, the in-process figures
in ``_serve_inproc.py``, one server run and the figures' rows in ``_serve_run.py``, the load
generator in ``_loadgen.py`` and the server process in ``_server.py``.

Usage: python bench/bench_serve.py [--customers 1000000] [--rate 500] [--seconds 20]
       [--workers 2[,1]] [--connections 32] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from _serve_inproc import in_process
from _serve_run import DECIDE_P99_MS, DECIDE_RATE, Row, load_text, make_keys, serve_run
from _serve_workspace import (
    check_expanded,
    expand_snapshot,
    open_offers,
    prepare,
    set_exploration,
    source_snapshot,
)

from nextbest.serve import current_snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="profiles served")
    parser.add_argument("--rate", type=float, default=DECIDE_RATE, help="decide requests/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="of decide load")
    parser.add_argument(
        "--workers",
        default="2",
        help="server worker processes, one per core by default; several runs: 1,2",
    )
    parser.add_argument("--keep", type=Path, help="Keep the workspace here; reuse it if there.")
    parser.add_argument("--members", type=int, default=20_000, help="simulated members")
    parser.add_argument("--days", type=int, default=14, help="simulated days")
    parser.add_argument(
        "--exploration",
        choices=("epsilon", "thompson"),
        default="epsilon",
        help="the web campaign's exploration under load (Thompson is timed in process anyway)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=32,
        help=(
            "decide keep-alive connections (default 32). 500 requests/s come from many clients "
            "(apps, web back ends behind a pool or a load balancer), not from 8 sockets; and "
            "the kernel spreads connections over the workers by a hash, so with 8 the split "
            "over 2 workers is lumpy (5/3, at times 8/0) and the figure measures the hash's luck"
        ),
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds, not counted")
    parser.add_argument("--event-seconds", type=float, default=10.0)
    parser.add_argument("--event-connections", type=int, default=4)
    args = parser.parse_args()
    workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    root = args.keep or Path(tempfile.mkdtemp(prefix="nextbest-bench-serve-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{load_text()} at the start")
    try:
        ws = root / "ws"
        if not (ws / "serving" / "snapshots" / "CURRENT").exists():
            prepare(root, args.members, args.days, args.exploration)
        set_exploration(ws, args.exploration)
        current = current_snapshot(ws)
        meta = json.loads((current / "meta.json").read_text(encoding="utf-8"))
        if meta.get("expanded_from") is None or meta["customers"] != args.customers:
            t = time.perf_counter()
            current, source = expand_snapshot(ws, args.customers)
            took = time.perf_counter() - t
            for old in (ws / "serving" / "snapshots").iterdir():
                if old.is_dir() and old not in (current, source_snapshot(ws)):
                    shutil.rmtree(old)  # an expansion of another size, from an earlier run
            t = time.perf_counter()
            check_expanded(ws, current, source)
            print(
                f"snapshot expanded to {args.customers:,} profiles in {took:.1f} s; checked "
                f"(rows, coded features, profiles, carts, impressions, pair features of 24 new "
                f"ids equal to their source member's) in {time.perf_counter() - t:.1f} s"
            )
        meta = json.loads((current / "meta.json").read_text(encoding="utf-8"))
        day = datetime.fromisoformat(meta["as_of"])  # the day after the data
        size = sum(p.stat().st_size for p in current.iterdir()) / 1024**3
        n_web, n_open = open_offers(current, day)
        print(
            "NOTE: the served profiles are the simulated members resampled under new ids: "
            + meta["expanded_note"].removeprefix("bench_serve: ")
        )
        print(
            f"snapshot {current.name}: {meta['customers']:,} profiles, {size:.2f} GB on disk; "
            f"web campaign ({args.exploration} exploration): {n_web} offers in the snapshot, "
            f"{n_open} open at every request time ({day:%Y-%m-%d} 12:00-24:00 UTC)"
        )
        keys = make_keys(root)
        t = time.perf_counter()
        inproc = in_process(root, args.customers, day)
        print(
            f"in process, one request at a time (no HTTP, no concurrency), {load_text()}:\n"
            f"  decide (epsilon-greedy, decisions with a slate) p50 {inproc['p50']:.2f} ms, p99 "
            f"{inproc['p99']:.2f} ms, CPU {inproc['cpu']:.2f} ms per decision; of which "
            f"(medians) the model on the {inproc['offers_scored']:.0f} offers open "
            f"{inproc['model']:.2f} ms and the store's write transaction (count contacts, "
            f"choose the slate, record it) {inproc['locked']:.2f} ms\n"
            f"  the model called back to back {inproc['predict']:.2f} ms ("
            f"{'compiled trees' if inproc['forest'] else 'LightGBM'} and np.interp; through "
            f"predict_proba_matrix {inproc['predict_proba']:.2f} ms; LightGBM's "
            f"Booster.predict: "
            f"{inproc['booster_0']:.2f} ms with its default threads, {inproc['booster_1']:.2f} ms "
            f"with one); a bare store transaction (count, record 3 decisions) p50 "
            f"{inproc['txn_p50']:.2f} ms, p99 {inproc['txn_p99']:.2f} ms\n"
            f"  SQLite lets one writer in at a time, across threads and workers: holding the lock "
            f"{inproc['locked']:.1f} ms per decision caps the whole service near "
            f"{1000 / inproc['locked']:,.0f} decisions/s\n"
            f"  with Thompson exploration instead of epsilon-greedy: {inproc['thompson']:,.0f} ms "
            f"per decision, {inproc['thompson_locked']:,.0f} ms of it holding the lock "
            f"({time.perf_counter() - t:.0f} s in all)"
        )
        rows = [
            Row(
                "decide with Thompson exploration, in process, one at a time (median)",
                f"{inproc['thompson']:,.0f} ms",
                f"< {DECIDE_P99_MS:g} ms at p99",
                DECIDE_P99_MS / inproc["thompson"],
            )
        ]
        for w in workers:
            rows += serve_run(root, args, w, keys, day)
        print(f"\nFigures ({load_text()}):")
        for row in rows:
            print("  " + row.line())
        missed = [r for r in rows if not r.met]
        print(
            f"{len(missed)} target(s) MISSED" if missed else "every target met",
            "(the 2 cores are shared by the server, the load generator and any other work)",
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
