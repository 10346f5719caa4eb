"""The in-process figures of ``bench_serve.py``: one request at a time, no HTTP, no concurrency."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from _loadgen import decide_bodies

from nextbest.decide import load_campaign
from nextbest.models import ModelStore
from nextbest.serve import OnlineDecider, OnlineStore, Snapshot, current_snapshot

__all__ = ["in_process"]


def _median_ms(work: Any, n: int = 200) -> float:
    work()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        work()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def _timed(owner: Any, name: str) -> list[float]:
    """Time every call of ``owner.name`` from now on (an attribute of the instance only)."""
    method, times = getattr(owner, name), []

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - t)

    setattr(owner, name, timed)
    return times


def _decisions(decider: OnlineDecider, requests: list[Any]) -> tuple[list[float], ...]:
    """Per decision with a slate: its time, the store's write transaction, the model's share."""
    # timers on these instances only: the time the store's write lock is held (its
    # transaction, with the slate chosen inside it) and the model's
    held = _timed(decider.store, "decide_atomically")
    scored = _timed(decider, "probabilities")
    times, locked, model, cpu = [], [], [], []
    try:
        for r in requests:
            t, c = time.perf_counter(), time.process_time()
            got = decider.decide(r)
            if got.offers:  # the full path: a slate chosen, explored and recorded
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                locked.append(held[-1])
                model.append(scored[-1])
    finally:
        del decider.store.decide_atomically, decider.probabilities
    return times, locked, model, cpu


def in_process(root: Path, customers: int, day: datetime) -> dict[str, float]:
    """What one decision costs with no HTTP and no concurrency, and its main pieces: the
    workspace's web campaign with epsilon-greedy exploration, then with Thompson sampling."""
    from nextbest.serve.schemas import DecideRequest
    from nextbest.serve.store import DecisionRow

    ws = root / "ws"
    snap = Snapshot(current_snapshot(ws))
    snap.populate()  # as the service does
    model, _ = ModelStore(ws / "models").load("propensity", int(snap.meta["model_version"]))
    out: dict[str, float] = {}
    text = (ws / "campaigns" / "web.toml").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="nextbest-bench-inproc-") as tmp:
        db = Path(tmp) / "online.db"
        shutil.copy2(root / "online-pristine.db", db)
        store = OnlineStore(db)
        variants = {}
        for method in ("epsilon", "thompson"):
            path = Path(tmp) / f"web-{method}.toml"
            path.write_text(re.sub(r'method = "\w+"', f'method = "{method}"', text), "utf-8")
            variants[method] = OnlineDecider(snap, model, [load_campaign(path)], store)
        requests = [
            DecideRequest.model_validate_json(b) for b in decide_bodies(420, customers, day, seed=7)
        ]
        _decisions(variants["epsilon"], requests[:50])  # warm
        times, locked, scored, cpu = _decisions(variants["epsilon"], requests[50:400])
        out["p50"] = float(np.percentile(times, 50) * 1000)
        out["p99"] = float(np.percentile(times, 99) * 1000)
        out["cpu"] = float(np.mean(cpu) * 1000)
        out["locked"] = float(np.median(locked) * 1000)
        out["model"] = float(np.median(scored) * 1000)
        times, locked, _, _ = _decisions(variants["thompson"], requests[400:])
        out["thompson"] = float(np.median(times) * 1000) if times else float("nan")
        out["thompson_locked"] = float(np.median(locked) * 1000) if times else float("nan")
        # the offers a request scores: the campaign's open at the request times (not its 80)
        decider = variants["epsilon"]
        camp = decider.campaigns["web-reco"]
        moment = np.datetime64((day + timedelta(hours=18)).replace(tzinfo=None), "us")
        start, end = camp.col["start_ts"], camp.col["end_ts"]
        open_now = (np.isnat(start) | (start <= moment)) & (np.isnat(end) | (end > moment))
        X = decider.matrix(0, camp.index)[open_now]
        out["offers_scored"] = len(X)
        out["predict"] = _median_ms(lambda: decider.probabilities(X))
        out["predict_proba"] = _median_ms(lambda: model.predict_proba_matrix(X))
        booster = model.booster_.booster_
        out["booster_1"] = _median_ms(lambda: booster.predict(X, num_threads=1))
        out["booster_0"] = _median_ms(lambda: booster.predict(X, num_threads=0))
        out["forest"] = float(decider._forest is not None)
        at = day + timedelta(hours=12)
        counter = iter(range(10**9))

        def transaction() -> None:  # count, record 3 decisions and their contacts, fsync
            i = next(counter)
            cid = f"Z{i:07d}"
            rows = [
                DecisionRow(
                    decision_id=f"bench:{i}:{k}",
                    ts=at,
                    customer_id=cid,
                    offer_id=f"O{k}",
                    channel="web",
                    slot=k,
                    policy="bench",
                    request_id=f"bench-{i}",
                )
                for k in (1, 2, 3)
            ]
            store.decide_atomically(
                cid, "web", day_start=day, week_start=at - timedelta(days=7), choose=lambda c: rows
            )

        txn = []
        for _ in range(200):
            t = time.perf_counter()
            transaction()
            txn.append(time.perf_counter() - t)
        out["txn_p50"] = float(np.percentile(txn, 50) * 1000)
        out["txn_p99"] = float(np.percentile(txn, 99) * 1000)
        store.close()
    return out
