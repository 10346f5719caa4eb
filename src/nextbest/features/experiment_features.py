"""Rows for uplift models: who was assigned to which arm of an experiment, and what followed.

One row per customer and assignment time in an experiment logged in ``decisions`` (a slate
of several offers is one assignment), with

- ``arm``: the arm assigned; the control arm is the one whose decisions show no offer
  (:func:`control_arm`);
- the outcome over ``window_days`` after the assignment: for ``visit``, ``purchase`` and the
  other event types, 1 when the customer had such an event; for ``revenue``, the sum of her
  purchase amounts;
- features known at assignment: the customer 360 as of the assignment's day (00:00 UTC), the
  demographics, and the customer's own ``attributes`` (a dataset's extra columns, such as
  Hillstrom's recency, history and channel), numeric where every value reads as a number.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import ibis
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.errors import DataError
from nextbest.features.customer360 import customer_features
from nextbest.progress import NullReporter, Reporter

__all__ = ["OUTCOMES", "control_arm", "experiment_frame", "experiments"]

OUTCOMES = ("visit", "purchase", "revenue", "email_click", "store_visit")


def experiments(warehouse: Warehouse) -> pd.DataFrame:
    """Experiments logged in ``decisions``: rows, customers and arms of each, largest first."""
    dec = warehouse.table("decisions")
    dec = dec.filter(dec.experiment.notnull(), dec.arm.notnull())
    out = dec.group_by("experiment").aggregate(
        decisions=dec.count(), customers=dec.customer_id.nunique(), arms=dec.arm.nunique()
    )
    return out.order_by([ibis.desc("decisions"), "experiment"]).to_pandas()


def control_arm(warehouse: Warehouse, experiment: str) -> str:
    """The arm of ``experiment`` whose decisions show no offer (no contact)."""
    dec = warehouse.table("decisions")
    dec = dec.filter(dec.experiment == experiment)
    arms = dec.group_by("arm").aggregate(shown=dec.offer_id.count(), n=dec.count()).to_pandas()
    if arms.empty:
        known = ", ".join(experiments(warehouse).experiment) or "none"
        raise DataError(f"no decisions in experiment {experiment!r}; experiments: {known}")
    controls = sorted(arms.loc[arms.shown == 0, "arm"].dropna())
    if len(controls) != 1:
        raise DataError(
            f"experiment {experiment!r}: expected exactly one control arm (decisions with no "
            f"offer), got {controls or 'none'} among arms {sorted(arms.arm.dropna())}"
        )
    return str(controls[0])


def _attributes(values: pd.Series) -> pd.DataFrame:
    parsed = [json.loads(v) if isinstance(v, str) and v else {} for v in values]
    frame = pd.DataFrame.from_records(parsed, index=values.index)
    for col in frame.columns:
        numbers = pd.to_numeric(frame[col], errors="coerce")
        if numbers.notna().sum() == frame[col].notna().sum():
            frame[col] = numbers
        else:
            frame[col] = frame[col].astype("string")
    return frame.add_prefix("attr_")


def experiment_frame(
    warehouse: Warehouse,
    experiment: str,
    *,
    outcome: str = "purchase",
    window_days: float = 14,
    start: datetime | None = None,
    reporter: Reporter | None = None,
) -> pd.DataFrame:
    """Assignments of ``experiment`` (from ``start`` on, up to the last event) with arm, outcome
    (``y``) and features."""
    if outcome not in OUTCOMES:
        raise DataError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
    reporter = reporter or NullReporter()
    dec = warehouse.table("decisions")
    dec = dec.filter(dec.experiment == experiment, dec.arm.notnull())
    if start is not None:
        dec = dec.filter(dec.ts >= ibis.literal(start, type="timestamp('UTC')"))
    # only assignments already lived: decisions logged for a day with no event yet (a batch
    # decided for tomorrow) have no outcome to learn from, not a negative one
    last = warehouse.table("events").ts.max().execute()
    if last is not None and not pd.isna(last):
        dec = dec.filter(dec.ts <= ibis.literal(pd.Timestamp(last), type="timestamp('UTC')"))
    assigned = dec.group_by(["customer_id", "ts"]).aggregate(arm=dec.arm.min())
    ev = warehouse.table("events")
    kind = "purchase" if outcome == "revenue" else outcome
    ev = ev.filter(ev.type == kind, ev.customer_id.notnull())
    window = ibis.interval(seconds=int(window_days * 86_400))
    joined = assigned.left_join(
        ev,
        (assigned.customer_id == ev.customer_id)
        & (ev.ts >= assigned.ts)
        & (ev.ts <= assigned.ts + window),
    )
    value = joined.amount.fill_null(0) if outcome == "revenue" else joined.event_id.notnull()
    agg = (
        joined.group_by([joined.customer_id, joined.ts])
        .aggregate(y=value.cast("float64").sum() if outcome == "revenue" else value.any())
        .to_pandas()
    )
    if agg.empty:
        raise DataError(f"no assignments in experiment {experiment!r}")
    agg["y"] = agg["y"].astype(float)
    agg = agg.merge(
        assigned.to_pandas(), on=["customer_id", "ts"], how="left", validate="one_to_one"
    )
    agg["day"] = agg.ts.dt.floor("D")
    frames = []
    days = sorted(agg.day.unique())
    reporter.start(len(days), f"Experiment {experiment}: features")
    customers = warehouse.table("customers")
    info = customers.select(
        "customer_id", "region", "gender", "acquisition_channel", "birth_year", "attributes"
    ).to_pandas()
    for day in days:
        as_of = pd.Timestamp(day).to_pydatetime().replace(tzinfo=UTC)
        rows = agg[agg.day == day]
        features = customer_features(warehouse, as_of).to_pandas()
        frames.append(rows.merge(features, on="customer_id", how="left"))
        reporter.advance(1)
    reporter.finish()
    out = pd.concat(frames, ignore_index=True).merge(info, on="customer_id", how="left")
    out["age"] = out.ts.dt.year - pd.to_numeric(out.pop("birth_year"), errors="coerce")
    out = pd.concat([out.drop(columns="attributes"), _attributes(out["attributes"])], axis=1)
    keep = ("customer_id", "ts", "day", "arm", "y")
    constant = [c for c in out.columns if c not in keep and out[c].nunique(dropna=False) <= 1]
    return out.drop(columns=constant).sort_values(["ts", "customer_id"], ignore_index=True)
