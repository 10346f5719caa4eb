"""Read one day's decisions from any policy: check them, and lay them out as canonical rows.

A day's decisions are a table (Arrow, or anything :meth:`pyarrow.Table.from_pandas` reads,
such as a pandas DataFrame) with at least ``customer_id``, ``offer_id`` and ``slot``:

- one row per featured sale, ``slot`` 1 for the first; a member's rows are her e-mail;
- a row with an empty ``offer_id`` is a control: the member is held out (no e-mail);
- optional columns of the ``decisions`` contract (``decision_id``, ``ts``, ``channel``,
  ``policy``, ``score``, ``score_parts``, ``propensity``, ``experiment``, ``arm``,
  ``attributes``) are kept; missing ``decision_id`` values are numbered ``D0000000000`` on,
  ``ts`` defaults to noon UTC of the day and ``channel`` to ``email``. Other columns are kept
  after the contract's.

Decisions that the retailer could not carry out are refused with a :class:`DataError` that
names them: unknown members or offers, sales not open that day, members who may not be
e-mailed (not yet joined, no e-mail consent, unsubscribed), a slot or a sale used twice in one
e-mail, a member both mailed and held out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nextbest.errors import DataError
from nextbest.simulate.tables import TS, canonical
from nextbest.simulate.world import World, padded

__all__ = ["DayDecisions", "read_decisions"]

_REQUIRED = ("customer_id", "offer_id", "slot")


@dataclass
class DayDecisions:
    """One day's decisions as canonical rows, and the indices the environment works with."""

    table: pa.Table  # canonical decisions, in the order given
    member: np.ndarray  # member index per row
    sale: np.ndarray  # sale index per row, -1 for a control
    slot: np.ndarray  # slot per row, 0 for a control
    numbered: int  # how many decision ids were assigned here


def _as_table(decisions: Any) -> pa.Table:
    if isinstance(decisions, pa.Table):
        return decisions
    if isinstance(decisions, pa.RecordBatch):
        return pa.Table.from_batches([decisions])
    try:
        return pa.Table.from_pandas(decisions, preserve_index=False)
    except (TypeError, AttributeError, pa.ArrowException) as exc:
        raise DataError(
            "decisions: expected an Arrow table or a pandas DataFrame with columns "
            f"customer_id, offer_id, slot; got {type(decisions).__name__} ({exc})"
        ) from None


def _refuse(day: int, what: str, ids: np.ndarray, fix: str) -> DataError:
    shown = ", ".join(str(x) for x in ids[:3])
    more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
    return DataError(f"decisions for day {day}: {len(ids)} {what}: {shown}{more}; {fix}")


def _duplicated(keys: np.ndarray) -> np.ndarray:
    """Positions of keys seen before (second and later occurrences)."""
    order = np.argsort(keys, kind="stable")
    dup = np.zeros(len(keys), dtype=bool)
    dup[order[1:]] = keys[order[1:]] == keys[order[:-1]]
    return np.flatnonzero(dup)


