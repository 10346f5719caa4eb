"""The workspace of ``bench_serve.py``: simulated, trained, decided, then expanded to 1M profiles.

:func:`prepare` simulates the retailer, loads it, trains the propensity model, decides the web
campaign of the day after the data under a budget that binds (so its summary carries dual
prices) and builds that day's snapshot; :func:`expand_snapshot` resamples the snapshot's members
to ``n`` profiles under new ids and makes that current; :func:`check_expanded` checks a few new
ids against their source member's rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from nextbest.data.ingest import ingest
from nextbest.data.schema import CHANNELS
from nextbest.data.workspace import Workspace
from nextbest.decide import decide, load_campaign
from nextbest.decide.contact import CONSENT_CHANNELS
from nextbest.models import ModelStore, TrainOptions, train
from nextbest.serve import (
    OnlineDecider,
    OnlineStore,
    Snapshot,
    build_snapshot,
    serving_campaigns,
)
from nextbest.serve.snapshot import customer_hash
from nextbest.simulate import SimConfig, simulate

__all__ = [
    "check_expanded",
    "expand_snapshot",
    "open_offers",
    "prepare",
    "set_exploration",
    "source_snapshot",
]

START = datetime(2026, 1, 1, tzinfo=UTC)  # the simulator's first day

WEB = """
[campaign]
name = "web-reco"
channel = "web"
slots = 3
max_per_brand = 1
budget = {budget}

[campaign.contact]
per_day = {{ web = 3 }}

[campaign.exploration]
share = 0.05
method = "{method}"
novelty_share = 0.5

