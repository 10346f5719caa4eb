"""Arrow tables in the canonical shape, and the tables that do not change from day to day.

:func:`canonical` lays columns out as :mod:`nextbest.data.schema` defines them: every contract
column in contract order, typed, null where the simulator has nothing to say; columns beyond
the contract follow (the ingester keeps them as attributes).

The ground truth tables (always Parquet, in ``truth/``):

- ``members``: every member's effect type, taste group, open propensity, activity, price
  sensitivity, novelty taste and taste vector (``taste_0`` ...);
- ``brands`` and ``categories``: their latent vectors (``vec_0`` ...), so that any member's
  affinity for any brand or category can be computed as in :meth:`World.affinity`;
- ``weather``: rain or sun per region and day.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import numpy as np
import pyarrow as pa

from nextbest.data.schema import TABLES
from nextbest.simulate.world import (
    ACQUISITION,
    CATEGORIES,
    EFFECT_TYPES,
    PRODUCTS_PER_SALE,
    REGIONS,
    TASTE_GROUPS,
    World,
)

__all__ = [
    "TS",
    "arrow_schema",
    "brands_truth",
    "canonical",
    "categories_truth",
    "customers",
    "members_truth",
    "offers",
    "products",
    "weather",
]

TS = pa.timestamp("us", tz="UTC")
_ARROW = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": TS,
    "json": pa.string(),
}
Column: TypeAlias = pa.Array | pa.ChunkedArray | np.ndarray


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of a canonical table (see :mod:`nextbest.data.schema`)."""
    return pa.schema([(c.name, _ARROW[c.kind]) for c in TABLES[table].columns])


def canonical(table: str, n: int, columns: Mapping[str, Column]) -> pa.Table:
    """``n`` rows of ``table``: given columns cast to the contract's types, others null."""
    schema = arrow_schema(table)
    arrays: dict[str, pa.Array | pa.ChunkedArray] = {}
    for f in schema:
        value = columns.get(f.name)
        if value is None:
            arrays[f.name] = pa.nulls(n, f.type)
        elif isinstance(value, pa.Array | pa.ChunkedArray):
            arrays[f.name] = value.cast(f.type) if value.type != f.type else value
        else:
            arrays[f.name] = pa.array(value, f.type)
    for name, value in columns.items():
        if name not in arrays:
            arrays[name] = (
                value if isinstance(value, pa.Array | pa.ChunkedArray) else pa.array(value)
            )
    return pa.table(arrays)


def _nullable(values: np.ndarray, keep: np.ndarray) -> pa.Array:
    """A string array of ``values`` where ``keep``, null elsewhere."""
    return pa.array(values, pa.string(), mask=~keep)


def customers(w: World) -> pa.Table:
    has_referrer = w.referred_by >= 0
    return canonical(
        "customers",
        w.n,
        {
            "customer_id": w.customer_ids(),
            "signup_ts": w.signup_ts.astype("datetime64[us]"),
            "region": np.asarray(REGIONS)[w.region],
            "birth_year": w.birth_year,
            "gender": w.gender,
            "acquisition_channel": np.asarray(ACQUISITION)[w.acquisition],
            "referred_by": _nullable(w.customer_ids(np.maximum(w.referred_by, 0)), has_referrer),
            **{f"consent_{k}": v for k, v in w.consent.items()},
        },
    )


def offers(w: World) -> pa.Table:
    s = np.arange(len(w.sale_day))
    start = np.datetime64(w.config.start_date, "us") + (w.sale_day * 24 + 12).astype(
        "timedelta64[h]"
    )
    brand = w.brand_names()[w.sale_brand]
    category = np.asarray(CATEGORIES)[w.sale_category]
    new = w.brand_new[w.sale_brand]
    return canonical(
        "offers",
        len(s),
        {
            "offer_id": w.sale_ids(s),
            "kind": np.full(len(s), "sale"),
            "name": np.char.add(np.char.add(brand, " "), category),
            "brand": brand,
            "category": category,
            "channels": np.full(len(s), "email|web|app"),
            "start_ts": start,
            "end_ts": start + np.timedelta64(24 * w.config.sale_days, "h"),
            "unit_cost": np.full(len(s), 0.002),
            "margin": w.sale_margin,
            "discount": w.sale_discount,
            "capacity": w.sale_capacity,
            "tags": _nullable(np.full(len(s), "new_designer"), new),
        },
    )


def products(w: World) -> pa.Table:
    s = np.repeat(np.arange(len(w.sale_day)), PRODUCTS_PER_SALE)
    k = np.tile(np.arange(PRODUCTS_PER_SALE), len(w.sale_day))
    category = np.asarray(CATEGORIES)[w.sale_category[s]]
    return canonical(
        "products",
        len(s),
        {
            "product_id": w.product_ids(s, k),
            "name": np.char.add(np.char.add(category, " #"), k.astype(str)),
            "brand": w.brand_names()[w.sale_brand[s]],
            "category": category,
            "price": w.product_price.ravel(),
            "cost": w.product_cost.ravel(),
        },
    )


def members_truth(w: World) -> pa.Table:
    cols: dict[str, pa.Array | np.ndarray] = {
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


def brands_truth(w: World) -> pa.Table:
    debut = np.datetime64(w.config.start_date, "D") + w.brand_debut
    cols: dict[str, pa.Array | np.ndarray] = {
        "brand": pa.array(w.brand_names(), pa.string()),
        "new_designer": w.brand_new,
        "debut": pa.array(debut, pa.date32()),
        "popularity": w.brand_popularity,
    }
    for j in range(w.brand_vec.shape[1]):
        cols[f"vec_{j}"] = w.brand_vec[:, j]
    return pa.table(cols)


def categories_truth(w: World) -> pa.Table:
    cols: dict[str, pa.Array | np.ndarray] = {"category": pa.array(CATEGORIES, pa.string())}
    for j in range(w.category_vec.shape[1]):
        cols[f"vec_{j}"] = w.category_vec[:, j]
    return pa.table(cols)


def weather(w: World) -> pa.Table:
    days, regions = w.rain.shape
    dates = np.datetime64(w.config.start_date, "D") + np.arange(days)
    return pa.table(
        {
            "date": pa.array(np.repeat(dates, regions), pa.date32()),
            "region": pa.array(np.tile(np.asarray(REGIONS), days), pa.string()),
            "weather": pa.array(np.where(w.rain.ravel(), "rain", "sun"), pa.string()),
            "rain": pa.array(w.rain.ravel(), pa.bool_()),
        }
    )
