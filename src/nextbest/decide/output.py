"""What a planned day leaves behind: decision-log rows, e-mail slates and the summary.

:func:`decision_batches` gives the rows of the decision log (one per filled slot, one control
row per reachable held-out customer), typed as the warehouse's ``decisions`` table, with each
decision's score parts as a JSON object, block by block of customers so that memory stays
bounded whatever the number of members; :func:`write_outputs` exports the slates (CSV or
Parquet) for the e-mail service in the same pass, and the :func:`summary` (JSON): allocation
per offer, constraint use with shadow prices, objective, gap.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nextbest.data.append import arrow_schema
from nextbest.decide.batch import DayPlan
from nextbest.decide.campaign import CampaignFile
from nextbest.decide.problem import Allocation

__all__ = [
    "LOG_SCHEMA",
    "SLATE_SCHEMA",
    "decision_batches",
    "decision_id",
    "decision_ids",
    "decision_rows",
    "export_slates",
    "output_paths",
    "score_parts_json",
    "summary",
    "write_outputs",
    "write_summary",
]

LOG_SCHEMA = pa.schema([f for f in arrow_schema("decisions") if f.name != "attributes"])
"""The decision log's columns: the ``decisions`` contract's, less ``attributes`` (always null)."""

SLATE_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("channel", pa.string()),
        ("slot", pa.int64()),
        ("offer_id", pa.string()),
        ("name", pa.string()),
        ("brand", pa.string()),
        ("decision_id", pa.string()),
        ("explored", pa.bool_()),
    ]
)
"""The slates file for the e-mail service: one row per filled slot, in customer order."""

BLOCK = 100_000
"""Customers per block of rows: at 3 slots, a block's Arrow columns take some 100 MB."""
_MAKERS = 2  # threads making blocks
_AHEAD = 4  # blocks made ahead of the consumer, at most

LogSink = Callable[[pa.RecordBatch], None]


def _strings(values: Any) -> pa.Array:
    """Text values (None or NaN as null) as an Arrow string array."""
    return pa.array(np.asarray(values, dtype=object), type=pa.string(), from_pandas=True)