[campaign.experiment]
name = "web-reco"
holdout = 0.1
salt = "bench"
"""


# -- the workspace ------------------------------------------------------------------------------


def _add_store_offer(ws: Workspace, root: Path) -> None:
    """A store-only offer (10% on the cart), as in the service's tests.

    The simulator's sales are on email, web and app only, and the service adds a default
    ``realtime-store`` campaign; with no store offer at all it loads no snapshot (``/readyz``
    503: ``decide.day.with_settings`` fails on an empty offer list), so one is added.
    """
    import pandas as pd

    path = root / "extra" / "offers.csv"  # the file name says which table it goes to
    path.parent.mkdir(exist_ok=True)
    pd.DataFrame(
        {
            "offer_id": ["CART10"],
            "kind": ["discount"],
            "name": ["10% on your cart"],
            "channels": ["store"],
            "start_ts": ["2026-01-01T00:00:00Z"],
            "end_ts": ["2027-01-01T00:00:00Z"],
            "unit_cost": [0.0],
            "margin": [30.0],
            "discount": [0.1],
            "eligibility": ["cart_count > 0"],
        }
    ).to_csv(path, index=False)
    (report,) = ingest(ws.warehouse, [path], ws.config.ingest)
    shutil.rmtree(path.parent)
    if report.tables.get("offers") is None or report.tables["offers"].loaded != 1:
        raise RuntimeError(f"expected the store offer to load, got {report}")


def prepare(root: Path, members: int, days: int, method: str) -> None:
    """Simulate, load, train, decide the web campaign of the next day, build its snapshot."""
    day = START + timedelta(days=days)
    t = time.perf_counter()
    simulate(SimConfig(n_customers=members, days=days, seed=11, holdout_share=0.1), root / "sim")
    ws = Workspace.init(root / "ws")
    try:
        ingest(ws.warehouse, [root / "sim"], ws.config.ingest)
        _add_store_offer(ws, root)
        print(
            f"{members:,} members x {days} days simulated and loaded in "
            f"{time.perf_counter() - t:.1f} s"
        )
        t = time.perf_counter()
        options = TrainOptions(holdout_days=2, calibration_days=2)
        train(ws.warehouse, ModelStore(ws.models), "propensity", options)
        print(f"propensity trained in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        campaigns = ws.root / "campaigns"
        campaigns.mkdir(exist_ok=True)
        web = campaigns / "web.toml"
        # a dry run without a binding budget says what the slates cost; half of it binds
        web.write_text(WEB.format(budget=1e12, method=method), encoding="utf-8")
        dry = decide(ws, load_campaign(web), day, out=root / "dry", log_decisions=False)
        used = next(k["used"] for k in dry.summary["constraints"] if "budget" in k["name"])
        web.write_text(WEB.format(budget=round(used / 2, 4), method=method), encoding="utf-8")
        run = decide(ws, load_campaign(web), day, out=root / "out")
        priced = sum(1 for o in run.summary["offers"] if o["price_per_cost"] > 0)
        print(
            f"batch decide web-reco {day:%Y-%m-%d}: budget {used / 2:,.2f} (half of what the "
            f"unconstrained slates cost), {priced} of {len(run.summary['offers'])} offers "
            f"priced, {time.perf_counter() - t:.1f} s"
        )
        t = time.perf_counter()
        folder = build_snapshot(ws, day, serving_campaigns(ws.root))
        print(f"snapshot {folder.name} built in {time.perf_counter() - t:.1f} s")
    finally:
        ws.close()  # the service never holds the warehouse
    shutil.rmtree(root / "sim", ignore_errors=True)
    shutil.rmtree(root / "dry", ignore_errors=True)


# -- the expanded snapshot ----------------------------------------------------------------------


def source_snapshot(ws_root: Path) -> Path:
    """The latest snapshot built from the warehouse (not one expanded by this benchmark)."""
    folders = sorted(
        p
        for p in (ws_root / "serving" / "snapshots").iterdir()
        if (p / "meta.json").exists() and not p.name.endswith(".tmp")
    )
    built = [
        p
        for p in folders
        if "expanded_from" not in json.loads((p / "meta.json").read_text(encoding="utf-8"))
    ]
    if not built:
        raise RuntimeError(f"no built snapshot in {ws_root / 'serving' / 'snapshots'}")
    return built[-1]


def _segments(customer: np.ndarray, source: np.ndarray, n_src: int) -> tuple[np.ndarray, ...]:
    """For arrays sorted by customer row: the new customer rows and the positions to copy."""
    if len(customer) and not np.all(np.diff(customer) >= 0):
        raise RuntimeError("expected the per-customer pieces sorted by customer row")
    bounds = np.searchsorted(customer, np.arange(n_src + 1))
    lo, count = bounds[:-1][source], np.diff(bounds)[source]
    total = int(count.sum())
    rows = np.repeat(np.arange(len(source), dtype=customer.dtype), count)
    first = np.cumsum(count) - count
    positions = np.repeat(lo - first, count) + np.arange(total)
    return rows, positions


def expand_snapshot(ws_root: Path, n: int, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Write a snapshot of ``n`` customers resampled from the built one and make it current.

    Row ``r`` of the new snapshot is a copy of row ``source[r]`` of the built one, under the id
    ``B`` + seven digits (``r + 1``). Every per-customer array, the sorted id hashes with their
    rows, and the history, cart and impression pieces (sorted by customer row) are rewritten;
    the offers, products and the batch's prices are the built snapshot's.
    """
    src = source_snapshot(ws_root)
    meta = json.loads((src / "meta.json").read_text(encoding="utf-8"))
    n_src = int(meta["customers"])
    source = np.random.default_rng(seed).integers(0, n_src, size=n)
    name = f"{datetime.fromisoformat(meta['as_of']):%Y%m%d}-{datetime.now(UTC):%H%M%S%f}"
    folder = src.parent / name
    tmp = folder.with_name(name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    def load(stem: str) -> np.ndarray:
        return np.load(src / f"{stem}.npy", mmap_mode="r", allow_pickle=False)

    def save(stem: str, array: np.ndarray) -> None:
        np.save(tmp / f"{stem}.npy", np.ascontiguousarray(array), allow_pickle=False)

    done: set[str] = set()
    hashes = customer_hash(f"B{r + 1:07d}" for r in range(n))
    if len(np.unique(hashes)) != n:
        raise RuntimeError("two new ids share a 64-bit hash")
    order = np.argsort(hashes, kind="stable")
    save("id_hash", hashes[order])
    save("id_rows", order.astype(np.int64))
    done |= {"id_hash", "id_rows"}
    per_customer = ["coded", "profile_num", "profile_text"]
    per_customer += [f"consent_{ch}" for ch in CONSENT_CHANNELS]
    for kind in ("unsubscribed", "sent_today", "sent_week", "suppressed"):
        per_customer += [f"{kind}_{ch}" for ch in CHANNELS]
    for stem in per_customer:
        array = load(stem)
        if len(array) != n_src:
            raise RuntimeError(f"{stem}: expected {n_src} rows, got {len(array)}")
        save(stem, array[source])
    done |= set(per_customer)
    groups = {
        f"hist_{level}_customer": [f"hist_{level}_value"]
        + [f"hist_{level}_{c}" for c in h["columns"]]
        for level, h in meta["history"].items()
    }
    groups["impressions_customer"] = ["impressions_offer", "impressions_count"]
    groups["cart_customer"] = ["cart_product"]
    for key, members in groups.items():
        rows, positions = _segments(np.asarray(load(key)), source, n_src)
        save(key, rows)
        for stem in members:
            save(stem, np.asarray(load(stem))[positions])
        done |= {key, *members}
    for path in src.iterdir():
        if path.suffix == ".npy" and path.stem not in done:
            if path.stem != "offer_coded":  # per offer, not per customer: copied as it is
                raise RuntimeError(f"{path.name}: a snapshot piece this benchmark does not know")
            shutil.copy2(path, tmp / path.name)
        elif path.suffix == ".parquet":
            shutil.copy2(path, tmp / path.name)
    meta.update(
        name=name,
        built=datetime.now(UTC).isoformat(),
        customers=n,
        expanded_from=src.name,
        expanded_note=(
            f"bench_serve: {n:,} profiles resampled from the {n_src:,} simulated members "
            "under new ids B0000001..."
        ),
    )
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmp, folder)
    pointer = src.parent / "CURRENT"
    staged = pointer.with_suffix(".tmp")
    staged.write_text(name, encoding="utf-8")
    os.replace(staged, pointer)
    return folder, source


