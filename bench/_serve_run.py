"""One server run of ``bench_serve.py``: decide at the rate, then event batches, as figures."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from _loadgen import EVENT_BATCH, decide_figures, run_load
from _server import Server, cpu_seconds

from nextbest.serve import KeyStore, ServeSettings, current_snapshot

__all__ = [
    "DECIDE_P99_MS",
    "DECIDE_RATE",
    "EVENTS_PER_S",
    "Row",
    "load_text",
    "make_keys",
    "serve_run",
]

DECIDE_P99_MS = 20.0
DECIDE_RATE = 500.0
EVENTS_PER_S = 5_000.0


@dataclass
class Row:
    figure: str
    measured: str
    target: str
    ratio: float  # >= 1: the target is met, with that much room
    note: str = ""
    slack: float = 0.0  # a ratio this close below 1 still meets the target

    @property
    def met(self) -> bool:
        return self.ratio >= 1 - self.slack

    def line(self) -> str:
        if self.met:
            verdict = f"{self.ratio:.1f}x headroom" if self.ratio >= 1.05 else "met"
        else:
            verdict = f"MISSED, {self.ratio:.2f}x of the target"
        return f"{self.figure}: {self.measured} (target {self.target}, {verdict}){self.note}"


def _ms(value: float) -> str:
    return f"{value:,.1f} ms" if np.isfinite(value) else "unanswered"


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min, 2 cores)"


def serve_run(
    root: Path, args: argparse.Namespace, workers: int, keys: dict[str, str], day: datetime
) -> list[Row]:
    """One server with ``workers``: start, warm up, decide at the rate, events, stop."""
    ws = root / "ws"
    _reset_store(root)
    snapshot = current_snapshot(ws)
    server = Server(ws, workers, root / f"server-{workers}.log")
    rows: list[Row] = []
    label = f"{workers} worker{'s' if workers > 1 else ''}"
    try:
        took = server.start(snapshot)
        mem = server.memory()
        print(
            f"\n[{label}] nextbest serve on {server.url}: ready in {took:.1f} s, "
            f"{len(server.pids())} process(es); memory {mem['rss']:.2f} GB resident "
            f"({mem['anon']:.2f} anonymous, {mem['file']:.2f} file-backed), "
            f"PSS {mem['pss']:.2f} GB; {load_text()}"
        )
        job = {
            "kind": "decide",
            "port": server.port,
            "key": keys["decide"],
            "customers": args.customers,
            "day": day.isoformat(),
            "connections": args.connections,
            "grace": 60.0,
        }
        warm = run_load({**job, "rate": args.rate, "seconds": args.warmup, "seed": 99}, 300)
        values, counts = np.unique(warm["status"], return_counts=True)
        codes = {int(k): int(v) for k, v in zip(values, counts, strict=True)}
        print(
            f"[{label}] warm-up: {len(warm['status']):,} requests in {args.warmup:g} s, not "
            f"counted (statuses {codes})"
        )
        _settle(server)
        before_cpu = cpu_seconds(server.pids())
        deciders = server.deciders(snapshot)
        before_each = [cpu_seconds([pid]) for pid in deciders]
        load_before = os.getloadavg()
        wall = time.perf_counter()
        got = run_load({**job, "rate": args.rate, "seconds": args.seconds, "seed": workers}, 600)
        wall = time.perf_counter() - wall
        server_cpu = cpu_seconds(server.pids()) - before_cpu
        each = [cpu_seconds([pid]) - b for pid, b in zip(deciders, before_each, strict=True)]
        f = decide_figures(got)
        mem = server.memory()
        load_after = os.getloadavg()
        print(
            f"[{label}] decide: {f['n']:,} requests at {args.rate:g}/s for {args.seconds:g} s "
            f"over {args.connections} keep-alive connections, {f['answered']:,} answered"
            + (
                f", {f['unanswered']:,} still waiting when the load generator stopped "
                f"{job['grace']:.0f} s after the last send"
                if f["unanswered"]
                else ""
            )
        )
        print(
            f"  latency from the scheduled send: p50 {_ms(f['p50'])}, p95 {_ms(f['p95'])}, "
            f"p99 {_ms(f['p99'])}, max {_ms(f['max'])}; from the actual send: p50 "
            f"{f['service_p50']:.1f} ms, p99 {f['service_p99']:.1f} ms"
        )
        print(
            f"  achieved {f['throughput']:,.0f} answers/s (200); statuses {f['codes']}; "
            f"{f['with_offers']:,} with offers, {f['held_out']:,} held out, {f['capped']:,} "
            "capped by the contact policy"
        )
        if f["reasons"]:
            print("  most frequent reasons: " + "; ".join(f"{k} ({v})" for k, v in f["reasons"]))
        if f["errors"]:
            print(f"  client errors: {f['errors']}")
        print(
            f"  server CPU {server_cpu:.1f} s = {server_cpu / max(1, f['answered']) * 1000:.2f} "
            f"ms per request ({server_cpu / wall:.0%} of one core over the {wall:.0f} s of the "
            f"run); load generator CPU {f['client_cpu']:.1f} s ({f['client_cpu'] / wall:.0%} of "
            "one core, "
            f"{f['client_cpu'] / max(1, f['n']) * 1000:.2f} ms per request)"
        )
        if len(each) > 1:  # how the kernel spread the connections: each worker's CPU
            print(
                "  per worker CPU: "
                + ", ".join(f"{c:.1f} s ({c / max(sum(each), 1e-9):.0%})" for c in each)
            )
        print(
            f"  server memory after: {mem['rss']:.2f} GB resident ({mem['anon']:.2f} anonymous, "
            f"{mem['file']:.2f} file-backed), PSS {mem['pss']:.2f} GB"
        )
        print(
            f"  load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
            f"(1 min; 5 min {load_after[1]:.2f})"
        )
        where = f" at {args.rate:g} req/s, {label}"
        rows.append(
            Row(
                f"decide p99{where}",
                _ms(f["p99"]),
                f"< {DECIDE_P99_MS:g} ms",
                DECIDE_P99_MS / f["p99"],
                f" [p50 {_ms(f['p50'])}, p95 {_ms(f['p95'])}, max {_ms(f['max'])}]",
            )
        )
        rows.append(
            Row(
                f"decide throughput{where}",
                f"{f['throughput']:,.0f} req/s",
                f">= {args.rate:g} req/s (the offered rate)",
                f["throughput"] / args.rate,
                slack=0.02,  # the send times jitter by a millisecond or so
            )
        )
        rows.append(
            Row(
                f"decide answers other than 200{where}",
                f"{f['non_200']} (and {f['unanswered']} unanswered)",
                "0",
                1.0 if f["non_200"] + f["unanswered"] == 0 else 0.0,
            )
        )
        if not _settle(server):
            print(f"[{label}] the server was still busy 30 s after the decide run")
        ev = run_load(
            {
                "kind": "events",
                "port": server.port,
                "key": keys["events"],
                "customers": args.customers,
                "day": day.isoformat(),
                "seconds": args.event_seconds,
                "connections": args.event_connections,
            },
            args.event_seconds + 300,
        )
        per_s = ev["accepted"] / ev["elapsed"]
        lat = np.array(ev["latency"]) * 1000
        replay = ev["replay"]
        print(
            f"[{label}] events: {ev['batches']:,} batches of {EVENT_BATCH} from "
            f"{args.event_connections} connections in {ev['elapsed']:.1f} s, {ev['accepted']:,} "
            f"accepted, {ev['duplicates']} duplicates, statuses {ev['status']}; batch latency "
            f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms; load "
            f"generator CPU {ev['client_cpu']:.1f} s; replay of the first batch: "
            f"{ev['replay_status']} {replay}"
        )
        rows.append(
            Row(
                f"event intake, {label}",
                f"{per_s:,.0f} events/s",
                f">= {EVENTS_PER_S:,.0f} events/s",
                per_s / EVENTS_PER_S,
            )
        )
        dup = replay.get("duplicates") if isinstance(replay, dict) else None
        rows.append(
            Row(
                f"replayed batch, {label}",
                f"{dup} duplicates",
                f"{EVENT_BATCH} duplicates",
                1.0 if dup == EVENT_BATCH else 0.0,
            )
        )
    finally:
        server.stop()
    return rows


def _settle(server: Server, limit: float = 30.0) -> bool:
    """Wait until the server is idle (under 5% of a core over half a second)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(server.pids())
        time.sleep(0.5)
        if cpu_seconds(server.pids()) - before < 0.025:
            return True
    return False


def make_keys(root: Path) -> dict[str, str]:
    """API keys in a pristine copy of the online store, restored before each server run."""
    db = ServeSettings().db_path(root / "ws")
    for suffix in ("", "-wal", "-shm"):  # a new store: an earlier run's rows would count
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = KeyStore(db)
    keys = {s: store.create(f"bench-{s}", [s])[1] for s in ("decide", "events")}
    store.close()
    shutil.copy2(db, root / "online-pristine.db")
    return keys


def _reset_store(root: Path) -> None:
    db = ServeSettings().db_path(root / "ws")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy2(root / "online-pristine.db", db)
