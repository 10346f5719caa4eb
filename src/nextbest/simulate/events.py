"""One day's events, collected as numeric columns and laid out as canonical ``events`` rows.

The environment adds events kind by kind (member indices, timestamps in microseconds, sale and
product indices, decision rows); :meth:`DayEvents.table` sorts them by time and member and
turns the indices into the ids of the canonical tables, numbering events ``E00000000000`` on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nextbest.data.schema import CHANNELS, EVENT_TYPES
from nextbest.simulate.tables import canonical
from nextbest.simulate.world import World, padded

__all__ = ["DayEvents"]

_TYPES = pa.array(EVENT_TYPES, pa.string())
_CHANNELS = pa.array(CHANNELS, pa.string())
_INT_FILLS = {"sale": -1, "product": -1, "decision": -1, "quantity": -1, "channel": -1}


def channel_code(name: str) -> int:
    return CHANNELS.index(name)


@dataclass
class DayEvents:
    """Columns of one day's events under construction, one dict of arrays per kind."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    attributes: list[pa.Array] = field(default_factory=list)

    def add(
        self,
        kind: str,
        member: np.ndarray,
        ts: np.ndarray,
        *,
        channel: str | np.ndarray | None = None,
        attributes: pa.Array | None = None,
        **cols: np.ndarray,
    ) -> None:
        """Events of one ``kind``; ``cols``: ``sale``, ``product``, ``decision`` (row of the
        day's decisions), ``quantity``, ``amount``; ``channel`` a name or an array of codes."""
        n = len(member)
        if not n:
            return
        part: dict[str, np.ndarray] = {
            "type": np.full(n, EVENT_TYPES.index(kind), dtype=np.int16),
            "member": np.asarray(member, dtype=np.int64),
            "ts": np.asarray(ts, dtype=np.int64),
        }
        if isinstance(channel, str):
            part["channel"] = np.full(n, channel_code(channel), dtype=np.int64)
        elif channel is not None:
            part["channel"] = np.asarray(channel, dtype=np.int64)
        for name, value in cols.items():
            part[name] = np.asarray(value)
        self.parts.append(part)
        self.attributes.append(pa.nulls(n, pa.string()) if attributes is None else attributes)

    def __len__(self) -> int:
        return sum(len(p["member"]) for p in self.parts)

    def _column(self, name: str) -> np.ndarray:
        if name == "amount":
            arrays = [p.get(name, np.full(len(p["member"]), np.nan)) for p in self.parts]
            return np.concatenate(arrays).astype(np.float64) if arrays else np.empty(0)
        fill = _INT_FILLS.get(name, 0)
        arrays = [p.get(name, np.full(len(p["member"]), fill)) for p in self.parts]
        return np.concatenate(arrays).astype(np.int64) if arrays else np.empty(0, np.int64)

    def table(self, world: World, decision_ids: pa.Array, first_event: int) -> pa.Table:
        """The canonical events table, in time order, with ids from ``first_event`` on."""
        member, ts = self._column("member"), self._column("ts")
        order = np.lexsort((member, ts))
        member, ts = member[order], ts[order]
        n = len(order)
        c = {name: self._column(name)[order] for name in ("type", "sale", "product", "channel")}
        decision = self._column("decision")[order]
        quantity = self._column("quantity")[order]
        amount = self._column("amount")[order]
        has_sale = c["sale"] >= 0
        has_product = has_sale & (c["product"] >= 0)
        sale = np.maximum(c["sale"], 0)
        attributes = (
            pa.concat_arrays(self.attributes).take(pa.array(order))
            if self.attributes
            else pa.nulls(0, pa.string())
        )
        return canonical(
            "events",
            n,
            {
                "event_id": padded("E", np.arange(first_event, first_event + n), 11),
                "customer_id": world.customer_ids(member),
                "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "type": pc.take(_TYPES, pa.array(c["type"])),
                "product_id": pa.array(
                    world.product_ids(sale, np.maximum(c["product"], 0)),
                    pa.string(),
                    mask=~has_product,
                ),
                "offer_id": pa.array(world.sale_ids(sale), pa.string(), mask=~has_sale),
                "channel": pc.take(_CHANNELS, pa.array(c["channel"], mask=c["channel"] < 0)),
                "quantity": pa.array(quantity, pa.int64(), mask=quantity < 0),
                "amount": pa.array(amount, pa.float64(), mask=np.isnan(amount)),
                "decision_id": pc.take(decision_ids, pa.array(decision, mask=decision < 0)),
                "attributes": attributes,
            },
        )
