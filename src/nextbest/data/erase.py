"""Erasing one customer's personal data from a workspace, and keeping it out afterwards.

:func:`erase_customer` removes, in one warehouse transaction:

- their rows of ``customers``, ``decisions`` and ``events`` (with the events linked to their
  decisions by ``decision_id``);
- what other rows say about them: ``customers.referred_by`` naming them is blanked, and a value
  of an ``attributes`` object equal to their id is set to null (a referral event's
  ``{"referred": id}``);
- the ``quarantine`` rows that name them (in the raw row or the received value);

then rewrites, atomically, the files the workspace itself wrote that hold their rows: the batch
decision logs and slates under ``decisions/``, the service's outbox under ``serving/outbox/``,
exported features and segments, and the load reports that quote their id. The erasure is recorded
in the warehouse table ``erasures`` as ``sha256(id)``, the time and the counts: a record that it
happened, without the id.

Ingestion keeps them out: :func:`screen_erased` drops staged rows of an erased customer (counted
as quarantined, with the row withheld and the reason "a customer erased on DATE"), and blanks
the references to them in other rows, so that the retailer's own files, which still hold them,
cannot bring them back; :func:`withhold_erased` keeps any quarantined row that names them out of
the quarantine table.

What this cannot reach: the retailer's source files outside the workspace; copies made elsewhere
(slates exported with ``--out``, closed-loop copies under ``loop/``, backups); what trained models
learned from their rows (retrain to remove it); and DuckDB's freed blocks, which keep deleted
bytes until the file is rewritten (``EXPORT DATABASE`` / ``IMPORT DATABASE``). The hash of an id
is a pseudonym, not anonymous: ids drawn from a small space can be recovered by hashing them all.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Container, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nextbest.data.sources import Reject
from nextbest.data.warehouse import Warehouse
from nextbest.data.workspace import Workspace
from nextbest.errors import DataError

__all__ = [
    "ERASURES",
    "erase_customer",
    "erasure_dates",
    "id_sha256",
    "mentions",
    "redact_json",
    "screen_erased",
    "withhold_erased",
]

log = logging.getLogger(__name__)

ERASURES: dict[str, dt.DataType] = {
    "id_sha256": dt.String(),
    "ts": dt.Timestamp(timezone="UTC"),
    "counts": dt.String(),
}
"""The warehouse table recording each erasure: the id's SHA-256, when, and what was removed."""

_PERSONAL = ("customers", "decisions", "events")  # tables with a customer_id column
_KEYS = {"customers": "customer_id", "decisions": "decision_id", "events": "event_id"}
_FOLDERS = ("decisions", "serving/outbox", "features", "segments")  # files the workspace writes
_SUFFIXES = (".parquet", ".csv")
_TOKENS = re.compile(r"[\s\"'\\,;:|=(){}\[\]<>]+")
_WITHHELD = "(withheld: names an erased customer)"


def id_sha256(customer_id: str) -> str:
    """The hexadecimal SHA-256 of an id's UTF-8 bytes, as ``erasures`` stores it."""
    return hashlib.sha256(customer_id.encode("utf-8")).hexdigest()


def redact_json(text: str | None, hashes: Container[str]) -> str | None:
    """``text`` with every JSON string value whose hash is in ``hashes`` set to null (and every
    key so hashed dropped); ``text`` unchanged if nothing matched or it is not JSON."""
    if not text:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    changed = False

    def walk(node: Any) -> Any:
        nonlocal changed
        if isinstance(node, str) and id_sha256(node) in hashes:
            changed = True
            return None
        if isinstance(node, dict):
            kept = {}
            for key, item in node.items():
                if id_sha256(key) in hashes:
                    changed = True
                    continue
                kept[key] = walk(item)
            return kept
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    out = walk(value)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")) if changed else text


