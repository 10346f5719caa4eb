"""Loading files into the warehouse: validated, idempotent, all-or-nothing per file.

For each file (or dataset folder) the pipeline:

1. skips it whole if the same content was already loaded in the same format (by SHA-256);
2. streams it through its reader in batches and validates every row against the table's
   contract (:mod:`nextbest.data.validate`); rejected rows go to the ``quarantine`` table;
3. stages the good rows, then, table by table in load order, quarantines rows of erased
   customers (row withheld, see :mod:`nextbest.data.erase`), duplicate ids within the file,
   rows that refer to unknown customers, products, offers or decisions, and rows whose id is
   already in the warehouse with different values; rows already there unchanged are counted
   as skipped;
4. inserts the rest, and records the load in ``loads``.

Steps 2 to 4 run in one transaction: a failure leaves the warehouse as it was. For every table
``read == loaded + quarantined + skipped``: nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from nextbest.config import IngestConfig
from nextbest.data.erase import screen_erased, withhold_erased
from nextbest.data.schema import LOAD_ORDER, TABLES, contract
from nextbest.data.sources import (
    Batch,
    ReadOptions,
    Reject,
    read_csv,
    read_jsonl,
    read_parquet,
)
from nextbest.data.validate import received, validate
from nextbest.data.warehouse import BOOKKEEPING, Warehouse
from nextbest.errors import DataError
from nextbest.progress import NullReporter, Reporter

__all__ = ["LoadResult", "TableCounts", "expand_paths", "ingest", "ingest_path"]

log = logging.getLogger(__name__)

Reader = Callable[[Path, ReadOptions], Iterator[Batch]]

_GENERIC: dict[str, Callable[[Path, str, ReadOptions], Iterator[Batch]]] = {
    "csv": read_csv,
    "parquet": read_parquet,
    "jsonl": read_jsonl,
}
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_KEEP_PROBLEMS = 20
_QUARANTINE_STAGE = "_stage_quarantine"


@dataclass
class TableCounts:
    """What happened to one table's rows in one load."""

    read: int = 0
    loaded: int = 0
    quarantined: int = 0
    skipped: int = 0


@dataclass
class LoadResult:
    """The outcome of loading one file: counts per table and the first problems found."""

    source: str
    format: str
    status: str
    load_id: str | None = None
    tables: dict[str, TableCounts] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    message: str = ""
    report: str | None = None
    files: list[str] = field(default_factory=list)

    def total(self, what: str) -> int:
        return sum(getattr(c, what) for c in self.tables.values())

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def expand_paths(paths: Sequence[Path], fmt: str | None) -> list[Path]:
    """Folders without a format stand for the canonical files inside them, in load order.

    Paths that do not exist are kept, so that each fails on its own with a clear message.
    """
    out: list[Path] = []
    for path in paths:
        if path.is_dir() and fmt is None:
            found = [p for p in sorted(path.iterdir()) if p.suffix in _SUFFIXES and _table_of(p)]
            if not found:
                raise DataError(
                    f"{path}: no canonical files (customers, products, offers, decisions, "
                    "events as .csv, .parquet or .jsonl) in this folder; pass --format for a "
                    "dataset folder"
                )
            found.sort(key=lambda p: LOAD_ORDER.index(_table_of(p) or "events"))
            out.extend(found)
        else:
            out.append(path)
    return out


def ingest(
    warehouse: Warehouse,
    paths: Sequence[Path],
    config: IngestConfig,
    *,
    fmt: str | None = None,
    table: str | None = None,
    delimiter: str | None = None,
    reports: Path | None = None,
    reporter: Reporter | None = None,
) -> list[LoadResult]:
    """Load every path; a file that fails is reported and the others still load."""
    results = []
    for path in expand_paths(paths, fmt):
        try:
            if not path.exists():
                raise DataError(f"{path}: no such file or folder")
            result = ingest_path(
                warehouse,
                path,
                config,
                fmt=fmt,
                table=table,
                delimiter=delimiter,
                reporter=reporter,
            )
        except DataError as exc:
            result = LoadResult(str(path), fmt or "auto", "failed", message=str(exc))
        except pa.ArrowException as exc:  # a reader met something it cannot parse at all
            message = f"{path}: cannot be read as {fmt or 'its suffix says'} ({exc})"
            result = LoadResult(str(path), fmt or "auto", "failed", message=message)
        if reports is not None and result.status != "already loaded":
            result.report = str(_write_report(warehouse, result, reports))
        results.append(result)
    return results


