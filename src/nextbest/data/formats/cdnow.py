"""CDNOW purchase logs (Fader & Hardie): the master file, the 1/10 sample, or cdnowElog.csv.

Customers are ``cdnow-00001`` (the master id, so the sample's customers are the master's),
signed up at their first purchase; each line is a ``purchase`` event at midnight UTC of its
date with quantity = CDs and amount = dollars. Event ids are customer, date and the ordinal
of the purchase within that day, so the sample's events carry the same ids as the master's
and loading the sample after the master adds nothing. The sample's own re-numbering of
customers (1..2357) is not kept: it is derivable from the master id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nextbest.data.formats._common import batch, lines_in_chunks, reject
from nextbest.data.sources import Batch, ReadOptions

__all__ = ["read"]

_DATE = re.compile(r"^(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$")


def read(path: Path, options: ReadOptions) -> Iterator[Batch]:
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    header = not first.split(",")[0].strip().split()[0].isdigit() if first.strip() else False
    csv = "," in first
    first_seen: dict[str, str] = {}
    ordinal: dict[tuple[str, str], int] = {}
    for start, chunk in lines_in_chunks(path, options.batch_rows, skip=1 if header else 0):
        ids, dates, cds, dollars, lines, rejects = [], [], [], [], [], []
        for offset, text in enumerate(chunk):
            number = start + offset
            if not text.strip():
                continue
            fields = text.split(",") if csv else text.split()
            if len(fields) == 5:  # sample layout: master id, sample id, date, cds, dollars
                fields = [fields[0], *fields[2:]]
            if len(fields) != 4:
                rejects.append(
                    reject(
                        path,
                        number,
                        "events",
                        "(row)",
                        "4 fields (customer, date, cds, dollars) or 5 (sample)",
                        f"{len(fields)} fields",
                        text,
                    )
                )
                continue
            cust, date, n, dollar = fields
            if not cust.isdigit():
                rejects.append(
                    reject(
                        path,
                        number,
                        "events",
                        "customer_id",
                        "a numeric CDNOW customer id",
                        cust,
                        text,
                    )
                )
                continue
            if not _DATE.match(date):
                rejects.append(
                    reject(path, number, "events", "ts", "a date as YYYYMMDD", date, text)
                )
                continue
            cid = f"cdnow-{int(cust):05d}"
            key = (cid, date)
            ordinal[key] = ordinal.get(key, 0) + 1
            if cid not in first_seen or date < first_seen[cid]:
                first_seen[cid] = date
            ids.append(f"{cid}:{date}:{ordinal[key]}")
            dates.append(f"{date[:4]}-{date[4:6]}-{date[6:]}T00:00:00Z")
            cds.append(n)
            dollars.append(dollar)
            lines.append(number)
        customer = [i.split(":")[0] for i in ids]
        yield batch(
            "events",
            {
                "event_id": ids,
                "customer_id": customer,
                "ts": dates,
                "type": ["purchase"] * len(ids),
                "quantity": cds,
                "amount": dollars,
            },
            np.asarray(lines),
            path,
            rejects,
        )
    cids = sorted(first_seen)
    yield batch(
        "customers",
        {
            "customer_id": cids,
            "signup_ts": [
                f"{d[:4]}-{d[4:6]}-{d[6:]}T00:00:00Z" for d in (first_seen[c] for c in cids)
            ],
        },
        np.ones(len(cids), np.int64),
        path,
    )
