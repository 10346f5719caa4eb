"""Market baskets, one per line: comma-separated item names (arules' groceries.csv) or the
FIMI ``.dat`` layout (space-separated integer items, e.g. retail.dat).

Each distinct item becomes a product ``<file stem>:<item>`` (named as in the file: the two
groceries labels with a trailing space, "cream cheese " and "roll products ", are kept as they
are, as arules keeps them); each item occurrence becomes a ``purchase`` line with basket id
``<stem>:<line>``, no customer (anonymous receipts) and quantity 1. The sources carry no
dates, so every line gets the nominal time 2000-01-01T00:00:00Z.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nextbest.data.formats._common import batch, lines_in_chunks, reject
from nextbest.data.sources import Batch, ReadOptions, sniff_text

__all__ = ["read"]

NOMINAL_TS = "2000-01-01T00:00:00Z"
_FIMI_LINE = re.compile(r"^[\d ]+$")


def read(path: Path, options: ReadOptions) -> Iterator[Batch]:
    sniff_text(path)
    stem = path.stem
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        first = fh.readline().rstrip("\r\n")
    fimi = path.suffix == ".dat" or bool(_FIMI_LINE.match(first))
    seen: set[str] = set()
    chunk_lines = max(1, options.batch_rows // 10)
    for start, chunk in lines_in_chunks(path, chunk_lines):
        items: list[str] = []
        lines: list[int] = []
        positions: list[int] = []
        rejects = []
        for offset, text in enumerate(chunk):
            number = start + offset
            fields = text.split() if fimi else text.split(",")
            fields = [f for f in fields if f != ""]
            if not fields:
                rejects.append(
                    reject(
                        path,
                        number,
                        "events",
                        "(row)",
                        "at least one item",
                        "",
                        text,
                    )
                )
                continue
            if fimi and not all(f.isdigit() for f in fields):
                bad = next(f for f in fields if not f.isdigit())
                rejects.append(
                    reject(
                        path,
                        number,
                        "events",
                        "product_id",
                        "integer item ids separated by spaces",
                        bad,
                        text,
                    )
                )
                continue
            items.extend(fields)
            lines.extend([number] * len(fields))
            positions.extend(range(1, len(fields) + 1))
        item = np.asarray(items, dtype=object)
        line = np.asarray(lines, dtype=np.int64)
        product = np.char.add(f"{stem}:", item.astype(str)) if len(item) else item
        new = sorted(set(items) - seen)
        seen.update(new)
        if new:
            yield batch(
                "products",
                {"product_id": [f"{stem}:{i}" for i in new], "name": new},
                np.ones(len(new), np.int64),
                path,
            )
        basket = np.char.add(f"{stem}:", line.astype(str))
        yield batch(
            "events",
            {
                "event_id": np.char.add(
                    np.char.add(basket, ":"), np.asarray(positions).astype(str)
                ),
                "ts": np.full(len(item), NOMINAL_TS),
                "type": np.full(len(item), "purchase"),
                "product_id": product,
                "quantity": np.full(len(item), "1"),
                "basket_id": basket,
            },
            line,
            path,
            rejects,
        )
