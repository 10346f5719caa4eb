"""What a planned day leaves behind: decision-log rows, e-mail slates and the summary.

:func:`decision_rows` gives the rows of the decision log (one per filled slot, one control row
per reachable held-out customer), with each decision's score parts as a JSON object;
:func:`write_outputs` exports the slates (CSV or Parquet) for the e-mail service and the
:func:`summary` (JSON): allocation per offer, constraint use with shadow prices, objective, gap.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from nextbest.decide.batch import DayPlan
from nextbest.decide.campaign import CampaignFile
from nextbest.decide.problem import Allocation

__all__ = [
    "decision_id",
    "decision_ids",
    "decision_rows",
    "score_parts_json",
    "summary",
    "write_outputs",
]


def _text(*parts: Any) -> np.ndarray:
    """Element-wise concatenation of text pieces (arrays or constants), vectorised by Arrow."""
    return np.asarray(
        pc.binary_join_element_wise(*(p if isinstance(p, str) else pa.array(p) for p in parts), "")
    ).astype(object)


def _json_number(values: np.ndarray, digits: int) -> pa.Array:
    rounded = pa.array(np.round(np.asarray(values, dtype=np.float64), digits))
    return pc.if_else(pc.is_finite(rounded), pc.cast(rounded, pa.string()), "null")


def score_parts_json(plan: DayPlan, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
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
    for key, on in flags.items():
        pieces += [f', "{key}": ', np.where(on, "true", "false")]
    return _text(*pieces, "}")


def decision_id(spec: CampaignFile, day: datetime, customer_id: str, slot: int) -> str:
    """``campaign:YYYYMMDD:customer:slot`` (slot 0: a held-out customer's control row)."""
    return f"{spec.campaign.name}:{day:%Y%m%d}:{customer_id}:{slot}"


def decision_ids(spec: CampaignFile, day: datetime, customers: Any, slots: Any) -> np.ndarray:
    """:func:`decision_id` of many decisions at once."""
    prefix = f"{spec.campaign.name}:{day:%Y%m%d}:"
    text = np.asarray(slots).astype(str)
    return _text(prefix, np.asarray(customers, dtype=object).astype(str), ":", text)


def decision_rows(plan: DayPlan, spec: CampaignFile, day: datetime) -> pd.DataFrame:
    """The decisions table rows of a plan: one per filled slot, one per held-out customer who
    was reachable (a control row, no offer)."""
    c = spec.campaign
    ids = plan.inputs.customer_ids
    offers = plan.inputs.offers.offer_id.to_numpy()
    rows, cols = np.nonzero(plan.slates >= 0)
    exp = c.experiment.name if c.experiment else None
    sent = pd.DataFrame(
        {
            "decision_id": decision_ids(spec, day, ids[rows], cols + 1),
            "ts": plan.inputs.send_ts,
            "customer_id": ids[rows],
            "offer_id": offers[plan.slates[rows, cols]],
            "channel": c.channel,
            "slot": cols + 1,
            "policy": f"{c.name}/{plan.allocation.info.get('solver', '')}",
            "score": plan.problem.value[rows, plan.slates[rows, cols]].astype(np.float64),
            "score_parts": score_parts_json(plan, rows, cols),
            "propensity": plan.propensity[rows, cols],
            "experiment": exp,
            "arm": plan.inputs.arm[rows],
        }
    )
    # the control: held-out customers the campaign could have written to, like the treated
    held = np.flatnonzero(plan.inputs.holdout & plan.inputs.eligible.any(axis=1))
    control = pd.DataFrame(
        {
            "decision_id": decision_ids(spec, day, ids[held], np.zeros(len(held), int)),
            "ts": plan.inputs.send_ts,
            "customer_id": ids[held],
            "offer_id": None,
            "channel": c.channel,
            "slot": 0,
            "policy": f"{c.name}/holdout",
            "score": np.nan,
            "score_parts": None,
            "propensity": c.experiment.holdout if c.experiment else np.nan,
            "experiment": exp,
            "arm": "holdout",
        }
    )
    return pd.concat([sent, control], ignore_index=True)


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


def write_outputs(
    plan: DayPlan,
    spec: CampaignFile,
    day: datetime,
    root: Path,
    report: dict[str, Any],
    fmt: str = "csv",
) -> dict[str, Path]:
    """Slates for the e-mail service (CSV or Parquet) and the summary (JSON) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.campaign.name}-{day:%Y-%m-%d}"
    rows, cols = np.nonzero(plan.slates >= 0)
    o = plan.slates[rows, cols]
    offers = plan.inputs.offers
    ids = plan.inputs.customer_ids
    slates = pd.DataFrame(
        {
            "customer_id": ids[rows],
            "channel": spec.campaign.channel,
            "slot": cols + 1,
            "offer_id": offers.offer_id.to_numpy()[o],
            "name": offers.name.to_numpy()[o],
            "brand": offers.brand.to_numpy()[o],
            "decision_id": decision_ids(spec, day, ids[rows], cols + 1),
            "explored": plan.explored[rows, cols],
        }
    )
    paths = {}
    if fmt == "parquet":
        paths["slates"] = root / f"slates-{stem}.parquet"
        slates.to_parquet(paths["slates"], index=False)
    else:
        paths["slates"] = root / f"slates-{stem}.csv"
        pacsv.write_csv(pa.Table.from_pandas(slates, preserve_index=False), paths["slates"])
    paths["summary"] = root / f"summary-{stem}.json"
    paths["summary"].write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return paths
