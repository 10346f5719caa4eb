"""Category and brand shares as of a date: what share of each customer's purchase lines went where.

A customer's share of a category (or brand) is the number of their purchase lines in it over
the ``days`` (365 by default) before ``as_of``, divided by their purchase lines with a known
category (brand) in that window. A line's category and brand come from its product, or from
its offer where the line has no product (as the customer 360's ``top_category``); lines with
neither are left out. Point-in-time correct like :mod:`nextbest.features.customer360`: only
events strictly before ``as_of``, and only customers who signed up before it.

Two forms:

- :func:`preference_shares`, long: one row per (customer, value) bought, columns
  ``customer_id``, ``level``, ``value``, ``lines``, ``share``. Brands can number in the
  thousands, so this is the form to store and query.
- :func:`share_columns`, wide: one row per customer of the 360, one column
  ``share_<level>_<value>`` per value (categories are few, so this is the form for modelling).
  Customers with lines have 0.0 where they bought nothing; customers without lines have nulls
  (a share of nothing is undefined, as ``top_category_share``).

These columns are not part of :func:`~nextbest.features.customer_features`' default output,
whose columns the propensity and churn models take whole; a segmentation opts in by naming
``share_category_<name>`` (or ``share_brand_<name>``) columns in its feature list.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import ibis
import ibis.expr.types as ir

from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError

__all__ = ["SHARE_LEVELS", "preference_shares", "purchase_lines", "share_columns"]

SHARE_LEVELS = ("category", "brand")
_DAY = 86_400.0


def _check_level(level: str) -> None:
    if level not in SHARE_LEVELS:
        raise ConfigError(f"level: expected one of {', '.join(SHARE_LEVELS)}, got {level!r}")


def _members(warehouse: Warehouse, as_of: datetime) -> ir.Table:
    customers = warehouse.table("customers")
    cut = ibis.literal(as_of, type="timestamp('UTC')")
    return customers.filter(customers.signup_ts.isnull() | (customers.signup_ts < cut))


def purchase_lines(warehouse: Warehouse, bought: ir.Table, level: str) -> ir.Table:
    """``customer_id`` and the ``level`` value of each line of ``bought`` (events).

    The value is the product's, else the offer's; lines with neither are left out.
    """
    _check_level(level)
    products = warehouse.table("products")
    offers = warehouse.table("offers")
    lines = bought.left_join(products, bought.product_id == products.product_id).left_join(
        offers, bought.offer_id == offers.offer_id
    )
    value = ibis.coalesce(lines[level], lines[f"{level}_right"])
    return lines.select(customer_id=lines.customer_id, value=value).filter(
        lambda x: x.value.notnull()
    )


def _bought(warehouse: Warehouse, as_of: datetime, days: int) -> ir.Table:
    """Purchase events of the ``days`` before ``as_of`` (the 360's ``within(days)`` window)."""
    ev = warehouse.table("events")
    cut = ibis.literal(as_of, type="timestamp('UTC')")
    age = (ibis.literal(as_of.timestamp()) - ev.ts.epoch_seconds()) / _DAY
    return ev.filter(ev.ts < cut, ev.customer_id.notnull(), ev.type == "purchase", age <= days)


def preference_shares(
    warehouse: Warehouse, as_of: datetime, level: str = "category", days: int = 365
) -> ir.Table:
    """Each customer's share of purchase lines per ``level`` value, as a long table.

    Columns ``customer_id``, ``level`` (the argument), ``value``, ``lines`` and ``share``
    (``lines`` over the customer's lines with a known value; a customer's shares sum to 1).
    Ordered by customer, then by share (largest first), then value.
    """
    _check_level(level)
    if days <= 0:
        raise ConfigError(f"days: expected a window of at least 1 day, got {days}")
    lines = purchase_lines(warehouse, _bought(warehouse, as_of, days), level)
    lines = lines.semi_join(_members(warehouse, as_of), "customer_id")
    counts = lines.group_by(["customer_id", "value"]).aggregate(lines=lines.count())
    total = counts.lines.sum().over(group_by="customer_id")
    return counts.select(
        "customer_id",
        level=ibis.literal(level),
        value=counts.value.cast("string"),
        lines=counts.lines,
        share=counts.lines.cast("float64") / total,
    ).order_by(["customer_id", ibis.desc("share"), "value"])


def share_columns(
    warehouse: Warehouse,
    as_of: datetime,
    level: str = "category",
    values: Sequence[str] | None = None,
    days: int = 365,
) -> ir.Table:
    """Shares as one column per value: ``customer_id``, ``share_<level>_<value>`` ...

    One row per customer of the 360 as of ``as_of`` (signed up before it), ordered by
    ``customer_id``. ``values``: the values to make columns for (default: every value bought by
    anyone in the window, sorted); a value nobody bought gives a column of 0.0 for buyers.
    """
    long = preference_shares(warehouse, as_of, level, days)
    if values is None:
        found = long.select("value").distinct().order_by("value").to_pyarrow()
        values = [str(v) for v in found["value"].to_pylist()]
    columns = {
        f"share_{level}_{v}": ibis.cases((long.value == v, long.share), else_=0.0).sum()
        for v in values
    }
    wide = long.group_by("customer_id").aggregate(_bought=long.lines.sum(), **columns)
    members = _members(warehouse, as_of).select("customer_id")
    out = members.left_join(wide, "customer_id").drop("customer_id_right")
    return out.select(
        "customer_id", **{name: out[name].cast("float64") for name in columns}
    ).order_by("customer_id")