def mentions(text: str | None, hashes: Container[str]) -> str | None:
    """The hash of an erased id that ``text`` names (as a token, or as a JSON string), or None.

    Tokens are split at spaces, quotes and punctuation, so ``"daily:20260106:C1:1"`` names
    ``C1`` but ``C10`` does not.
    """
    if not text:
        return None
    for token in _TOKENS.split(text):
        if token and (h := id_sha256(token)) in hashes:
            return h
    if text.lstrip()[:1] in ("{", "["):
        try:
            value = json.loads(text)
        except ValueError:
            return None
        stack = [value]
        while stack:
            node = stack.pop()
            if isinstance(node, str) and (h := id_sha256(node)) in hashes:
                return h
            if isinstance(node, dict):
                stack.extend(node.keys())
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return None


def erasure_dates(warehouse: Warehouse) -> dict[str, datetime]:
    """The hash of every erased id and the time of its first erasure (empty if none)."""
    if "erasures" not in warehouse.con.list_tables():
        return {}
    er = warehouse.table("erasures")
    rows = er.group_by("id_sha256").aggregate(first=er.ts.min()).to_pyarrow().to_pylist()
    return {r["id_sha256"]: r["first"] for r in rows}


def _ensure_table(warehouse: Warehouse) -> None:
    if "erasures" not in warehouse.con.list_tables():
        warehouse.con.create_table("erasures", schema=ibis.schema(ERASURES))