def ingest_path(
    warehouse: Warehouse,
    path: Path,
    config: IngestConfig,
    *,
    fmt: str | None = None,
    table: str | None = None,
    delimiter: str | None = None,
    reporter: Reporter | None = None,
) -> LoadResult:
    """Load one file or dataset folder, all or nothing. Raises DataError if it cannot be read."""
    reporter = reporter or NullReporter()
    reader, name, options = _resolve(path, fmt, table, delimiter, config)
    digest = _sha256(path)
    loads = warehouse.table("loads")
    before = loads.filter((loads.sha256 == digest) & (loads.format == name)).to_pyarrow()
    if before.num_rows:
        first = before.to_pylist()[0]
        return LoadResult(
            str(path),
            name,
            "already loaded",
            first["load_id"],
            message=f"same content already loaded on {first['finished_ts']:%Y-%m-%d %H:%M} UTC "
            f"as load {first['load_id']}; nothing added",
        )
    started = datetime.now(UTC)
    load_id = f"{started:%Y%m%dT%H%M%S}-{digest[:10]}"
    result = LoadResult(str(path), name, "loaded", load_id)
    staged: set[str] = set()
    warehouse.create_temp(_QUARANTINE_STAGE, BOOKKEEPING["quarantine"])
    try:
        reporter.start(None, f"reading {path.name}")
        try:
            for batch in reader(path, options):
                _stage_batch(warehouse, batch, result, staged, options, load_id)
                reporter.advance(batch.data.num_rows + len(batch.rejects))
        finally:
            reporter.finish()
        tables = [t for t in LOAD_ORDER if t in staged]
        for t in tables:
            _finalise(warehouse, t, result, load_id, staged)
        # Only table-to-table copies happen inside the transaction: the warehouse changes
        # all at once or not at all.
        with warehouse.transaction():
            for t in tables:
                warehouse.insert(t, warehouse.table(f"_clean_{t}").select(*TABLES[t].column_names))
            warehouse.insert("quarantine", warehouse.table(_QUARANTINE_STAGE))
            _record_load(warehouse, result, digest, started)
    finally:
        for t in staged:
            warehouse.drop(f"_stage_{t}")
            warehouse.drop(f"_clean_{t}")
        warehouse.drop(_QUARANTINE_STAGE)
    log.info("loaded %s: %s", path, result.tables)
    return result


def _record_load(warehouse: Warehouse, result: LoadResult, digest: str, started: datetime) -> None:
    warehouse.insert(
        "loads",
        pa.table(
            {
                "load_id": [result.load_id],
                "source": [result.source],
                "sha256": [digest],
                "format": [result.format],
                "started_ts": [started],
                "finished_ts": [datetime.now(UTC)],
                "rows_read": [result.total("read")],
                "rows_loaded": [result.total("loaded")],
                "rows_quarantined": [result.total("quarantined")],
                "rows_skipped": [result.total("skipped")],
                "tables": [",".join(result.tables)],
            },
            schema=_arrow_schema(BOOKKEEPING["loads"]),
        ),
    )


def _resolve(
    path: Path, fmt: str | None, table: str | None, delimiter: str | None, config: IngestConfig
) -> tuple[Reader, str, ReadOptions]:
    """The reader for a path, its format's name, and the options to read it with."""
    options = ReadOptions(
        batch_rows=config.batch_rows,
        default_timezone=config.default_timezone,
        delimiter=delimiter or ",",
    )
    if fmt in config.mappings:
        mapping = config.mappings[fmt]
        spec = contract(mapping.table)
        for source, target in mapping.columns.items():
            if target not in spec.column_names:
                raise DataError(
                    f"nextbest.toml: ingest.mappings.{fmt}.columns maps {source!r} to "
                    f"{target!r}, which is no column of {mapping.table}; expected one of "
                    f"{', '.join(spec.column_names)}"
                )
        options = replace(
            options,
            delimiter=delimiter or mapping.delimiter,
            rename=dict(mapping.columns),
            constants=dict(mapping.constants),
        )
        return partial(_read_generic, _GENERIC[mapping.file_type], mapping.table), fmt, options
    if fmt is None or fmt in _GENERIC:
        kind = fmt or _SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(
                f"{path}: cannot tell the format from the suffix {path.suffix!r}; expected "
                f".csv, .parquet or .jsonl, or pass --format"
            )
        found = table or _table_of(path)
        if not found:
            raise DataError(
                f"{path}: cannot tell the table from the file name; name it after a canonical "
                f"table ({', '.join(LOAD_ORDER)}) or pass --table"
            )
        contract(found)
        return partial(_read_generic, _GENERIC[kind], found), kind, options
    from nextbest.data.formats import FORMATS

    if fmt not in FORMATS:
        known = ", ".join([*_GENERIC, *sorted(FORMATS), *sorted(config.mappings)])
        raise DataError(f"unknown format {fmt!r}: expected one of {known}")
    return FORMATS[fmt], fmt, options


