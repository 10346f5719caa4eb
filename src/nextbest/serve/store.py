"""The online store: what the real-time service records, on disk before it answers.

One SQLite file (``WORKSPACE/serving/online.db``) in WAL mode with ``synchronous=FULL``: a
commit is fsynced before the call returns, so an acknowledged write survives a crash or a
SIGKILL. Decisions are the exception: they commit without waiting for the disk (they survive
a killed process; a power loss may take the last ones, and with them a few contact counts).
Every thread has its own connections (:class:`nextbest.serve.sqlite.SqliteFile`: one that
fsyncs its commits, one for the decisions that do not); processes share the file through
SQLite's locks (``busy_timeout`` 10 s). Tables:

- ``events``: the canonical event columns plus ``received_ts``; ``event_id`` is unique, so a
  replayed batch adds nothing. ``seq`` (AUTOINCREMENT, never reused, even after a deletion)
  orders rows for :mod:`nextbest.serve.sync`'s watermarks.
- ``decisions``: the canonical decision columns plus ``request_id``, ordered by ``seq`` too.
- ``contacts``: one row per message sent or offer shown (``request_id`` groups one request's
  slots, so that a three-offer e-mail is one contact); contact caps count these.
- ``offer_units``: purchase quantities received online, per offer, for stock limits.
- ``erasures`` / ``erasure_queue``: the record of each :meth:`OnlineStore.forget` (the id's
  SHA-256, the time, the counts) and, until the warehouse side is done, the plain id.
- ``meta``: keys and values (sync watermarks).

Contact limits hold across threads and processes because :meth:`OnlineStore.decide_atomically`
counts and records inside one ``BEGIN IMMEDIATE`` transaction: SQLite lets one writer at a time
through, so two requests for the same customer cannot both see room for the last contact.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from nextbest.data.erase import id_sha256, redact_json
from nextbest.errors import DataError
from nextbest.serve.schemas import EventIn, EventsResult
from nextbest.serve.sqlite import SqliteFile

__all__ = ["SEND_CHANNELS", "ContactCounts", "DecisionRow", "LiveEvent", "OnlineStore"]

log = logging.getLogger(__name__)

SEND_CHANNELS: dict[str, str] = {"email_sent": "email", "push_sent": "push", "sms_sent": "sms"}
"""Event types that are contacts, and their channel (as :mod:`nextbest.decide.contact`)."""

_OUTCOMES = {
    "opened": ("email_open", "push_open"),
    "clicked": ("email_click", "click"),
    "bought": ("purchase",),
}
_EVENT_COLS = (
    "event_id, customer_id, ts, type, product_id, offer_id, channel, quantity, amount, "
    "decision_id, basket_id, attributes"
)
_DECISION_COLS = (
    "decision_id, ts, customer_id, offer_id, channel, slot, policy, score, score_parts, "
    "propensity, experiment, arm, request_id"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, customer_id TEXT,
    ts TEXT NOT NULL, type TEXT NOT NULL, product_id TEXT, offer_id TEXT, channel TEXT,
    quantity INTEGER, amount REAL, decision_id TEXT, basket_id TEXT, attributes TEXT,
    received_ts TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_customer_ts ON events (customer_id, ts);
CREATE INDEX IF NOT EXISTS events_decision ON events (decision_id) WHERE decision_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, decision_id TEXT NOT NULL UNIQUE, ts TEXT NOT NULL,
    customer_id TEXT NOT NULL, offer_id TEXT, channel TEXT, slot INTEGER, policy TEXT,
    score REAL, score_parts TEXT, propensity REAL, experiment TEXT, arm TEXT,
    request_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_customer_ts ON decisions (customer_id, ts);
CREATE TABLE IF NOT EXISTS contacts (
    customer_id TEXT NOT NULL, channel TEXT NOT NULL, ts TEXT NOT NULL,
    request_id TEXT NOT NULL, offer_id TEXT);
CREATE INDEX IF NOT EXISTS contacts_customer ON contacts (customer_id, channel, ts);
CREATE TABLE IF NOT EXISTS offer_units (offer_id TEXT PRIMARY KEY, units REAL NOT NULL);
CREATE TABLE IF NOT EXISTS erasures (
    id INTEGER PRIMARY KEY AUTOINCREMENT, id_sha256 TEXT NOT NULL, ts TEXT NOT NULL,
    counts TEXT NOT NULL, warehouse_done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS erasure_queue (
    erasure_id INTEGER PRIMARY KEY REFERENCES erasures (id), customer_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
_INSERT_EVENT = f"INSERT INTO events ({_EVENT_COLS}, received_ts) VALUES ({', '.join('?' * 13)})"
_INSERT_DECISION = f"INSERT INTO decisions ({_DECISION_COLS}) VALUES ({', '.join('?' * 13)})"
# A send that confirms an online decision already counted as a contact is not counted twice.
_INSERT_SEND = """
INSERT INTO contacts (customer_id, channel, ts, request_id, offer_id)
SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS (
    SELECT 1 FROM decisions WHERE decision_id = ?6 AND offer_id IS NOT NULL AND channel = ?2)
