"""Open Bandit Dataset logs (ZOZOTOWN; Saito et al. 2021): decisions with logged propensities.

Give a log file (``random/men/men.csv``) or its folder. The behaviour policy (``random`` or
``bts``) and the campaign (``all``, ``men``, ``women``) come from the folder names. Items of the
sibling ``item_context.csv`` become offers ``obd-<policy>-<campaign>-item<id>`` (kind product,
channel web; item features as attributes). OBD has no user id, so each distinct combination of
``user_feature_0..3`` becomes one pseudo-customer ``obd-<12 hex digits of its SHA-1>``. Each log
row is a decision (slot = position, propensity = propensity_score, experiment
``obd-<campaign>``, user-item affinities as attributes) and each click a ``click`` event linked
to it. Item hashes differ between policies, so offers are per policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nextbest.data.formats._common import batch
from nextbest.data.sources import Batch, ReadOptions, read_csv
from nextbest.errors import DataError

__all__ = ["read"]

_USER = [f"user_feature_{i}" for i in range(4)]


def read(path: Path, options: ReadOptions) -> Iterator[Batch]:
    log = path
    if path.is_dir():
        logs = [p for p in sorted(path.glob("*.csv")) if p.name != "item_context.csv"]
        if len(logs) != 1:
            raise DataError(
                f"{path}: expected one log file beside item_context.csv, found {len(logs)}"
            )
        log = logs[0]
    campaign, policy = log.parent.name, log.parent.parent.name
    prefix = f"obd-{policy}-{campaign}"
    items = log.parent / "item_context.csv"
    if not items.exists():
        raise DataError(f"{log}: item_context.csv is missing beside it; expected {items}")
    for raw in read_csv(items, "offers", options):
        data = raw.data.drop_columns([c for c in raw.data.column_names if c in ("", "_index")])
        ids = pc.binary_join_element_wise(prefix + "-item", data.column("item_id"), "")
        n = data.num_rows
        yield Batch(
            "offers",
            data.drop_columns(["item_id"])
            .append_column("offer_id", ids)
            .append_column("kind", pa.array(["product"] * n))
            .append_column("channels", pa.array(["web"] * n)),
            raw.lines,
            raw.source,
            raw.rejects,
        )
    seen: set[str] = set()
    for raw in read_csv(log, "decisions", options):
        yield from _log_batches(raw, prefix, policy, campaign, seen)


def _log_batches(
    raw: Batch, prefix: str, policy: str, campaign: str, seen: set[str]
) -> Iterator[Batch]:
    data = raw.data
    missing = [
        c
        for c in ("timestamp", "item_id", "position", "click", "propensity_score", *_USER)
        if c not in data.column_names
    ]
    if missing:
        raise DataError(
            f"{raw.source}: missing column(s) {', '.join(missing)}; this is not an Open Bandit log"
        )
    index = data.column(data.column_names[0]).to_pylist()
    users = ["\x1f".join(str(data.column(c)[i]) for c in _USER) for i in range(data.num_rows)]
    customer = np.asarray(
        ["obd-" + hashlib.sha1(u.encode()).hexdigest()[:12] for u in users], dtype=object
    )
    new = []
    for i, c in enumerate(customer):
        if c not in seen:
            seen.add(c)
            new.append(i)
    yield Batch(
        "customers",
        pa.table(
            {
                "customer_id": pa.array(customer[new], pa.string()),
                **{c: data.column(c).take(new) for c in _USER},
            }
        ),
        raw.lines[new],
        raw.source,
    )
    decision = np.asarray([f"{prefix}:{i}" for i in index], dtype=object)
    offer = np.char.add(f"{prefix}-item", np.asarray(data.column("item_id").to_pylist(), str))
    n = data.num_rows
    affinity = [c for c in data.column_names if c.startswith("user-item_affinity")]
    yield Batch(
        "decisions",
        pa.table(
            {
                "decision_id": pa.array(decision, pa.string()),
                "ts": data.column("timestamp"),
                "customer_id": pa.array(customer, pa.string()),
                "offer_id": pa.array(offer, pa.string()),
                "channel": pa.array(["web"] * n),
                "slot": data.column("position"),
                "policy": pa.array([policy] * n),
                "propensity": data.column("propensity_score"),
                "experiment": pa.array([f"obd-{campaign}"] * n),
                **{c: data.column(c) for c in affinity},
            }
        ),
        raw.lines,
        raw.source,
        raw.rejects,
    )
    clicked = np.flatnonzero(np.asarray(data.column("click").to_pylist(), dtype=object) == "1")
    yield batch(
        "events",
        {
            "event_id": np.char.add(decision[clicked].astype(str), ":click"),
            "customer_id": customer[clicked],
            "ts": data.column("timestamp").take(clicked),
            "type": np.full(len(clicked), "click"),
            "offer_id": offer[clicked],
            "channel": np.full(len(clicked), "web"),
            "decision_id": decision[clicked],
        },
        raw.lines[clicked],
        raw.source,
    )
