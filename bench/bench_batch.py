"""Benchmark: the daily batch end to end, ``nextbest decide`` on a simulated retailer at scale.

A simulated retailer (1M members, about 40 sales open a day) is loaded into a fresh workspace
and a propensity model is trained on its last days; then the daily e-mail of the next day is
decided with the demo's campaign plus a campaign budget: 3 slots each, stock, a 15% minimum
share of new designers' sales, one sale per brand in a slate, 5% exploration, a 10% holdout.

Reported: the time of each phase of ``decide`` (reading the pieces of the features, scoring
every member x sale, solving, rounding, writing slates and the log) and the peak memory of the
decide process, against the DESIGN targets (1M x 40: < 60 s, < 4 GB). The reference, run in the
same process on the same pairs, is LightGBM's own ``Booster.predict`` row by row, against the
scorer's walk of the trees once per member for all sales (:mod:`nextbest.decide.scoring`).

Usage: python bench/bench_batch.py [--customers 1000000] [--days 4] [--keep DIR]

With ``--keep DIR`` the simulated workspace and its model are kept and reused by the next run
(the 5M shop takes about 45 minutes to simulate, load and train on 2 cores); each run first
takes the benchmark day's decisions out of the kept log, so it decides the day afresh.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from _memory import peak_gb

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.decide import decide, parse_campaign
from nextbest.decide.scoring import pair_scorer
from nextbest.models import ModelStore, TrainOptions, train
from nextbest.simulate import SimConfig, simulate

CAMPAIGN = {
    "campaign": {
        "name": "daily-email",
        "slots": 3,
        "max_per_brand": 1,
        "budget": 1_000_000.0,
        "shares": [{"tag": "new_designer", "min": 0.15}],
        "exploration": {"share": 0.05, "method": "thompson", "novelty_share": 0.5},
        "experiment": {"name": "daily-email", "holdout": 0.1},
        "contact": {"per_week": {"email": 7}},
    }
}


class Phases:
    """A progress reporter that times each piece of work ``decide`` reports."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float, float]] = []
        self._t = time.perf_counter()
        self._label = ""

    def start(self, total: float | None, description: str) -> None:
        self._close("between phases")
        self._label = description

    def advance(self, amount: float = 1) -> None:
        return None

    def finish(self) -> None:
        self._close(self._label)

    def _close(self, label: str) -> None:
        now = time.perf_counter()
        if now - self._t > 0.05:
            self.times.append((label or "reading and setting up", now - self._t, peak_gb()))
        self._t = now


def _decide(root: Path, day: datetime, queue: mp.Queue) -> None:
    ws = Workspace.open(root / "ws")
    phases = Phases()
    t = time.perf_counter()
    run = decide(ws, parse_campaign(CAMPAIGN), day, out=root / "out", reporter=phases)
    total = time.perf_counter() - t
    phases.finish()
    s = run.summary
    peak = peak_gb()
    # the reference: LightGBM alone on the same pairs of 50,000 members, against our walk
    # of the trees (one per customer for all offers), both to the same probabilities
    inputs = run.plan.inputs
    model, _ = ModelStore(ws.models).load("propensity")
    ids = inputs.customer_ids[:50_000]
    scorer = pair_scorer(ws.warehouse, ids, inputs.offers, day)
    X = scorer.matrix(model, np.arange(len(ids)), scorer.coded(model))
    scorer.score(model, rows=np.arange(10))  # compiled code loaded before the clock starts
    t = time.perf_counter()
    walked = scorer.score(model)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    model.booster_.booster_.predict(X)
    bare_s = time.perf_counter() - t
    gap = float(np.abs(model.predict_proba_matrix(X)[:, 1] - walked.reshape(-1)).max())
    queue.put((total, phases.times, peak, s, len(X), ours, bare_s, gap))


def _prepare(root: Path, customers: int, days: int) -> None:
    """Simulate, load, and train the propensity model on the last days."""
    for left in ("sim", "ws"):  # what a build cut off before its model left behind
        shutil.rmtree(root / left, ignore_errors=True)
    t = time.perf_counter()
    simulate(SimConfig(n_customers=customers, days=days, seed=5), root / "sim")
    ws = Workspace.init(root / "ws")
    ingest(ws.warehouse, [root / "sim"], ws.config.ingest)
    print(
        f"{customers:,} members x {days} days simulated and loaded in "
        f"{time.perf_counter() - t:.1f} s"
    )
    t = time.perf_counter()
    options = TrainOptions(holdout_days=1, calibration_days=1, max_train_days=1)
    train(ws.warehouse, ModelStore(ws.models), "propensity", options)
    print(f"propensity trained on one day in {time.perf_counter() - t:.1f} s")
    ws.close()
    shutil.rmtree(root / "sim")


def _forget(root: Path, day: datetime) -> None:
    """A kept workspace decided ``day`` before: take that day's decisions out of the log (and
    their load record) so every run decides the day afresh, as the first did."""
    ws = Workspace.open(root / "ws")
    try:
        con = ws.warehouse.con.con
        prefix = f"{CAMPAIGN['campaign']['name']}:{day:%Y%m%d}:"
        con.execute("DELETE FROM decisions WHERE starts_with(decision_id, ?)", [prefix])
        log = root / "ws" / "decisions"
        con.execute("DELETE FROM loads WHERE starts_with(source, ?)", [str(log.resolve())])
        shutil.rmtree(log, ignore_errors=True)
    finally:
        ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="Keep the workspace here; reuse it if there.")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="nextbest-bench-batch-"))
    try:
        if not (root / "ws" / "models" / "propensity").exists():
            _prepare(root, args.customers, args.days)
        shutil.rmtree(root / "out", ignore_errors=True)
        day = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=args.days)
        _forget(root, day)
        queue: mp.Queue = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=_decide, args=(root, day, queue))
        proc.start()
        total, times, peak, s, rows, ours, bare, differs = queue.get()
        proc.join()
        gap = s["solver"].get("gap", float("nan"))
        print(
            f"decide {day:%Y-%m-%d}: {s['customers']:,} members x {len(s['offers'])} sales, "
            f"{s['slots_filled']:,} slots filled, solver {s['solver'].get('solver')}, "
            f"gap {gap:.3%}"
        )
        print(f"  {'phase':<40} {'time':>9}  {'peak so far':>11}")
        for label, seconds, gb in times:
            print(f"  {label:<40} {seconds:7.1f} s  {gb:8.2f} GB")
        # DESIGN's targets: 1M x 40 in 60 s and 4 GB, 5M x 40 in 5 minutes and 12 GB
        target_s, target_gb = (60, 4) if s["customers"] <= 1_000_000 else (300, 12)
        print(
            f"  {'total':<40} {total:7.1f} s (target < {target_s} s), peak {peak:.2f} GB "
            f"(target < {target_gb} GB)"
        )
        print(
            f"scoring {rows:,} pairs: {rows / ours:,.0f} pairs/s with calibration (one walk of "
            f"the trees per member), LightGBM's Booster.predict alone {rows / bare:,.0f} rows/s: "
            f"{bare / ours:.1f}x; largest difference in probability {differs:.1e}"
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