"""
_ADD_UNITS = """
INSERT INTO offer_units (offer_id, units) VALUES (?, ?)
ON CONFLICT (offer_id) DO UPDATE SET units = units + excluded.units
"""
_CHUNK = 500  # ids per IN (...) lookup
# A customer's contacts, counted in Python (:func:`_contact_counts`): one indexed lookup, half
# the CPU of counting distinct requests and grouping offers in SQL (two COUNT(DISTINCT) and a
# GROUP BY, each with its own temporary table), and still one statement, one snapshot.
_CONTACTS_OF = "SELECT ts, request_id, offer_id, channel FROM contacts WHERE customer_id = ?"


@dataclass(frozen=True)
class LiveEvent:
    """One of a customer's recent events, as the service reads them back."""

    ts: datetime
    type: str
    product_id: str | None
    offer_id: str | None
    channel: str | None
    quantity: int | None
    amount: float | None
    decision_id: str | None


@dataclass(frozen=True)
class ContactCounts:
    """What a customer has received on a channel, counted inside the deciding transaction.

    ``today`` and ``week`` count distinct requests (one e-mail with three offers is one
    contact) since ``day_start`` and ``week_start``; ``impressions`` counts, per offer, every
    time it was shown or sent to the customer on any channel.
    """

    today: int
    week: int
    impressions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DecisionRow:
    """One decision to record: the canonical ``decisions`` columns plus the request's id.

    ``offer_id`` None is a control (no contact recorded); ``score_parts`` is a mapping or JSON
    text; a naive ``ts`` is taken as UTC.
    """

    decision_id: str
    ts: datetime
    customer_id: str
    offer_id: str | None = None
    channel: str | None = None
    slot: int = 0
    policy: str | None = None
    score: float | None = None
    score_parts: Mapping[str, Any] | str | None = None
    propensity: float | None = None
    experiment: str | None = None
    arm: str | None = None
    request_id: str


