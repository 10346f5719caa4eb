"""The data contract: the canonical tables of the warehouse and the rules each column obeys.

Every row that enters the warehouse is checked against these contracts (see
:mod:`nextbest.data.validate`). Columns a source has beyond the canonical ones are kept, as a
JSON object, in the table's ``attributes`` column: nothing a retailer sends is thrown away.

The tables, in load order (a table may refer only to tables before it):

- ``customers``: one row per member, with consent per channel.
- ``products``: the catalogue.
- ``offers``: sales, products, discounts and content that can be shown.
- ``decisions``: what was shown to whom, with the probability under the policy.
- ``events``: everything that happened, linked to decisions by ``decision_id``.

Two bookkeeping tables sit beside them: ``quarantine`` (every rejected row, with its file, line,
field, what was expected and what was received) and ``loads`` (one row per file load).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import ibis.expr.datatypes as dt

__all__ = [
    "CHANNELS",
    "EVENT_TYPES",
    "LOAD_ORDER",
    "OFFER_KINDS",
    "TABLES",
    "Column",
    "Kind",
    "TableContract",
    "contract",
]

Kind = Literal["string", "int", "float", "bool", "timestamp", "json"]

EVENT_TYPES: tuple[str, ...] = (
    "visit",
    "view",
    "click",
    "add_to_cart",
    "purchase",
    "return",
    "email_sent",
    "email_open",
    "email_click",
    "push_sent",
    "push_open",
    "sms_sent",
    "store_visit",
    "referral",
    "waitlist",
    "unsubscribe",
    "coupon_redemption",
)
"""Known event types. ``click`` is a click outside e-mail (a web or app recommendation)."""

OFFER_KINDS: tuple[str, ...] = ("sale", "product", "discount", "content")

CHANNELS: tuple[str, ...] = ("email", "sms", "push", "web", "app", "store", "phone", "mail")

_IBIS_TYPES: dict[str, dt.DataType] = {
    "string": dt.String(),
    "int": dt.Int64(),
    "float": dt.Float64(),
    "bool": dt.Boolean(),
    "timestamp": dt.Timestamp(timezone="UTC"),
    "json": dt.String(),
}


@dataclass(frozen=True)
class Column:
    """One column of a canonical table and the rule its values obey.

    ``ref`` names another table whose key the value must match (``"customers"``);
    ``minimum``/``maximum`` bound numbers; ``enum`` lists the allowed strings; ``multi`` allows
    several enum values separated by ``|`` or ``,`` (an offer's channels).
    """

    name: str
    kind: Kind = "string"
    required: bool = False
    enum: tuple[str, ...] | None = None
    multi: bool = False
    ref: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""

    @property
    def ibis_type(self) -> dt.DataType:
        return _IBIS_TYPES[self.kind]

    def expectation(self) -> str:
        """The rule in words, as error messages quote it."""
        if self.enum is not None:
            listed = ", ".join(self.enum)
            return f"one of {listed}" + (" (several separated by '|')" if self.multi else "")
        words = {
            "string": "a text value",
            "int": "a whole number",
            "float": "a number",
            "bool": "true or false (also 1/0, yes/no)",
            "timestamp": "an ISO-8601 timestamp with a time zone, e.g. 2024-03-01T12:00:00Z",
            "json": "a JSON object",
        }[self.kind]
        if self.minimum is not None and self.maximum is not None:
            words += f" between {self.minimum:g} and {self.maximum:g}"
        elif self.minimum is not None:
            words += f" >= {self.minimum:g}"
        return words


@dataclass(frozen=True)
class TableContract:
    """A canonical table: its key and its columns (``attributes`` is always the last one)."""

    name: str
    key: str
    columns: tuple[Column, ...]
    doc: str = ""
    refs: tuple[str, ...] = field(default=())

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def ibis_schema(self) -> dict[str, dt.DataType]:
        return {c.name: c.ibis_type for c in self.columns}


_ATTRS = Column("attributes", "json", doc="source columns beyond the canonical ones, as JSON")

TABLES: dict[str, TableContract] = {
    t.name: t
    for t in (
        TableContract(
            "customers",
            key="customer_id",
            doc="members, with consent per channel",
            columns=(
                Column("customer_id", required=True),
                Column("signup_ts", "timestamp"),
                Column("region"),
                Column("birth_year", "int", minimum=1900, maximum=2030),
                Column("gender"),
                Column("acquisition_channel"),
                Column("referred_by", doc="customer_id of the referrer"),
                Column("consent_email", "bool"),
                Column("consent_sms", "bool"),
                Column("consent_push", "bool"),
                Column("consent_profiling", "bool"),
                _ATTRS,
            ),
        ),
        TableContract(
            "products",
            key="product_id",
            doc="the catalogue",
            columns=(
                Column("product_id", required=True),
                Column("name"),
                Column("brand"),
                Column("category"),
                Column("price", "float", minimum=0),
                Column("cost", "float", minimum=0),
                _ATTRS,
            ),
        ),
        TableContract(
            "offers",
            key="offer_id",
            doc="sales, products, discounts and content that can be shown",
            columns=(
                Column("offer_id", required=True),
                Column("kind", required=True, enum=OFFER_KINDS),
                Column("name"),
                Column("brand"),
                Column("category"),
                Column("channels", enum=CHANNELS, multi=True),
                Column("start_ts", "timestamp"),
                Column("end_ts", "timestamp"),
                Column("unit_cost", "float", minimum=0),
                Column("margin", "float", minimum=0),
                Column("discount", "float", minimum=0, maximum=1),
                Column("capacity", "int", minimum=0),
                Column("eligibility"),
                Column("tags", doc="labels separated by '|', e.g. new_designer"),
                _ATTRS,
            ),
        ),
        TableContract(
            "decisions",
            key="decision_id",
            doc="what was shown to whom, in which slot, with its probability under the policy",
            refs=("customers", "offers"),
            columns=(
                Column("decision_id", required=True),
                Column("ts", "timestamp", required=True),
                Column("customer_id", required=True, ref="customers"),
                Column("offer_id", ref="offers", doc="empty for a control (no contact)"),
                Column("channel", enum=CHANNELS),
                Column("slot", "int", minimum=0),
                Column("policy"),
                Column("score", "float"),
                Column("score_parts", "json"),
                Column("propensity", "float", minimum=0, maximum=1),
                Column("experiment"),
                Column("arm"),
                _ATTRS,
            ),
        ),
        TableContract(
            "events",
            key="event_id",
            doc="everything that happened: sends, opens, clicks, visits, carts, purchases",
            refs=("customers", "products", "offers", "decisions"),
            columns=(
                Column("event_id", required=True),
                Column("customer_id", ref="customers", doc="empty for an anonymous receipt"),
                Column("ts", "timestamp", required=True),
                Column("type", required=True, enum=EVENT_TYPES),
                Column("product_id", ref="products"),
                Column("offer_id", ref="offers"),
                Column("channel", enum=CHANNELS),
                Column("quantity", "int"),
                Column("amount", "float"),
                Column("decision_id", ref="decisions"),
                Column("basket_id", doc="groups the lines of one receipt"),
                _ATTRS,
            ),
        ),
    )
}

LOAD_ORDER: tuple[str, ...] = ("customers", "products", "offers", "decisions", "events")
"""Tables in the order they are loaded, so that every reference points backwards."""


def contract(table: str) -> TableContract:
    """The contract of a canonical table, or a clear error naming the known ones."""
    from nextbest.errors import DataError

    try:
        return TABLES[table]
    except KeyError:
        known = ", ".join(LOAD_ORDER)
        raise DataError(f"unknown table {table!r}: expected one of {known}") from None