def _read_generic(
    reader: Callable[[Path, str, ReadOptions], Iterator[Batch]],
    table: str,
    path: Path,
    options: ReadOptions,
) -> Iterator[Batch]:
    return reader(path, table, options)


def _table_of(path: Path) -> str | None:
    stem = path.name.split(".")[0].lower()
    for name in LOAD_ORDER:
        if stem == name or stem.startswith(name + "_") or stem.startswith(name + "-"):
            return name
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def _arrow_schema(schema: dict[str, ibis.DataType]) -> pa.Schema:
    return ibis.schema(schema).to_pyarrow()


def _stage_batch(
    warehouse: Warehouse,
    batch: Batch,
    result: LoadResult,
    staged: set[str],
    options: ReadOptions,
    load_id: str,
) -> None:
    spec = contract(batch.table)
    counts = result.tables.setdefault(batch.table, TableCounts())
    counts.read += batch.data.num_rows + len({r.line for r in batch.rejects})
    counts.quarantined += len({r.line for r in batch.rejects})
    if batch.data.num_rows == 0 and not batch.rejects:
        return
    valid = validate(batch, spec, options.default_timezone) if batch.data.num_rows else None
    rejects = list(batch.rejects)
    if valid is not None:
        counts.quarantined += valid.rows_rejected
        rejects += valid.rejects
        if batch.table not in staged:
            warehouse.create_temp(
                f"_stage_{batch.table}", {**spec.ibis_schema(), "_line": "int64", "_src": "int32"}
            )
            staged.add(batch.table)
        if valid.data.num_rows:
            if batch.source not in result.files:
                result.files.append(batch.source)
            src = result.files.index(batch.source)
            data = valid.data.append_column("_line", pa.array(valid.lines, pa.int64()))
            data = data.append_column("_src", pa.array([src] * data.num_rows, pa.int32()))
            warehouse.insert(f"_stage_{batch.table}", data)
    _quarantine(warehouse, rejects, load_id, result)


def _quarantine(
    warehouse: Warehouse, rejects: list[Reject], load_id: str, result: LoadResult
) -> None:
    if not rejects:
        return
    rejects = withhold_erased(warehouse, rejects)  # the quarantine never stores an erased id
    now = datetime.now(UTC)
    room = _KEEP_PROBLEMS - len(result.problems)
    result.problems.extend(r.message() for r in rejects[: max(room, 0)])
    warehouse.insert(
        _QUARANTINE_STAGE,
        pa.table(
            {
                "load_id": [load_id] * len(rejects),
                "source": [r.source for r in rejects],
                "line": pa.array([r.line for r in rejects], pa.int64()),
                "table_name": [r.table for r in rejects],
                "field": [r.field for r in rejects],
                "expected": [r.expected for r in rejects],
                "received": [r.received for r in rejects],
                "row": [r.row for r in rejects],
                "ts": [now] * len(rejects),
            },
            schema=_arrow_schema(BOOKKEEPING["quarantine"]),
        ),
    )