def check_expanded(ws_root: Path, folder: Path, source: np.ndarray) -> None:
    """A few new ids find rows equal to their source member's, down to the pair features."""
    big, small = Snapshot(folder), Snapshot(ws_root / "serving" / "snapshots" / _source_of(folder))
    model, _ = ModelStore(ws_root / "models").load("propensity", int(big.meta["model_version"]))
    campaigns = serving_campaigns(ws_root)
    with tempfile.TemporaryDirectory(prefix="nextbest-bench-check-") as tmp:
        store = OnlineStore(Path(tmp) / "check.db")
        d_big = OnlineDecider(big, model, campaigns, store)
        d_small = OnlineDecider(small, model, campaigns, store)
        index = d_big.campaigns["web-reco"].index
        picks = [0, 1, len(source) // 2, len(source) - 1]
        for r in picks + list(np.random.default_rng(1).integers(0, len(source), 20)):
            row = big.row(f"B{int(r) + 1:07d}")
            assert row is not None and row == r, f"B{int(r) + 1:07d}: expected row {r}, got {row}"
            s = int(source[r])
            assert np.array_equal(big.coded[row], small.coded[s], equal_nan=True)
            assert np.array_equal(big.profile_num[row], small.profile_num[s], equal_nan=True)
            assert big.profile(row) == small.profile(s)
            assert big.cart_of(row) == small.cart_of(s)
            assert big.impressions_of(row) == small.impressions_of(s)
            for ch in CONSENT_CHANNELS:
                assert big.consent[ch][row] == small.consent[ch][s]
            assert np.array_equal(
                d_big.matrix(row, index), d_small.matrix(s, index), equal_nan=True
            )
        assert big.row("C0000001") is None  # the simulated ids are not in it
        store.close()


def _source_of(folder: Path) -> str:
    return str(json.loads((folder / "meta.json").read_text(encoding="utf-8"))["expanded_from"])


def open_offers(folder: Path, day: datetime) -> tuple[int, int]:
    """Web offers in the snapshot, and those open all afternoon of ``day`` (the request times)."""
    import pandas as pd

    offers = pd.read_parquet(folder / "offers.parquet")
    web = offers[offers.channels.fillna("web").str.split("|").map(lambda c: "web" in c)]
    lo, hi = pd.Timestamp(day + timedelta(hours=12)), pd.Timestamp(day + timedelta(hours=24))
    open_all = (web.start_ts.isna() | (web.start_ts <= lo)) & (
        web.end_ts.isna() | (web.end_ts > hi)
    )
    return len(web), int(open_all.sum())


def set_exploration(ws_root: Path, method: str) -> None:
    """The web campaign's exploration method (the file is the one :func:`prepare` wrote)."""
    web = ws_root / "campaigns" / "web.toml"
    text = re.sub(r'method = "\w+"', f'method = "{method}"', web.read_text(encoding="utf-8"))
    web.write_text(text, encoding="utf-8")
