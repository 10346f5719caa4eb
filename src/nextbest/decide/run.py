"""``nextbest decide``: one campaign's decisions for one day, logged, exported and summarised.

:func:`decide` reads the day's inputs (:mod:`.day`), plans the slates (:mod:`.batch`), and in
one pass over the plan, block by block of customers, exports the slates to ``out`` and writes
the decision log: a Parquet record under ``decisions/log`` and the warehouse's ``decisions``
table. A day's first log is appended as it is made (:class:`~nextbest.data.append.TypedAppend`:
the engine's own typed rows, with ids no logged decision has); deciding a logged day again goes
through the ordinary ingestion, which adds nothing when the decisions are the same, and a day
decided with other decisions is refused (the log is append-only).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nextbest.data.append import TypedAppend, write_report
from nextbest.data.ingest import LoadResult, ingest
from nextbest.data.workspace import Workspace
from nextbest.decide.batch import DayPlan, plan_day
from nextbest.decide.campaign import CampaignFile
from nextbest.decide.day import day_inputs
from nextbest.decide.explore import offer_posteriors
from nextbest.decide.output import (
    LOG_SCHEMA,
    decision_batches,
    export_slates,
    output_paths,
    summary,
    write_outputs,
    write_summary,
)
from nextbest.errors import ConfigError, DataError
from nextbest.models.store import ModelStore
from nextbest.progress import NullReporter, Reporter

__all__ = ["DecisionRun", "decide"]


@dataclass
class DecisionRun:
    plan: DayPlan
    summary: dict[str, Any]
    paths: dict[str, Path]
    load: LoadResult | None


def _order_values(ws: Workspace, offer_ids: list[str], before: datetime) -> np.ndarray:
    ev = ws.warehouse.table("events")
    ts = ibis.literal(before, type="timestamp('UTC')")
    ev = ev.filter(ev.type == "purchase", ev.ts < ts, ev.amount.notnull())
    overall = ev.amount.mean().execute()
    overall = float(overall) if overall is not None and overall == overall else 1.0
    by = (
        ev.filter(ev.offer_id.isin(offer_ids))
        .group_by("offer_id")
        .aggregate(a=ev.amount.mean())
        .to_pandas()
    )
    got = dict(zip(by.offer_id, by.a, strict=True))
    return np.array([float(got.get(o, overall)) for o in offer_ids])


def _effect(store: ModelStore, inputs: Any) -> np.ndarray:
    try:
        model, manifest = store.load("uplift")
    except ConfigError as exc:
        raise ConfigError(
            f"objective incremental_margin needs an uplift model ({exc}); run "
            "'nextbest train uplift'"
        ) from None
    per_customer = inputs.customers
    manifest.check_features(per_customer.columns)
    effect = model.predict_effect(per_customer[list(manifest.features)])
    return np.asarray(effect)[:, 0] if np.ndim(effect) == 2 else np.asarray(effect)


def _logged(ws: Workspace, spec: CampaignFile, day: datetime) -> ir.Table:
    """The decisions logged before under this campaign and day (their ids' prefix)."""
    dec = ws.warehouse.table("decisions")
    prefix = f"{spec.campaign.name}:{day:%Y%m%d}:"
    # the range lets the engine skip blocks by their min/max; startswith is the rule
    after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return dec.filter(
        dec.decision_id >= prefix, dec.decision_id < after, dec.decision_id.startswith(prefix)
    )


def _check_log(ws: Workspace, spec: CampaignFile, day: datetime, plan: DayPlan) -> None:
    """The decision log is append-only: a day decided differently before is an error."""
    old = _logged(ws, spec, day).select("decision_id", "offer_id")
    count = int(old.count().execute())
    if not count:
        return
    pairs = [b.select(["decision_id", "offer_id"]) for b in decision_batches(plan, spec, day)]
    new = ibis.memtable(pa.Table.from_batches(pairs))
    try:

        def text(t: ir.Table) -> ir.Table:
            return t.select(t.decision_id, offer=t.offer_id.fill_null(""))

        differ = text(old).difference(text(new)).union(text(new).difference(text(old)))
        same = int(differ.count().execute()) == 0
    finally:
        ws.warehouse.con.con.unregister(new.op().name)
    if not same:
        raise ConfigError(
            f"campaign {spec.campaign.name} was already decided for {day:%Y-%m-%d} with other "
            f"decisions ({count:,} logged); the decision log is append-only: use --no-log "
            "to preview, or give the campaign another name"
        )


def _log_fresh(
    ws: Workspace,
    plan: DayPlan,
    spec: CampaignFile,
    day: datetime,
    paths: dict[str, Path],
    fmt: str,
    path: Path,
) -> LoadResult:
    """Slates and a day's first decision log in one pass, appended as they are made.

    No logged id has the day's prefix and every new one has it, unique by (customer, slot):
    the ids are new, which is what ingestion's check of them would find. The rows are the
    engine's own, typed as the contract (:data:`.output.LOG_SCHEMA`): not read back.
    """
    ids = plan.inputs.customer_ids
    if len(ids) and pc.count_distinct(pa.array(ids, type=pa.string())).as_py() != len(ids):
        raise DataError(f"decide {spec.campaign.name}: the day's customer ids are not unique")
    try:
        with (
            TypedAppend(ws.warehouse, "decisions", path) as append,
            pq.ParquetWriter(path, LOG_SCHEMA) as record,
        ):

            def recorded() -> Iterator[pa.RecordBatch]:
                for batch in export_slates(plan, spec, day, paths["slates"], fmt):
                    record.write_batch(batch)
                    yield batch

            append.insert(LOG_SCHEMA, _ahead(recorded()))
            record.close()
            load = append.finish()
    except BaseException:
        path.unlink(missing_ok=True)  # no record of rows the warehouse does not hold
        raise
    write_report(load, ws.reports)
    return load


def _ahead(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``batches`` made one ahead on a thread, while the warehouse takes in the one before
    (Arrow and DuckDB release the GIL: the two share the cores)."""
    box: queue.Queue[tuple[pa.RecordBatch | None, BaseException | None]] = queue.Queue(1)
    stop = threading.Event()

    def make() -> None:
        try:
            for batch in batches:
                box.put((batch, None))
                if stop.is_set():
                    return
            box.put((None, None))
        except BaseException as exc:  # handed to the consumer, raised there
            box.put((None, exc))

    worker = threading.Thread(target=make, name="decision-log", daemon=True)
    worker.start()
    try:
        while True:
            batch, error = box.get()
            if error is not None:
                raise error
            if batch is None:
                return
            yield batch
    finally:
        stop.set()
        while worker.is_alive():  # a consumer that stopped early: unblock the maker
            with contextlib.suppress(queue.Empty):
                box.get(timeout=0.05)
        worker.join()


def decide(
    ws: Workspace,
    spec: CampaignFile,
    day: datetime,
    *,
    out: Path | None = None,
    fmt: str = "csv",
    log_decisions: bool = True,
    random_state: int = 0,
    reporter: Reporter | None = None,
) -> DecisionRun:
    """Decide ``spec``'s messages for ``day``: log them, export slates and a summary."""
    reporter = reporter or NullReporter()
    day = datetime(day.year, day.month, day.day, tzinfo=UTC)
    store = ModelStore(ws.models)
    inputs = day_inputs(ws.warehouse, store, spec, day, reporter=reporter)
    c = spec.campaign
    posterior = None
    if c.exploration.share > 0 and c.exploration.method == "thompson":
        posterior = offer_posteriors(ws.warehouse, list(inputs.offers.offer_id), day)
    effect = _effect(store, inputs) if c.objective == "incremental_margin" else None
    order_value = (
        _order_values(ws, list(inputs.offers.offer_id), day) if c.objective == "revenue" else None
    )
    plan = plan_day(
        spec,
        inputs,
        posterior=posterior,
        effect=effect,
        order_value=order_value,
        random_state=random_state,
        reporter=reporter,
    )
    return _write_day(
        ws, plan, spec, day, out or ws.root / "decisions", fmt, log_decisions, reporter
    )


def _write_day(
    ws: Workspace,
    plan: DayPlan,
    spec: CampaignFile,
    day: datetime,
    out: Path,
    fmt: str,
    log_decisions: bool,
    reporter: Reporter,
) -> DecisionRun:
    """What a planned day leaves: slates and summary in ``out``, and the decision log."""
    c = spec.campaign
    what = "Writing slates, the summary and the decision log" if log_decisions else ""
    reporter.start(None, what or "Writing slates and the summary")
    logged = log_decisions and int(_logged(ws, spec, day).count().execute()) > 0
    if logged:
        _check_log(ws, spec, day, plan)
    report = summary(plan, spec, day)
    load = None
    if not log_decisions:
        paths = write_outputs(plan, spec, day, out, report, fmt)
    else:
        log_dir = ws.root / "decisions" / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"decisions-{c.name}-{day:%Y-%m-%d}.parquet"
        if logged:  # a day decided the same way before: ingestion skips what is there
            with pq.ParquetWriter(path, LOG_SCHEMA) as record:
                paths = write_outputs(plan, spec, day, out, report, fmt, log=record.write_batch)
            load = ingest(
                ws.warehouse, [path], ws.config.ingest, table="decisions", reports=ws.reports
            )[0]
        else:
            paths = output_paths(spec, day, out, fmt)
            load = _log_fresh(ws, plan, spec, day, paths, fmt, path)
            write_summary(paths["summary"], report)
        paths["log"] = path
    record_path = ws.root / "decisions" / paths["summary"].name
    if record_path.resolve() != paths["summary"].resolve():  # explanations read this copy
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(paths["summary"].read_text(encoding="utf-8"), encoding="utf-8")
    reporter.finish()
    return DecisionRun(plan, report, paths, load)