def _finalise(
    warehouse: Warehouse, name: str, result: LoadResult, load_id: str, staged: set[str]
) -> None:
    """Set-level checks on a staged table; what passes is left in ``_clean_<name>``.

    References may point at the warehouse or at rows of this same load (already checked,
    since tables are finalised in load order).
    """
    spec = TABLES[name]
    key = spec.key
    cols = list(spec.column_names)
    counts = result.tables[name]
    erased = screen_erased(warehouse, name, f"_stage_{name}", result.files or [result.source])
    _quarantine(warehouse, erased, load_id, result)
    counts.quarantined += len(erased)
    reject = partial(_set_rejects, warehouse, name, load_id, result)
    stage = warehouse.table(f"_stage_{name}")
    # each step is materialised, so that no check evaluates the ones before it again
    dups = stage.group_by(key).aggregate(_n=stage.count()).filter(lambda t: t._n > 1)
    rest: ir.Table = stage.select(*cols, "_line", "_src")
    if int(dups.count().execute()):
        ranked = stage.mutate(
            _rn=ibis.row_number().over(group_by=stage[key], order_by=[stage._src, stage._line]),
            _first=stage._line.first().over(
                group_by=stage[key], order_by=[stage._src, stage._line]
            ),
        )
        ranked = _materialise(warehouse, f"_ranked_{name}", ranked)
        counts.quarantined += reject(
            ranked.filter(ranked._rn > 0),
            key,
            f"a unique {key}",
            lambda row: f"{received(row[key])}, already used at line {row['_first']}",
        )
        rest = _materialise(
            warehouse,
            f"_rest_{name}",
            ranked.filter(ranked._rn == 0).select(*cols, "_line", "_src"),
        )
        warehouse.drop(f"_ranked_{name}")
    # every reference checked in one pass; a row is rejected for the first one it breaks
    refs = [col for col in spec.columns if col.ref is not None]
    flags = {}
    for col in refs:
        assert col.ref is not None
        ref_key = TABLES[col.ref].key
        known = warehouse.table(col.ref).select(ref_key)
        if col.ref in staged:
            known = known.union(warehouse.table(f"_clean_{col.ref}").select(ref_key))
        flags[f"_unknown_{col.name}"] = rest[col.name].notnull() & ~rest[col.name].isin(
            known[ref_key]
        )
    if refs:
        flagged = _materialise(warehouse, f"_flagged_{name}", rest.mutate(**flags))
        passed = ibis.literal(True)
        for col in refs:
            assert col.ref is not None
            unknown = flagged[f"_unknown_{col.name}"]
            counts.quarantined += reject(
                flagged.filter(passed & unknown).drop(*flags),
                col.name,
                f"the id of a known {col.ref[:-1]} (in {col.ref})",
                partial(_show_column, col.name),
            )
            passed = passed & ~unknown
        rest = flagged.filter(passed).drop(*flags)
    clean = _materialise(warehouse, f"_checked_{name}", rest)
    for temp in ("_rest", "_flagged"):
        warehouse.drop(f"{temp}_{name}")
    target = warehouse.table(name)
    joined = _materialise(
        warehouse, f"_joined_{name}", clean.inner_join(target, key, rname="{name}__old")
    )
    differs = ibis.or_(*[~joined[c].identical_to(joined[f"{c}__old"]) for c in cols if c != key])
    counts.quarantined += reject(
        joined.filter(differs).select(*cols, "_line", "_src"),
        key,
        f"a new {key}, or exactly the values already loaded",
        lambda row: f"{received(row[key])}, already in the warehouse with other values",
    )
    counts.skipped += int(joined.filter(~differs).count().execute())
    warehouse.con.create_table(
        f"_clean_{name}",
        obj=clean.anti_join(joined.select(key), key),
        temp=True,
        overwrite=True,
    )
    warehouse.drop(f"_checked_{name}")
    warehouse.drop(f"_joined_{name}")
    counts.loaded += warehouse.count(f"_clean_{name}")


def _materialise(warehouse: Warehouse, name: str, expr: ir.Table) -> ir.Table:
    """``expr`` computed once into the temporary table ``name``."""
    warehouse.con.create_table(name, obj=expr, temp=True, overwrite=True)
    return warehouse.table(name)


def _show_column(name: str, row: dict[str, object]) -> str:
    return received(row[name])


def _set_rejects(
    warehouse: Warehouse,
    table: str,
    load_id: str,
    result: LoadResult,
    expr: ir.Table,
    field_name: str,
    expected: str,
    describe: Callable[[dict[str, object]], str],
) -> int:
    rows = expr.to_pyarrow().to_pylist()
    if not rows:
        return 0
    rejects = []
    for row in rows:
        shown = {k: v for k, v in row.items() if not k.startswith("_")}
        rejects.append(
            Reject(
                result.files[int(row["_src"])] if result.files else result.source,
                int(row["_line"]),
                table,
                field_name,
                expected,
                describe(row),
                json.dumps(shown, default=str, ensure_ascii=False),
            )
        )
    rejects.sort(key=lambda r: r.line or 0)
    _quarantine(warehouse, rejects, load_id, result)
    return len(rows)


def _write_report(warehouse: Warehouse, result: LoadResult, folder: Path) -> Path:
    """A JSON report of one load: counts per table and quarantine counts by field."""
    folder.mkdir(parents=True, exist_ok=True)
    name = result.load_id or f"failed-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    report: dict[str, object] = result.to_dict()
    if result.load_id:
        q = warehouse.table("quarantine")
        q = q.filter(q.load_id == result.load_id)
        by_field = (
            q.group_by(["table_name", "field", "expected"])
            .aggregate(rows=q.count())
            .order_by(ibis.desc("rows"))
            .to_pyarrow()
            .to_pylist()
        )
        report["quarantine_by_field"] = by_field
    path = folder / f"load-{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return path
