"""``nextbest decide``: one campaign's decisions for one day, logged, exported and summarised.

:func:`decide` reads the day's inputs (:mod:`.day`), plans the slates (:mod:`.batch`), writes
the decisions to the warehouse's decision log through the ordinary ingestion (so they are
validated like any file, and deciding the same day twice adds nothing), and exports the slates
and the summary to ``out``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import numpy as np

from nextbest.data.ingest import LoadResult, ingest
from nextbest.data.workspace import Workspace
from nextbest.decide.batch import DayPlan, plan_day
from nextbest.decide.campaign import CampaignFile
from nextbest.decide.day import day_inputs
from nextbest.decide.explore import offer_posteriors
from nextbest.decide.output import decision_rows, summary, write_outputs
from nextbest.errors import ConfigError
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


def _check_log(ws: Workspace, spec: CampaignFile, day: datetime, rows: Any) -> None:
    """The decision log is append-only: a day decided differently before is an error."""
    dec = ws.warehouse.table("decisions")
    prefix = f"{spec.campaign.name}:{day:%Y%m%d}:"
    old = dec.filter(dec.decision_id.startswith(prefix)).select("decision_id", "offer_id")
    old = old.to_pandas()
    if old.empty:
        return

    def pairs(frame: Any) -> set[tuple[str, str]]:
        offers = frame.offer_id.astype(object).where(frame.offer_id.notna(), "")
        return set(zip(frame.decision_id.astype(str), offers.astype(str), strict=True))

    same = pairs(old) == pairs(rows)
    if not same:
        raise ConfigError(
            f"campaign {spec.campaign.name} was already decided for {day:%Y-%m-%d} with other "
            f"decisions ({len(old):,} logged); the decision log is append-only: use --no-log "
            "to preview, or give the campaign another name"
        )


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
    reporter.start(None, "Writing slates and the summary")
    rows = decision_rows(plan, spec, day)
    if log_decisions:
        _check_log(ws, spec, day, rows)
    out = out or ws.root / "decisions"
    report = summary(plan, spec, day)
    paths = write_outputs(plan, spec, day, out, report, fmt)
    reporter.finish()
    record = ws.root / "decisions" / paths["summary"].name
    if record.resolve() != paths["summary"].resolve():  # explanations read the workspace's copy
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(paths["summary"].read_text(encoding="utf-8"), encoding="utf-8")
    load = None
    if log_decisions:
        log_dir = ws.root / "decisions" / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"decisions-{c.name}-{day:%Y-%m-%d}.parquet"
        reporter.start(None, "Logging the decisions")
        rows.to_parquet(path, index=False)
        paths["log"] = path
        load = ingest(
            ws.warehouse, [path], ws.config.ingest, table="decisions", reports=ws.reports
        )[0]
        reporter.finish()
    return DecisionRun(plan, report, paths, load)
