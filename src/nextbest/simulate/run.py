"""``simulate``: run the environment day by day under a policy and write the canonical tables.

Writes ``customers``, ``products``, ``offers``, ``decisions`` and ``events`` to ``out_dir``
(Parquet or CSV, streamed day by day so memory stays flat), and the ground truth to
``out_dir/truth``: ``members`` (latent traits and effect type of every member), ``decisions``
(the true open and click probability behind every decision), ``weather`` and ``summary.json``.

Measured on a 20,000-member, 30-day run with the random policy (seed 7; see
``tests/simulate``): open rate 19.1% of sends, click rate 2.1% of sends, click-to-open 11.0%,
unsubscribes 0.22% per send, visit conversion 2.7%.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nextbest.progress import NullReporter, Reporter
from nextbest.simulate.config import SimConfig, SimSummary
from nextbest.simulate.environment import RetailEnvironment
from nextbest.simulate.policies import POLICIES
from nextbest.simulate.world import (
    ACQUISITION,
    CATEGORIES,
    EFFECT_TYPES,
    REGIONS,
    TASTE_GROUPS,
    World,
    padded,
)

__all__ = ["simulate"]

log = logging.getLogger(__name__)
_TS = pa.timestamp("us", tz="UTC")


class _Writer:
    """Appends Arrow tables to one Parquet or CSV file per table."""

    def __init__(self, folder: Path, file_format: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.format = folder, file_format
        self.open: dict[str, pq.ParquetWriter | pacsv.CSVWriter] = {}
        self.rows: dict[str, int] = {}

    def write(self, name: str, table: pa.Table) -> None:
        if self.format == "csv":
            table = _csv_ready(table)
        if name not in self.open:
            path = self.folder / f"{name}.{self.format}"
            self.open[name] = (
                pq.ParquetWriter(path, table.schema, compression="zstd")
                if self.format == "parquet"
                else pacsv.CSVWriter(path, table.schema)
            )
            self.rows[name] = 0
        self.open[name].write_table(table)
        self.rows[name] += table.num_rows

    def close(self) -> None:
        for w in self.open.values():
            w.close()


def _csv_ready(table: pa.Table) -> pa.Table:
    """Timestamps as ISO-8601 with 'Z' (Arrow's %S carries the microseconds)."""
    import pyarrow.compute as pc

    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            text = pc.strftime(table.column(i), format="%Y-%m-%dT%H:%M:%SZ")
            table = table.set_column(i, f.name, text)
    return table


def simulate(config: SimConfig, out_dir: Path, *, reporter: Reporter | None = None) -> SimSummary:
    """Simulate ``config.days`` days of the retailer; see the module docstring."""
    reporter = reporter or NullReporter()
    env = RetailEnvironment(config)
    world = env.world
    policy = POLICIES[config.policy]()
    data = _Writer(out_dir, config.file_format)
    truth = _Writer(out_dir / "truth", "parquet")
    data.write("customers", _customers(world))
    data.write("offers", _offers(world))
    data.write("products", _products(world))
    next_decision, next_event = 0, 0
    totals = {"sends": 0, "p_open": 0.0, "p_click": 0.0}
    reporter.start(config.days, "simulating days")
    for day in range(config.days):
        rng = np.random.default_rng([config.seed, 2, day])
        members = env.eligible(day)
        sales = env.open_sales(day)
        picks, scores, propensity = policy.choose(
            world, day, members, sales, config.slots_per_email, rng
        )
        k = picks.shape[1]
        n = picks.size
        ids = padded("D", np.arange(next_decision, next_decision + n), 10)
        next_decision += n
        ts = np.datetime64(world.day_start(day).replace(tzinfo=None), "us") + np.timedelta64(
            12, "h"
        )
        decisions = pa.table(
            {
                "decision_id": pa.array(ids, pa.string()),
                "ts": pa.array(np.full(n, ts), _TS),
                "customer_id": pa.array(np.repeat(world.customer_ids(members), k), pa.string()),
                "offer_id": pa.array(world.sale_ids(picks.ravel()), pa.string()),
                "channel": pa.array(np.full(n, "email"), pa.string()),
                "slot": pa.array(np.tile(np.arange(1, k + 1), len(members)), pa.int64()),
                "policy": pa.array(np.full(n, policy.name), pa.string()),
                "score": pa.array(scores.ravel(), pa.float64()),
                "propensity": pa.array(propensity.ravel(), pa.float64()),
            }
        )
        outcome = env.step(day, decisions)
        events = outcome.events
        event_ids = padded("E", np.arange(next_event, next_event + events.num_rows), 11)
        next_event += events.num_rows
        data.write("decisions", decisions)
        data.write("events", events.add_column(0, "event_id", pa.array(event_ids, pa.string())))
        truth.write("decisions", outcome.truth)
        totals["sends"] += len(members)
        totals["p_open"] += float(np.sum(outcome.truth.column("p_open").to_numpy()) / max(k, 1))
        totals["p_click"] += float(np.sum(outcome.truth.column("p_click").to_numpy()))
        reporter.advance(1)
    reporter.finish()
    truth.write("members", _members_truth(world))
    truth.write("weather", _weather(world))
    data.close()
    truth.close()
    sends = max(totals["sends"], 1)
    rates = {
        "expected_open_rate": totals["p_open"] / sends,
        "expected_click_rate": totals["p_click"] / sends,
    }
    summary = SimSummary(str(out_dir), dict(data.rows), rates)
    (out_dir / "truth" / "summary.json").write_text(
        json.dumps({"config": config.model_dump(mode="json"), **summary.to_dict()}, indent=2)
    )
    log.info("simulated %s days into %s: %s", config.days, out_dir, data.rows)
    return summary


def _customers(w: World) -> pa.Table:
    referred = np.full(w.n, None, dtype=object)
    has = w.referred_by >= 0
    referred[has] = w.customer_ids(w.referred_by[has])
    return pa.table(
        {
            "customer_id": pa.array(w.customer_ids(), pa.string()),
            "signup_ts": pa.array(w.signup_ts.astype("datetime64[us]"), _TS),
            "region": pa.array(np.asarray(REGIONS)[w.region], pa.string()),
            "birth_year": pa.array(w.birth_year, pa.int64()),
            "gender": pa.array(w.gender, pa.string()),
            "acquisition_channel": pa.array(np.asarray(ACQUISITION)[w.acquisition], pa.string()),
            "referred_by": pa.array(referred, pa.string()),
            **{f"consent_{k}": pa.array(v, pa.bool_()) for k, v in w.consent.items()},
        }
    )


def _brand_names(w: World) -> np.ndarray:
    idx = np.arange(len(w.brand_new))
    return np.where(
        w.brand_new,
        padded("Atelier ", idx, 3),
        padded("Maison ", idx, 3),
    )


def _offers(w: World) -> pa.Table:
    s = np.arange(len(w.sale_day))
    start = np.datetime64(w.config.start_date, "us") + (w.sale_day * 24 + 12).astype(
        "timedelta64[h]"
    )
    end = start + np.timedelta64(24 * w.config.sale_days, "h")
    brand = _brand_names(w)[w.sale_brand]
    category = np.asarray(CATEGORIES)[w.sale_category]
    new = w.brand_new[w.sale_brand]
    return pa.table(
        {
            "offer_id": pa.array(w.sale_ids(s), pa.string()),
            "kind": pa.array(np.full(len(s), "sale"), pa.string()),
            "name": pa.array(np.char.add(np.char.add(brand, " "), category), pa.string()),
            "brand": pa.array(brand, pa.string()),
            "category": pa.array(category, pa.string()),
            "channels": pa.array(np.full(len(s), "email|web|app"), pa.string()),
            "start_ts": pa.array(start, _TS),
            "end_ts": pa.array(end, _TS),
            "unit_cost": pa.array(np.full(len(s), 0.002), pa.float64()),
            "margin": pa.array(w.sale_margin, pa.float64()),
            "discount": pa.array(w.sale_discount, pa.float64()),
            "capacity": pa.array(w.sale_capacity, pa.int64()),
            "tags": pa.array(["new_designer" if x else None for x in new], pa.string()),
        }
    )


def _products(w: World) -> pa.Table:
    rng = np.random.default_rng([w.config.seed, 3])
    s = np.repeat(np.arange(len(w.sale_day)), 4)
    k = np.tile(np.arange(4), len(w.sale_day))
    price = np.round(w.sale_price[s] * rng.uniform(0.6, 1.4, len(s)), 2)
    sold_at = price * (1 - w.sale_discount[s])
    cost = np.round(np.maximum(0.5, sold_at - w.sale_margin[s]), 2)
    sale_ids = w.sale_ids(s)
    category = np.asarray(CATEGORIES)[w.sale_category[s]]
    return pa.table(
        {
            "product_id": pa.array(
                np.char.add(np.char.add("P", sale_ids), np.char.add("-", k.astype(str))),
                pa.string(),
            ),
            "name": pa.array(np.char.add(np.char.add(category, " #"), k.astype(str)), pa.string()),
            "brand": pa.array(_brand_names(w)[w.sale_brand[s]], pa.string()),
            "category": pa.array(category, pa.string()),
            "price": pa.array(price, pa.float64()),
            "cost": pa.array(cost, pa.float64()),
        }
    )


def _members_truth(w: World) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "customer_id": pa.array(w.customer_ids(), pa.string()),
        "effect_type": pa.array(np.asarray(EFFECT_TYPES)[w.effect_type], pa.string()),
        "taste_group": pa.array(np.asarray(TASTE_GROUPS)[w.taste_group], pa.string()),
        "open_base": w.open_base,
        "activity": w.activity,
        "price_sensitivity": w.price_sensitivity,
        "novelty": w.novelty,
    }
    for j in range(w.taste.shape[1]):
        cols[f"taste_{j}"] = w.taste[:, j]
    return pa.table(cols)


def _weather(w: World) -> pa.Table:
    days, regions = w.rain.shape
    dates = np.datetime64(w.config.start_date, "D") + np.arange(days)
    return pa.table(
        {
            "date": pa.array(np.repeat(dates, regions)),
            "region": pa.array(np.tile(np.asarray(REGIONS), days), pa.string()),
            "rain": pa.array(w.rain.ravel(), pa.bool_()),
        }
    )