def _sql(warehouse: Warehouse, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    # Ibis has no DELETE or UPDATE; the warehouse is DuckDB (Warehouse.connect refuses others).
    return warehouse.con.con.execute(query, list(params)).fetchall()


def erase_customer(ws: Workspace, customer_id: str) -> dict[str, int]:
    """Remove ``customer_id``'s personal data from the warehouse and the workspace's files.

    Parameters
    ----------
    ws
        The workspace; its warehouse must not be locked by another process.
    customer_id
        The id exactly as the warehouse holds it.

    Returns
    -------
    dict
        Rows removed per table (``customers``, ``decisions``, ``events``, ``quarantine``), other
        rows changed (``referred_by``, ``attributes``), and files rewritten (``files``, with
        ``file_rows`` rows removed from them; ``reports`` load reports). Erasing twice removes
        nothing the second time, and records it again.
    """
    if not isinstance(customer_id, str) or not customer_id:
        raise DataError(f"erase: expected a customer id (a non-empty text), got {customer_id!r}")
    wh = ws.warehouse
    digest = id_sha256(customer_id)
    hashes = {digest}
    _ensure_table(wh)
    counts: dict[str, int] = {}
    with wh.transaction():
        linked = "SELECT decision_id FROM decisions WHERE customer_id = ?"
        counts["events"] = _sql(
            wh,
            f"DELETE FROM events WHERE customer_id = ? OR decision_id IN ({linked})",
            [customer_id, customer_id],
        )[0][0]
        for table in ("decisions", "customers"):
            counts[table] = _sql(wh, f"DELETE FROM {table} WHERE customer_id = ?", [customer_id])[
                0
            ][0]
        counts["referred_by"] = _sql(
            wh, "UPDATE customers SET referred_by = NULL WHERE referred_by = ?", [customer_id]
        )[0][0]
        counts["attributes"] = 0
        for table in _PERSONAL:
            key = _KEYS[table]
            found = _sql(
                wh,
                f"SELECT {key}, attributes FROM {table} WHERE contains(attributes, ?)",
                [customer_id],
            )
            for row_key, text in found:
                fixed = redact_json(text, hashes)
                if fixed != text:
                    _sql(wh, f"UPDATE {table} SET attributes = ? WHERE {key} = ?", [fixed, row_key])
                    counts["attributes"] += 1
        found = _sql(
            wh,
            "SELECT rowid, row, received FROM quarantine "
            "WHERE contains(row, ?) OR contains(received, ?)",
            [customer_id, customer_id],
        )
        doomed = [r for r, row, got in found if mentions(row, hashes) or mentions(got, hashes)]
        for rowid in doomed:
            _sql(wh, "DELETE FROM quarantine WHERE rowid = ?", [rowid])
        counts["quarantine"] = len(doomed)
        files = _erase_files(ws.root, customer_id, hashes)
        counts.update(files)
        counts["reports"] = _erase_reports(ws.reports, hashes, customer_id)
        _sql(
            wh,
            "INSERT INTO erasures VALUES (?, ?, ?)",
            [digest, datetime.now(UTC), json.dumps(counts, sort_keys=True)],
        )
    try:  # fold the write-ahead log, which still holds the deleted rows, into the file
        _sql(wh, "CHECKPOINT")
    except Exception as exc:  # another connection's transaction: folded at its next checkpoint
        log.warning("erasure recorded; the warehouse checkpoint is deferred (%s)", exc)
    log.info("erased one customer: %s", counts)
    return counts


def _erase_files(root: Path, customer_id: str, hashes: Container[str]) -> dict[str, int]:
    """Rewrite the workspace's table files without the customer's rows (see _FOLDERS).

    Files are rewritten inside the warehouse transaction: if one fails, the warehouse keeps the
    rows too and erasing again starts over.
    """
    files = rows = 0
    for folder in _FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if not path.is_file() or path.suffix.lower() not in _SUFFIXES:
                continue
            removed = _erase_file(path, customer_id, hashes)
            if removed is not None:
                files += 1
                rows += removed
    return {"files": files, "file_rows": rows}


def _erase_file(path: Path, customer_id: str, hashes: Container[str]) -> int | None:
    """Rows removed from one Parquet or CSV file, or None if it did not name the customer."""
    if path.suffix.lower() == ".csv":
        if customer_id.encode("utf-8") not in path.read_bytes():
            return None
        with path.open(newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        types = {name: pa.string() for name in header}
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    else:
        table = pq.read_table(path)
    keep = np.ones(table.num_rows, dtype=bool)
    if "customer_id" in table.column_names:
        own = pc.equal(table.column("customer_id").cast(pa.string()), customer_id)
        keep = ~np.asarray(pc.fill_null(own, False).to_numpy(zero_copy_only=False), dtype=bool)
    changed = False
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if name != "customer_id" and _is_text(column.type):
            hits = pc.fill_null(pc.match_substring(column, customer_id), False)
            where = np.flatnonzero(hits.to_numpy(zero_copy_only=False) & keep)
            if len(where):
                values = column.to_pylist()
                for i in where.tolist():
                    text = values[i]
                    values[i] = None if text == customer_id else redact_json(text, hashes)
                    changed = changed or values[i] != text
                column = pa.chunked_array([pa.array(values, column.type)])
        columns[name] = column
    removed = int((~keep).sum())
    if not removed and not changed:
        return None
    out = pa.table(columns, schema=table.schema).filter(pa.array(keep))
    tmp = path.with_name(f".{path.name}.erasing")
    if path.suffix.lower() == ".csv":
        pacsv.write_csv(out, tmp)
    else:
        pq.write_table(out, tmp)
    _replace(tmp, path)
    return removed


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _replace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` over ``path`` once it is on disk: readers see the old file or the new one."""
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _erase_reports(folder: Path, hashes: Container[str], customer_id: str) -> int:
    """Load reports quote the first problems of a load; withhold the ones naming the customer."""
    if not folder.is_dir():
        return 0
    changed = 0
    for path in sorted(folder.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        if customer_id not in text:
            continue

        def scrub(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: scrub(v) for k, v in node.items()}
            if isinstance(node, list):
                return [scrub(v) for v in node if not (isinstance(v, str) and mentions(v, hashes))]
            if isinstance(node, str) and mentions(node, hashes):
                return _WITHHELD
            return node

        before = json.loads(text)
        after = scrub(before)
        if after != before:
            tmp = path.with_name(f".{path.name}.erasing")
            tmp.write_text(json.dumps(after, indent=2, default=str), encoding="utf-8")
            _replace(tmp, path)
            changed += 1
    return changed


def screen_erased(
    warehouse: Warehouse, table: str, stage: str, files: Sequence[str]
) -> list[Reject]:
    """Keep erased customers out of a staged load (called by ingestion, before its checks).

    Rows of an erased customer are removed from the stage table ``stage`` and returned as
    rejects that withhold the row; ``referred_by`` and ``attributes`` values naming an erased
    customer are blanked as :func:`erase_customer` blanks them, so that a row loaded before the
    erasure compares equal to its reloaded copy. ``files`` names the stage's ``_src`` numbers.
    Costs nothing while no one has been erased.
    """
    if table not in _PERSONAL:
        return []
    dates = erasure_dates(warehouse)
    if not dates:
        return []
    hashes = warehouse.table("erasures").id_sha256
    t = warehouse.table(stage)
    flag = t.customer_id.hexdigest("sha256").isin(hashes).fill_null(False)
    hit = t.filter(flag).select("_src", "_line", h=t.customer_id.hexdigest("sha256"))
    rejects = [
        Reject(
            files[int(r["_src"])] if files else stage,
            int(r["_line"]),
            table,
            "customer_id",
            "a customer who has not been erased",
            f"a customer erased on {dates[r['h']]:%Y-%m-%d} (row withheld)",
            "",
        )
        for r in hit.order_by(["_src", "_line"]).to_pyarrow().to_pylist()
    ]
    rest = t.filter(~flag)
    refs = 0
    if table == "customers":
        named = rest.referred_by.hexdigest("sha256").isin(hashes).fill_null(False)
        refs = int(rest.filter(named).count().execute())
        rest = rest.mutate(referred_by=ibis.ifelse(named, ibis.null("string"), rest.referred_by))
    with_attrs = rest.filter(rest.attributes.notnull())
    tokens = with_attrs.select("_src", "_line", tok=with_attrs.attributes.re_split('"').unnest())
    named_rows = tokens.filter(tokens.tok.hexdigest("sha256").isin(hashes)).select("_src", "_line")
    found = (
        rest.semi_join(named_rows.distinct(), ["_src", "_line"])
        .select("_src", "_line", "attributes")
        .to_pyarrow()
        .to_pylist()
    )
    erased = set(dates)
    fixes = [
        {"_src": r["_src"], "_line": r["_line"], "_fixed": redact_json(r["attributes"], erased)}
        for r in found
    ]
    fixes = [f for f in fixes if f["_fixed"] is not None]
    if not rejects and not refs and not fixes:
        return []
    if fixes:
        patch = ibis.memtable(
            pa.table(
                {
                    "_src": pa.array([f["_src"] for f in fixes], pa.int32()),
                    "_line": pa.array([f["_line"] for f in fixes], pa.int64()),
                    "_fixed": pa.array([f["_fixed"] for f in fixes], pa.string()),
                }
            )
        )
        joined = rest.left_join(patch, ["_src", "_line"])
        rest = joined.select(
            *[
                ibis.coalesce(joined._fixed, joined.attributes).name(c)
                if c == "attributes"
                else joined[c]
                for c in t.columns
            ]
        )
    warehouse.con.create_table(stage, obj=rest.select(*t.columns), temp=True, overwrite=True)
    if fixes:  # ibis keeps a memtable registered for the connection's life otherwise
        warehouse.con.con.unregister(patch.op().name)
    log.info(
        "%s: %d rows of erased customers withheld, %d references blanked, %d attributes redacted",
        table,
        len(rejects),
        refs,
        len(fixes),
    )
    return rejects


def withhold_erased(warehouse: Warehouse, rejects: list[Reject]) -> list[Reject]:
    """``rejects`` with the row and received value withheld wherever they name an erased
    customer, so the quarantine never stores an erased id (called by ingestion)."""
    if not rejects:
        return rejects
    dates = erasure_dates(warehouse)
    if not dates:
        return rejects
    out = []
    for r in rejects:
        h = mentions(r.row, dates) or mentions(r.received, dates)
        if h is None:
            out.append(r)
            continue
        note = f"a value naming a customer erased on {dates[h]:%Y-%m-%d} (row withheld)"
        out.append(replace(r, received=note, row=""))
    return out