def _iso(ts: datetime) -> str:
    """A timestamp as stored: UTC, fixed width, so text order is time order."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def _json(value: Mapping[str, Any] | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class OnlineStore(SqliteFile):
    """The service's durable store in one SQLite file; see the module docstring.

    Safe to share between threads (each gets its own connection) and to open from several
    processes at once. Every write method returns only after its transaction is on disk.
    """

    def __init__(
        self,
        db_path: Path,
        *,
        checkpoint_every: float | None = None,
        queue_writers: bool = False,
    ) -> None:
        super().__init__(db_path, checkpoint_every=checkpoint_every, queue_writers=queue_writers)
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # -- events ----------------------------------------------------------------------------

    def add_events(self, events: Sequence[EventIn]) -> EventsResult:
        """Store a batch in one transaction; ids already stored (or repeated) are duplicates.

        New ``email_sent``/``push_sent``/``sms_sent`` events with a customer also become
        contacts (``request_id`` the event id); new purchases with an offer add their quantity
        (default 1) to ``offer_units``.
        """
        if not events:
            return EventsResult(accepted=0, duplicates=0)
        received_ts = _iso(datetime.now(UTC))
        with self._write() as con:
            ids = [e.event_id for e in events]
            known: set[str] = set()
            for i in range(0, len(ids), _CHUNK):
                part = ids[i : i + _CHUNK]
                marks = ",".join("?" * len(part))
                sql = f"SELECT event_id FROM events WHERE event_id IN ({marks})"
                known.update(r[0] for r in con.execute(sql, part))
            new: list[EventIn] = []
            for e in events:
                if e.event_id not in known:
                    known.add(e.event_id)
                    new.append(e)
            rows: list[tuple[Any, ...]] = []
            sends: list[tuple[Any, ...]] = []
            units: dict[str, float] = {}
            for e in new:
                ts = _iso(e.ts)
                rows.append(
                    (
                        e.event_id,
                        e.customer_id,
                        ts,
                        e.type,
                        e.product_id,
                        e.offer_id,
                        e.channel,
                        e.quantity,
                        e.amount,
                        e.decision_id,
                        e.basket_id,
                        _json(e.attributes),
                        received_ts,
                    )
                )
                if e.type in SEND_CHANNELS and e.customer_id is not None:
                    channel = SEND_CHANNELS[e.type]
                    sends.append(
                        (e.customer_id, channel, ts, e.event_id, e.offer_id, e.decision_id)
                    )
                elif e.type == "purchase" and e.offer_id is not None:
                    qty = 1 if e.quantity is None else e.quantity
                    units[e.offer_id] = units.get(e.offer_id, 0.0) + qty
            con.executemany(_INSERT_EVENT, rows)
            con.executemany(_INSERT_SEND, sends)
            con.executemany(_ADD_UNITS, list(units.items()))
        return EventsResult(accepted=len(new), duplicates=len(events) - len(new))

    def customer_events(
        self, customer_id: str, since: datetime, types: Sequence[str] | None = None
    ) -> list[LiveEvent]:
        """The customer's events at or after ``since`` (of ``types``, if given), oldest first."""
        sql = (
            "SELECT ts, type, product_id, offer_id, channel, quantity, amount, decision_id "
            "FROM events WHERE customer_id = ? AND ts >= ?"
        )
        params: list[Any] = [customer_id, _iso(since)]
        if types is not None:
            if not types:
                return []
            sql += f" AND type IN ({','.join('?' * len(types))})"
            params.extend(types)
        rows = self._con().execute(sql + " ORDER BY ts, seq", params).fetchall()
        return [LiveEvent(datetime.fromisoformat(r[0]), *r[1:]) for r in rows]

    def offer_units(self) -> dict[str, float]:
        """Purchase quantities received online, per offer."""
        return dict(self._con().execute("SELECT offer_id, units FROM offer_units").fetchall())

    # -- decisions ---------------------------------------------------------------------------

    def decide_atomically(
        self,
        customer_id: str,
        channel: str,
        *,
        day_start: datetime,
        week_start: datetime,
        choose: Callable[[ContactCounts], Sequence[DecisionRow]],
    ) -> list[DecisionRow]:
        """Count the customer's contacts, let ``choose`` decide, record what it chose: atomically.

        The transaction holds SQLite's write lock while ``choose`` runs, so ``choose`` must be
        quick (score in memory, no I/O). Rows with an offer are also recorded as contacts on
        their channel (``channel`` if theirs is None). If ``choose`` raises, nothing is written.
        """
        # Decisions commit without an fsync of their own (the next event batch's fsync takes
        # them to disk): they survive a killed process, and a decision costs no disk wait,
        # which would cap the service near the disk's fsync rate (about 250/s here).
        with self._write(fsync=False) as con:
            counts = _contact_counts(con, customer_id, channel, day_start, week_start)
            rows = list(choose(counts))
            for row in rows:
                if row.customer_id != customer_id:
                    raise DataError(
                        f"decide_atomically: expected decisions for customer {customer_id!r}, "
                        f"got one for {row.customer_id!r} ({row.decision_id})"
                    )
            try:
                con.executemany(_INSERT_DECISION, [_decision_values(r) for r in rows])
            except sqlite3.IntegrityError as exc:
                raise DataError(
                    f"decide_atomically: expected new decision ids, got one already recorded "
                    f"({exc})"
                ) from None
            con.executemany(
                "INSERT INTO contacts (customer_id, channel, ts, request_id, offer_id) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (customer_id, r.channel or channel, _iso(r.ts), r.request_id, r.offer_id)
                    for r in rows
                    if r.offer_id is not None
                ],
            )
        return rows

    def contact_counts(
        self, customer_id: str, channel: str, *, day_start: datetime, week_start: datetime
    ) -> ContactCounts:
        """The counts :meth:`decide_atomically` would give ``choose`` now, read without the
        write lock (they may change before a decision takes it); one statement, so one
        snapshot of the file."""
        return _contact_counts(self._con(), customer_id, channel, day_start, week_start)

    def decisions_for(self, customer_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The customer's latest decisions, newest first, with what followed each one.

        ``opened`` (an ``email_open`` or ``push_open``), ``clicked`` (``email_click`` or
        ``click``) and ``bought`` (``purchase``) say whether such an event names the decision.
        """
        flags = ", ".join(
            f"EXISTS (SELECT 1 FROM events e WHERE e.decision_id = d.decision_id AND e.type IN "
            f"({', '.join(repr(t) for t in types)})) AS {name}"
            for name, types in _OUTCOMES.items()
        )
        cur = self._con().execute(
            f"SELECT {_DECISION_COLS}, {flags} FROM decisions d WHERE customer_id = ? "
            "ORDER BY ts DESC, seq DESC LIMIT ?",
            (customer_id, int(limit)),
        )
        names = [c[0] for c in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values, strict=True))
            row["ts"] = datetime.fromisoformat(row["ts"])
            row["score_parts"] = json.loads(row["score_parts"]) if row["score_parts"] else None
            for name in _OUTCOMES:
                row[name] = bool(row[name])
            out.append(row)
        return out

    # -- bookkeeping -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows per table (``erasures_pending``: erasures not yet applied to the warehouse)."""
        con = self._con()
        out = {
            t: int(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
            for t in ("events", "decisions", "contacts", "offer_units", "erasures")
        }
        out["erasures_pending"] = int(
            con.execute("SELECT COUNT(*) FROM erasure_queue").fetchone()[0]
        )
        return out

    def get_meta(self, key: str) -> str | None:
        row = self._con().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as con:
            con.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def high_water(self) -> dict[str, int]:
        """The last ``seq`` of decisions and events, read in one snapshot."""
        con = self._con()
        con.execute("BEGIN")
        try:
            out = {
                t: int(con.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {t}").fetchone()[0])
                for t in ("decisions", "events")
            }
        finally:
            con.execute("COMMIT")
        return out

    def rows_after(
        self, table: Literal["decisions", "events"], after: int, upto: int, limit: int
    ) -> list[dict[str, Any]]:
        """Rows with ``after < seq <= upto``, oldest first, at most ``limit``, with ``seq``."""
        if table not in ("decisions", "events"):
            raise DataError(f"rows_after: expected 'decisions' or 'events', got {table!r}")
        cols = _DECISION_COLS if table == "decisions" else _EVENT_COLS
        cur = self._con().execute(
            f"SELECT seq, {cols} FROM {table} WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (int(after), int(upto), int(limit)),
        )
        names = [c[0] for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # -- erasure -----------------------------------------------------------------------------

    def forget(self, customer_id: str) -> dict[str, int]:
        """Delete the customer's events, decisions and contacts in one transaction.

        Events linked to their decisions go too, and other events' ``attributes`` values naming
        them are set to null. What remains is an ``erasures`` row with only ``sha256(id)``, the
        time and the counts, plus the plain id in ``erasure_queue`` until
        :meth:`mark_erased`: the warehouse may be locked by a batch job now, and erasing there
        later needs the id (the trade-off: the id stays in this file until the next sync).
        SQLite's ``secure_delete`` overwrites the deleted rows in the file.
        """
        digest = id_sha256(customer_id)
        with self._write() as con:
            linked = con.execute(
                "DELETE FROM events WHERE decision_id IN "
                "(SELECT decision_id FROM decisions WHERE customer_id = ?1) "
                "AND customer_id IS NOT ?1",
                (customer_id,),
            ).rowcount
            counts = {
                "events": linked
                + con.execute("DELETE FROM events WHERE customer_id = ?", (customer_id,)).rowcount,
                "decisions": con.execute(
                    "DELETE FROM decisions WHERE customer_id = ?", (customer_id,)
                ).rowcount,
                "contacts": con.execute(
                    "DELETE FROM contacts WHERE customer_id = ?", (customer_id,)
                ).rowcount,
            }
            found = con.execute(
                "SELECT seq, attributes FROM events WHERE instr(attributes, ?) > 0", (customer_id,)
            ).fetchall()
            fixed = []
            for seq, text in found:
                redacted = redact_json(text, {digest})
                if redacted != text:
                    fixed.append((redacted, seq))
            con.executemany("UPDATE events SET attributes = ? WHERE seq = ?", fixed)
            counts["attributes"] = len(fixed)
            cur = con.execute(
                "INSERT INTO erasures (id_sha256, ts, counts) VALUES (?, ?, ?)",
                (digest, _iso(datetime.now(UTC)), json.dumps(counts, sort_keys=True)),
            )
            con.execute(
                "INSERT INTO erasure_queue (erasure_id, customer_id) VALUES (?, ?)",
                (cur.lastrowid, customer_id),
            )
        log.info("forgot one customer: %s", counts)
        return counts

    def pending_erasures(self) -> list[str]:
        """Ids forgotten here and not yet erased from the warehouse, oldest first."""
        rows = self._con().execute(
            "SELECT customer_id, MIN(erasure_id) AS first FROM erasure_queue "
            "GROUP BY customer_id ORDER BY first"
        )
        return [r[0] for r in rows.fetchall()]

    def mark_erased(self, customer_id: str) -> None:
        """The warehouse side is done: drop the plain id, keep the hashed record."""
        with self._write() as con:
            con.execute(
                "UPDATE erasures SET warehouse_done = 1 WHERE id IN "
                "(SELECT erasure_id FROM erasure_queue WHERE customer_id = ?)",
                (customer_id,),
            )
            con.execute("DELETE FROM erasure_queue WHERE customer_id = ?", (customer_id,))
        self._fold_wal()

    def _fold_wal(self) -> None:
        """Copy the WAL into the main file and truncate it, so its copies of deleted rows go
        (best effort: a reader in another connection can keep some frames until later)."""
        busy, _, _ = self._con().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.info("online store: WAL checkpoint deferred by a reader")


def _contact_counts(
    con: sqlite3.Connection,
    customer_id: str,
    channel: str,
    day_start: datetime,
    week_start: datetime,
) -> ContactCounts:
    """Distinct requests on ``channel`` since each start, showings per offer on any channel
    (timestamps compare as the stored text, as SQLite compares them)."""
    day, week = _iso(day_start), _iso(week_start)
    today: set[str] = set()
    this_week: set[str] = set()
    impressions: dict[str, int] = {}
    for ts, request_id, offer_id, on in con.execute(_CONTACTS_OF, (customer_id,)):
        if on == channel:
            if ts >= day:
                today.add(request_id)
            if ts >= week:
                this_week.add(request_id)
        if offer_id is not None:
            impressions[offer_id] = impressions.get(offer_id, 0) + 1
    return ContactCounts(len(today), len(this_week), impressions)


def _decision_values(r: DecisionRow) -> tuple[Any, ...]:
    return (
        r.decision_id,
        _iso(r.ts),
        r.customer_id,
        r.offer_id,
        r.channel,
        r.slot,
        r.policy,
        r.score,
        _json(r.score_parts),
        r.propensity,
        r.experiment,
        r.arm,
        r.request_id,
    )
