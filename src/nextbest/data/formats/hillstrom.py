"""Hillstrom's MineThatData e-mail test (2008): 64,000 customers in a three-arm experiment.

One source row becomes a customer (``H000001``, numbered by row, with the source columns kept
as attributes), a decision in experiment ``hillstrom-2008`` (arm = the ``segment`` text,
propensity 1/3 as randomised; no offer and no channel for "No E-Mail"), an ``email_sent``
event for the mailed, and the two-week outcomes as ``visit`` and ``purchase`` events (amount
= spend) linked to the decision. The source has no dates: the campaign is placed at the
nominal time 2008-03-01T00:00:00Z and its outcomes at the end of the two-week window,
2008-03-15T00:00:00Z.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from nextbest.data.formats._common import batch
from nextbest.data.sources import Batch, ReadOptions, Reject, read_csv

__all__ = ["read"]

CAMPAIGN_TS = "2008-03-01T00:00:00Z"
OUTCOME_TS = "2008-03-15T00:00:00Z"
ARMS = {
    "Mens E-Mail": "hillstrom-mens-email",
    "Womens E-Mail": "hillstrom-womens-email",
    "No E-Mail": None,
}
_EXTRAS = (
    "recency",
    "history_segment",
    "history",
    "mens",
    "womens",
    "zip_code",
    "newbie",
    "channel",
)


def read(path: Path, options: ReadOptions) -> Iterator[Batch]:
    yield batch(
        "offers",
        {
            "offer_id": list(v for v in ARMS.values() if v),
            "kind": ["content", "content"],
            "name": ["Hillstrom men's e-mail", "Hillstrom women's e-mail"],
            "channels": ["email", "email"],
        },
        np.array([1, 1]),
        path,
    )
    for raw in read_csv(path, "customers", options):
        yield from _split(raw, path)


def _split(raw: Batch, path: Path) -> Iterator[Batch]:
    d = {
        name: np.asarray(raw.data.column(name).to_pylist(), dtype=object)
        for name in raw.data.column_names
    }
    n = raw.data.num_rows
    rejects = list(raw.rejects)
    ok = np.ones(n, dtype=bool)
    for name, allowed in (
        ("segment", tuple(ARMS)),
        ("visit", ("0", "1")),
        ("conversion", ("0", "1")),
    ):
        if name not in d:
            from nextbest.errors import DataError

            raise DataError(f"{path}: missing column {name}; this is not the Hillstrom file")
        bad = ~np.isin(d[name], allowed)
        for i in np.flatnonzero(bad & ok):
            rejects.append(
                Reject(
                    str(path),
                    int(raw.lines[i]),
                    "events",
                    name,
                    "one of " + ", ".join(allowed),
                    repr(d[name][i]) if d[name][i] else "an empty value",
                    str({k: v[i] for k, v in d.items()}),
                )
            )
        ok &= ~bad
    lines = raw.lines[ok]
    d = {k: v[ok] for k, v in d.items()}
    ids = np.asarray([f"H{n - 1:06d}" for n in lines.tolist()], dtype=str)
    m = len(ids)
    yield batch(
        "customers",
        {
            "customer_id": ids,
            "consent_email": np.full(m, "true"),
            **{k: d[k] for k in _EXTRAS if k in d},
        },
        lines,
        path,
        rejects,
    )
    offer = np.array([ARMS[s] for s in d["segment"]], dtype=object)
    mailed = offer != None  # noqa: E711 - element-wise comparison
    decision = np.char.add("hillstrom-2008:", ids)
    yield batch(
        "decisions",
        {
            "decision_id": decision,
            "ts": np.full(m, CAMPAIGN_TS),
            "customer_id": ids,
            "offer_id": offer,
            "channel": pa.array(["email" if x else None for x in mailed], pa.string()),
            "slot": pa.array([1 if x else None for x in mailed], pa.int64()),
            "policy": np.full(m, "randomised"),
            "propensity": pa.array(np.full(m, 1 / 3)),
            "experiment": np.full(m, "hillstrom-2008"),
            "arm": d["segment"],
        },
        lines,
        path,
    )
    parts = []
    for kind, mask, ts in (
        ("email_sent", mailed, CAMPAIGN_TS),
        ("visit", d["visit"] == "1", OUTCOME_TS),
        ("purchase", d["conversion"] == "1", OUTCOME_TS),
    ):
        k = int(mask.sum())
        parts.append(
            {
                "event_id": np.char.add(ids[mask], f":{kind}"),
                "customer_id": ids[mask],
                "ts": np.full(k, ts),
                "type": np.full(k, kind),
                "offer_id": offer[mask],
                "channel": np.full(k, "email" if kind == "email_sent" else None, dtype=object),
                "amount": d["spend"][mask] if kind == "purchase" else np.full(k, None),
                "decision_id": decision[mask],
                "_line": lines[mask],
            }
        )
    merged = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    line_of = merged.pop("_line")
    yield batch("events", merged, line_of, path)