def _labels(values: Any) -> pa.Array:
    """Text values with few distinct ones (an arm per customer) as an Arrow string array."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    return _strings(uniques).take(pa.array(codes, mask=codes < 0))


def _floats(values: np.ndarray) -> pa.Array:
    """Numbers as float64, NaN as null (as ingestion of a pandas frame stores them)."""
    return pa.array(np.asarray(values, dtype=np.float64), from_pandas=True)


def _const(value: Any, n: int, kind: pa.DataType) -> pa.Array:
    return pa.nulls(n, kind) if value is None else pa.repeat(pa.scalar(value, kind), n)


def _json_number(values: np.ndarray, digits: int) -> pa.Array:
    rounded = pa.array(np.round(np.asarray(values, dtype=np.float64), digits))
    return pc.if_else(pc.is_finite(rounded), pc.cast(rounded, pa.string()), "null")


def score_parts_json(plan: DayPlan, rows: np.ndarray, cols: np.ndarray) -> pa.Array:
    """The score parts of decisions, as JSON objects (for the decision log)."""
    p = plan.parts
    offer = plan.slates[rows, cols]
    shadow = plan.problem.shadow_cost(plan.problem.prices(plan.allocation.duals), rows, offer)
    numbers = {
        "p_response": (plan.inputs.p_response[rows, offer], 6),
        "p_buy": (p["p_buy"][rows, offer], 6),
        "gross": (p["gross"][rows, offer], 6),
        "cost": (p["cost"][rows, offer], 6),
        "lever": (p["lever"][rows, offer], 4),
        "value": (plan.problem.value[rows, offer], 6),
        "shadow_cost": (shadow, 6),
    }
    flags = {"explored": plan.explored[rows, cols], "novel": plan.novel[rows, cols]}
    pieces: list[Any] = []
    for key, (values, digits) in numbers.items():
        pieces += [f', "{key}": ' if pieces else f'{{"{key}": ', _json_number(values, digits)]
    true, false = pa.scalar("true"), pa.scalar("false")
    for key, on in flags.items():
        pieces += [f', "{key}": ', pc.if_else(pa.array(np.asarray(on, bool)), true, false)]
    return pc.binary_join_element_wise(*pieces, "}", "")


def decision_id(spec: CampaignFile, day: datetime, customer_id: str, slot: int) -> str:
    """``campaign:YYYYMMDD:customer:slot`` (slot 0: a held-out customer's control row)."""
    return f"{spec.campaign.name}:{day:%Y%m%d}:{customer_id}:{slot}"


def decision_ids(spec: CampaignFile, day: datetime, customers: Any, slots: Any) -> pa.Array:
    """:func:`decision_id` of many decisions at once."""
    prefix = f"{spec.campaign.name}:{day:%Y%m%d}:"
    if not isinstance(customers, pa.Array):
        customers = _strings(customers)
    text = pc.cast(pa.array(np.asarray(slots, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, customers, ":", text, "")


class _Day:
    """What the blocks of one plan share: its per-customer and per-offer Arrow columns."""

    def __init__(self, plan: DayPlan, spec: CampaignFile, day: datetime) -> None:
        self.plan, self.spec, self.day = plan, spec, day
        c = spec.campaign
        inputs = plan.inputs
        self.ids = _strings(inputs.customer_ids)
        self.arm = _labels(inputs.arm)
        offers = inputs.offers
        self.offer_id = _strings(offers.offer_id)
        self.name = _strings(offers.name)
        self.brand = _strings(offers.brand)
        self.ts = pa.scalar(inputs.send_ts, pa.timestamp("us", tz="UTC"))
        self.experiment = c.experiment.name if c.experiment else None
        self.policy = f"{c.name}/{plan.allocation.info.get('solver', '')}"

    def sent(self, start: int, stop: int) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """The log rows and the slate rows of customers ``start:stop`` (row-major order)."""
        plan, c = self.plan, self.spec.campaign
        r, cols = np.nonzero(plan.slates[start:stop] >= 0)
        rows = r + start
        offer = plan.slates[rows, cols]
        n = len(rows)
        take = pa.array(rows)
        customers = self.ids.take(take)
        slot = pa.array((cols + 1).astype(np.int64))
        ids = decision_ids(self.spec, self.day, customers, slot)
        offer_ids = self.offer_id.take(pa.array(offer))
        channel = _const(c.channel, n, pa.string())
        log = pa.record_batch(
            [
                ids,
                _const(self.ts, n, self.ts.type),
                customers,
                offer_ids,
                channel,
                slot,
                _const(self.policy, n, pa.string()),
                _floats(plan.problem.value[rows, offer]),
                score_parts_json(plan, rows, cols),
                _floats(plan.propensity[rows, cols]),
                _const(self.experiment, n, pa.string()),
                self.arm.take(take),
            ],
            schema=LOG_SCHEMA,
        )
        slates = pa.record_batch(
            [
                customers,
                channel,
                slot,
                offer_ids,
                self.name.take(pa.array(offer)),
                self.brand.take(pa.array(offer)),
                ids,
                pa.array(np.asarray(plan.explored[rows, cols], dtype=bool)),
            ],
            schema=SLATE_SCHEMA,
        )
        return log, slates

    def control_block(self, held: np.ndarray) -> tuple[pa.RecordBatch, None]:
        """:meth:`control` as a block of :func:`_blocks` (no slate rows)."""
        return self.control(held), None

    def control(self, held: np.ndarray) -> pa.RecordBatch:
        """The control rows of the held-out customers ``held``: no offer, slot 0."""
        c = self.spec.campaign
        n = len(held)
        customers = self.ids.take(pa.array(held))
        zero = pa.array(np.zeros(n, dtype=np.int64))
        share = c.experiment.holdout if c.experiment else None
        return pa.record_batch(
            [
                decision_ids(self.spec, self.day, customers, zero),
                _const(self.ts, n, self.ts.type),
                customers,
                pa.nulls(n, pa.string()),
                _const(c.channel, n, pa.string()),
                zero,
                _const(f"{c.name}/holdout", n, pa.string()),
                pa.nulls(n, pa.float64()),
                pa.nulls(n, pa.string()),
                _const(share, n, pa.float64()),
                _const(self.experiment, n, pa.string()),
                _const("holdout", n, pa.string()),
            ],
            schema=LOG_SCHEMA,
        )


def _blocks(plan: DayPlan, spec: CampaignFile, day: datetime, block: int) -> Iterator[Any]:
    """``(log, slates)`` of the sent rows block by block, then ``(log, None)`` of the control.

    Blocks are made two at a time on threads (Arrow's kernels release the GIL) and given out
    in order, at most a few ahead of the consumer."""
    each = _Day(plan, spec, day)
    n = len(plan.inputs.customer_ids)
    jobs: list[Callable[[], Any]] = [
        partial(each.sent, start, min(n, start + block)) for start in range(0, n, block)
    ]
    # the control: held-out customers the campaign could have written to, like the treated
    held = np.flatnonzero(plan.inputs.holdout & plan.inputs.eligible.any(axis=1))
    jobs += [partial(each.control_block, held[a : a + block]) for a in range(0, len(held), block)]
    with ThreadPoolExecutor(_MAKERS, thread_name_prefix="decision-blocks") as pool:
        ahead: deque[Future[Any]] = deque()
        for job in jobs:
            ahead.append(pool.submit(job))
            if len(ahead) > _AHEAD:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def decision_batches(
    plan: DayPlan, spec: CampaignFile, day: datetime, block: int = BLOCK
) -> Iterator[pa.RecordBatch]:
    """The decisions table rows of a plan (:data:`LOG_SCHEMA`), block by block: one per filled
    slot, then one per held-out customer who was reachable (a control row, no offer)."""
    for log, _ in _blocks(plan, spec, day, block):
        yield log


def decision_rows(plan: DayPlan, spec: CampaignFile, day: datetime) -> pd.DataFrame:
    """:func:`decision_batches` as one frame."""
    batches = list(decision_batches(plan, spec, day))
    return pa.Table.from_batches(batches, schema=LOG_SCHEMA).to_pandas()


def summary(plan: DayPlan, spec: CampaignFile, day: datetime) -> dict[str, Any]:
    """What was decided: totals, per offer, per constraint with shadow prices, exploration."""
    pb = plan.problem
    inputs = plan.inputs
    rows, cols = np.nonzero(plan.slates >= 0)
    offer = plan.slates[rows, cols]
    final = Allocation(rows, offer, np.ones(len(rows)))
    used = pb.usage(final)
    duals = plan.allocation.duals if plan.allocation.duals is not None else np.zeros(len(used))
    info = {
        k: (float(v) if isinstance(v, (int, float, np.floating)) else v)
        for k, v in plan.allocation.info.items()
    }
    m = pb.shape[1]
    count = np.bincount(offer, minlength=m)
    units = np.bincount(offer, weights=plan.parts["p_buy"][rows, offer], minlength=m)
    prices = plan.prices()
    per_offer = [
        {
            "offer_id": str(o),
            "brand": str(b),
            "sent": int(count[j]),
            "expected_units": round(float(units[j]), 3),
            "stock_left": None if pd.isna(s) else round(float(s) - float(sold), 3),
            "price_per_unit": round(prices["units"][j], 6),
            "price_per_cost": round(prices["cost"][j], 6),
        }
        for j, (o, b, s, sold) in enumerate(
            zip(
                inputs.offers.offer_id,
                inputs.offers.brand,
                inputs.offers.stock,
                inputs.offers.sold,
                strict=True,
            )
        )
    ]
    constraints = [
        {
            "name": k.name,
            "label": k.label,
            "used": round(float(u), 6),
            "bound": k.bound,
            "slack": round(float(k.bound - u), 6),
            "shadow_price": round(float(d), 6),
            "binding": bool(d > 1e-9 or abs(k.bound - u) <= 1e-6 * max(1.0, abs(k.bound))),
        }
        for k, u, d in zip(pb.couplings, used, duals, strict=True)
    ]
    filled = len(rows)
    return {
        "campaign": spec.campaign.name,
        "date": f"{day:%Y-%m-%d}",
        "send_ts": inputs.send_ts.isoformat(),
        "model": inputs.model_version,
        "customers": len(inputs.customer_ids),
        "held_out": int(inputs.holdout.sum()),
        "contacted": int((plan.slates >= 0).any(axis=1).sum()),
        "slots_filled": filled,
        "expected_value": round(float(pb.value[rows, offer].astype(np.float64).sum()), 4),
        "optimised_value": round(float(plan.allocation.info.get("objective", np.nan)), 4),
        "expected_purchases": round(float(units.sum()), 4),
        "solver": info,
        "explored_share": round(float(plan.explored.sum() / max(1, filled)), 4),
        "novel_share": round(float(plan.novel[plan.slates >= 0].sum() / max(1, filled)), 4),
        "explored_reverted": plan.reverted,
        "position_weights": [round(x, 4) for x in inputs.position_weights],
        "excluded": inputs.excluded,
        "offers": per_offer,
        "constraints": constraints,
        "prices": prices,
        "offer_ids": [str(o) for o in inputs.offers.offer_id],
    }


def export_slates(
    plan: DayPlan,
    spec: CampaignFile,
    day: datetime,
    path: Path,
    fmt: str = "csv",
    block: int = BLOCK,
) -> Iterator[pa.RecordBatch]:
    """Write the slates file (CSV or Parquet) block by block of customers, yielding the
    decision-log rows of each block as it goes (:func:`decision_batches`, in order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        writer: pq.ParquetWriter | pacsv.CSVWriter
        if fmt == "parquet":
            writer = stack.enter_context(pq.ParquetWriter(path, SLATE_SCHEMA))
        else:
            writer = stack.enter_context(pacsv.CSVWriter(path, SLATE_SCHEMA))
        for rows, slates in _blocks(plan, spec, day, block):
            if slates is not None:
                writer.write_batch(slates)
            yield rows


def output_paths(spec: CampaignFile, day: datetime, root: Path, fmt: str) -> dict[str, Path]:
    """Where :func:`write_outputs` puts the slates and the summary."""
    stem = f"{spec.campaign.name}-{day:%Y-%m-%d}"
    return {
        "slates": root / f"slates-{stem}.{'parquet' if fmt == 'parquet' else 'csv'}",
        "summary": root / f"summary-{stem}.json",
    }


def write_outputs(
    plan: DayPlan,
    spec: CampaignFile,
    day: datetime,
    root: Path,
    report: dict[str, Any],
    fmt: str = "csv",
    *,
    log: LogSink | None = None,
    block: int = BLOCK,
) -> dict[str, Path]:
    """Slates for the e-mail service (CSV or Parquet) and the summary (JSON) under ``root``;
    ``log``, if given, receives the decision-log rows of the same pass, in order."""
    paths = output_paths(spec, day, root, fmt)
    for rows in export_slates(plan, spec, day, paths["slates"], fmt, block):
        if log is not None:
            log(rows)
    write_summary(paths["summary"], report)
    return paths


def write_summary(path: Path, report: dict[str, Any]) -> None:
    """The summary of a day as indented JSON (:func:`summary`)."""
    path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