def read_decisions(
    world: World, day: int, decisions: Any, eligible: np.ndarray, next_id: int
) -> DayDecisions:
    """Check ``decisions`` for ``day`` against the world; ``eligible`` is a mask over members."""
    table = _as_table(decisions)
    missing = [c for c in _REQUIRED if c not in table.column_names]
    if missing:
        raise DataError(
            f"decisions for day {day}: missing column(s) {', '.join(missing)}; expected "
            "customer_id, offer_id (empty for a control) and slot (1 for the first sale)"
        )
    n = table.num_rows
    customer = table.column("customer_id").cast(pa.string())
    member = world.customer_index(customer)
    bad = np.flatnonzero(member < 0)
    if len(bad):
        raise _refuse(
            day,
            "rows name no known member",
            customer.take(pa.array(bad)).to_numpy(zero_copy_only=False),
            f"customer ids run from C0000001 to C{world.n:07d}",
        )
    offer = table.column("offer_id").cast(pa.string())
    control = np.asarray(
        pc.fill_null(pc.equal(offer, ""), True).to_numpy(zero_copy_only=False), dtype=bool
    )
    sale = np.where(control, -1, world.sale_index(offer))
    open_now = np.zeros(len(world.sale_day) + 1, dtype=bool)
    open_now[world.open_sales(day)] = True
    bad = np.flatnonzero(~control & ~open_now[sale])
    if len(bad):
        raise _refuse(
            day,
            "rows feature an offer that is not open that day",
            offer.take(pa.array(bad)).to_numpy(zero_copy_only=False),
            "choose among RetailEnvironment.open_sales(day)",
        )
    slot_col = pc.fill_null(table.column("slot").cast(pa.int64()), 0)
    slot = np.where(control, 0, np.asarray(slot_col.to_numpy(), dtype=np.int64))
    bad = np.flatnonzero(~control & (slot < 1))
    if len(bad):
        raise _refuse(
            day,
            "featured sales have no slot >= 1",
            world.customer_ids(member[bad]),
            "number each e-mail's slots from 1",
        )
    bad = np.flatnonzero(~eligible[member])
    if len(bad):
        raise _refuse(
            day,
            "rows address members who may not be e-mailed (not yet joined, no e-mail consent "
            "or unsubscribed)",
            world.customer_ids(member[bad]),
            "choose among RetailEnvironment.eligible(day)",
        )
    _check_emails(world, day, member, sale, slot, control)
    cols: dict[str, Any] = {c: table.column(c) for c in table.column_names}
    given = cols.get("decision_id")
    decision_id = pa.nulls(n, pa.string()) if given is None else given.cast(pa.string())
    blank = np.asarray(pc.is_null(decision_id).to_numpy(zero_copy_only=False), dtype=bool)
    numbered = int(blank.sum())
    if numbered == n:
        decision_id = pa.array(padded("D", np.arange(next_id, next_id + n), 10), pa.string())
    elif numbered:
        fresh = np.full(n, "", dtype="<U11")
        fresh[blank] = padded("D", np.arange(next_id, next_id + numbered), 10)
        decision_id = pc.if_else(pa.array(blank), pa.array(fresh, pa.string()), decision_id)
    if given is not None and pc.count_distinct(decision_id).as_py() != n:
        raise DataError(f"decisions for day {day}: decision_id values must be unique")
    noon = world.day_start_us(day) + 12 * 3_600_000_000
    cols.update(
        decision_id=decision_id,
        customer_id=customer,
        offer_id=pc.if_else(pa.array(control), pa.scalar(None, pa.string()), offer),
        slot=slot,
    )
    cols.setdefault("ts", pa.array(np.full(n, noon), TS))
    cols.setdefault("channel", np.full(n, "email"))
    return DayDecisions(canonical("decisions", n, cols), member, sale, slot, numbered)


def _check_emails(
    world: World,
    day: int,
    member: np.ndarray,
    sale: np.ndarray,
    slot: np.ndarray,
    control: np.ndarray,
) -> None:
    """Each e-mail has distinct slots and sales; a held-out member is held out once, not mailed."""
    width = len(world.sale_day) + 1
    mailed, held = np.flatnonzero(~control), np.flatnonzero(control)
    for what, key in (
        ("rows repeat a slot in one e-mail", member[mailed] * 1_000_000 + slot[mailed]),
        ("rows repeat a sale in one e-mail", member[mailed] * width + sale[mailed]),
    ):
        bad = _duplicated(key)
        if len(bad):
            raise _refuse(
                day,
                what,
                world.customer_ids(member[mailed][bad]),
                "give each e-mail distinct slots and sales",
            )
    twice = member[held][_duplicated(member[held])]
    both = np.intersect1d(member[held], member[mailed])
    if len(twice) or len(both):
        raise _refuse(
            day,
            "members are held out twice, or both held out and mailed",
            world.customer_ids(np.r_[twice, both]),
            "give each member one e-mail or one control row",
        )
