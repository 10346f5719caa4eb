"""The online store: replays add nothing, caps hold across processes, acknowledged means on disk,
forget leaves only a hashed record, and sync moves it all into the warehouse once."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.serve.schemas import EventIn
from nextbest.serve.store import ContactCounts, DecisionRow, OnlineStore
from nextbest.serve.sync import sync

T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
DAY = datetime(2026, 1, 5, tzinfo=UTC)


def event(i: int, customer: str | None = None, **fields: object) -> EventIn:
    """Event ``E<i>``: every third an e-mail send, every fifth a purchase of offer O<i % 4>."""
    kind = "email_sent" if i % 3 == 0 else "purchase" if i % 5 == 0 else "view"
    base: dict[str, object] = {
        "event_id": f"E{i}",
        "customer_id": customer or f"C{i % 7}",
        "ts": T0 + timedelta(seconds=i),
        "type": kind,
        "offer_id": f"O{i % 4}" if kind != "view" else None,
        "quantity": (i % 3) + 1 if kind == "purchase" and i % 2 else None,
    }
    base.update(fields)
    return EventIn.model_validate(base)


def expected_units(ids: set[int]) -> dict[str, float]:
    units: Counter[str] = Counter()
    for i in ids:
        e = event(i)
        if e.type == "purchase":
            units[str(e.offer_id)] += e.quantity if e.quantity is not None else 1
    return {k: float(v) for k, v in units.items()}


def peek(store: OnlineStore, customer: str) -> ContactCounts:
    """The counts ``choose`` is given for an e-mail to ``customer`` today (nothing recorded)."""
    seen: list[ContactCounts] = []

    def look(counts: ContactCounts) -> list[DecisionRow]:
        seen.append(counts)
        return []

    store.decide_atomically(customer, "email", day_start=DAY, week_start=DAY, choose=look)
    return seen[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OnlineStore]:
    s = OnlineStore(tmp_path / "serving" / "online.db")
    yield s
    s.close()


def test_the_file_is_wal_with_a_full_fsync_per_commit(store: OnlineStore) -> None:
    con = store._con()
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    other = sqlite3.connect(store.path)  # WAL is a property of the file, seen by any connection
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


def test_replaying_a_batch_adds_nothing(store: OnlineStore) -> None:
    batch = [event(i) for i in range(500)]
    sends = sum(e.type == "email_sent" for e in batch)
    first = store.add_events(batch)
    assert (first.accepted, first.duplicates) == (500, 0)
    after = store.counts()
    assert after["events"] == 500 and after["contacts"] == sends == 167
    assert store.offer_units() == expected_units(set(range(500)))
    again = store.add_events(batch)
    assert (again.accepted, again.duplicates) == (0, 500)
    assert store.counts() == after
    assert store.offer_units() == expected_units(set(range(500)))
    inside = store.add_events([event(900), event(900), event(901)])  # repeated within a batch
    assert (inside.accepted, inside.duplicates) == (2, 1)
    assert store.counts()["events"] == 502


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=25), min_size=1, max_size=6),
    st.booleans(),
)
def test_any_interleaving_of_batches_stores_each_id_once(
    batches: list[list[int]], concurrent: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = OnlineStore(Path(tmp) / "online.db")
        results = []
        if concurrent:  # the batches race each other, one thread each
            lock = threading.Lock()

            def run(b: list[int]) -> None:
                r = s.add_events([event(i) for i in b])
                with lock:
                    results.append(r)

            threads = [threading.Thread(target=run, args=(b,)) for b in batches]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            results = [s.add_events([event(i) for i in b]) for b in batches]
        distinct = {i for b in batches for i in b}
        assert sum(r.accepted for r in results) == len(distinct)
        assert sum(r.accepted + r.duplicates for r in results) == sum(map(len, batches))
        counts = s.counts()
        assert counts["events"] == len(distinct)
        assert counts["contacts"] == sum(event(i).type == "email_sent" for i in distinct)
        assert s.offer_units() == expected_units(distinct)
        con = s._con()
        assert con.execute("SELECT COUNT(DISTINCT event_id) FROM events").fetchone()[0] == len(
            distinct
        )
        s.close()


def _one_offer_under_three(customer: str) -> Callable[[ContactCounts], list[DecisionRow]]:
    def choose(counts: ContactCounts) -> list[DecisionRow]:
        if counts.today >= 3:
            return []
        request = uuid.uuid4().hex
        now = datetime.now(UTC)
        return [
            DecisionRow(
                decision_id=f"{request}:1",
                ts=now,
                customer_id=customer,
                offer_id="O1",
                channel="email",
                slot=1,
                policy="test",
                score=1.0,
                score_parts={"value": 1.0},
                propensity=1.0,
                request_id=request,
            )
        ]

    return choose


def _cap_worker(db_path: str, start: object, out: object, threads: int) -> None:
    """A process of ``threads`` threads, each asking for one e-mail to customer C1."""
    store = OnlineStore(Path(db_path))
    now = datetime.now(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    recorded: list[int] = []

    def ask() -> None:
        rows = store.decide_atomically(
            "C1",
            "email",
            day_start=day,
            week_start=day - timedelta(days=6),
            choose=_one_offer_under_three("C1"),
        )
        recorded.append(len(rows))

    pool = [threading.Thread(target=ask) for _ in range(threads)]
    start.wait(30)  # type: ignore[attr-defined]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(recorded)  # type: ignore[attr-defined]


def test_contact_cap_holds_across_processes_and_threads(tmp_path: Path) -> None:
    db = tmp_path / "online.db"  # created by the two processes at once
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_cap_worker, args=(str(db), start, out, 20)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    recorded = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(map(len, recorded)) == [20, 20]
    assert sum(map(sum, recorded)) == 3
    store = OnlineStore(db)
    con = store._con()
    assert con.execute("SELECT COUNT(*) FROM contacts WHERE customer_id = 'C1'").fetchone()[0] == 3
    assert store.counts()["decisions"] == 3
    store.close()


_CHILD = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from nextbest.serve.schemas import EventIn
from nextbest.serve.store import OnlineStore

store = OnlineStore(Path(sys.argv[1]))
t0 = datetime(2026, 1, 5, tzinfo=UTC)
b = 0
while True:
    ids = [f"K{b}-{i}" for i in range(500)]
    store.add_events(
        [EventIn(event_id=x, customer_id="C1", ts=t0 + timedelta(seconds=i), type="email_sent")
         for i, x in enumerate(ids)]
    )
    sys.stdout.write(",".join(ids) + "\\n")  # only after the commit returned
    sys.stdout.flush()
    b += 1
"""


def test_acknowledged_batches_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "online.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    acknowledged: list[list[str]] = []
    for line in child.stdout:
        acknowledged.append(line.rstrip("\n").split(","))
        if len(acknowledged) == 12:
            os.kill(child.pid, signal.SIGKILL)  # mid-load: the next batch is being written
            break
    rest = child.stdout.read()
    child.wait(30)
    assert child.returncode == -signal.SIGKILL
    acknowledged += [line.split(",") for line in rest.split("\n")[:-1]]  # complete lines only
    store = OnlineStore(db)
    con = store._con()
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = Counter(r[0] for r in con.execute("SELECT event_id FROM events"))
    acked = [x for batch in acknowledged for x in batch]
    assert all(stored[x] == 1 for x in acked)
    per_batch = Counter(x.split("-")[0] for x in stored)
    assert set(per_batch.values()) == {500}  # a batch is all there or not at all
    assert len(per_batch) - len(acknowledged) in (0, 1)  # at most the one being acknowledged
    contacts = con.execute("SELECT COUNT(*) FROM contacts").fetchone()[0]
    assert contacts == len(stored)
    store.close()


def test_forget_leaves_only_a_hashed_record(store: OnlineStore) -> None:
    me, other = "C-forget-me", "C-other"
    mine = [
        event(3, me, event_id="M1"),  # a send: a contact
        event(5, me, event_id="M2"),  # a purchase
        event(1, me, event_id="M3"),
    ]
    theirs = [
        event(2, other, event_id="X1", type="referral", attributes={"referred": me, "n": 2}),
        event(4, other, event_id="X2"),
    ]
    store.add_events(mine + theirs)
    rows = store.decide_atomically(
        me, "email", day_start=DAY, week_start=DAY, choose=_one_offer_under_three(me)
    )
    decision = rows[0].decision_id
    store.add_events([event(7, None, event_id="A1", type="email_open", decision_id=decision)])
    before_units = store.offer_units()
    counts = store.forget(me)
    assert counts == {"events": 4, "decisions": 1, "contacts": 2, "attributes": 1}
    con = store._con()
    x1 = con.execute("SELECT attributes FROM events WHERE event_id = 'X1'").fetchone()[0]
    assert json.loads(x1) == {"referred": None, "n": 2}
    assert store.counts()["events"] == 2 and store.offer_units() == before_units

    def tables_naming(name: str) -> set[str]:
        found = set()
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
            for col in cols:
                sql = f"SELECT COUNT(*) FROM {table} WHERE instr(CAST({col} AS TEXT), ?) > 0"
                if con.execute(sql, (name,)).fetchone()[0]:
                    found.add(table)
        return found

    assert tables_naming(me) == {"erasure_queue"}  # kept until the warehouse side is done
    assert store.pending_erasures() == [me]
    (digest, recorded, done) = con.execute(
        "SELECT id_sha256, counts, warehouse_done FROM erasures"
    ).fetchone()
    assert digest == hashlib.sha256(me.encode()).hexdigest()
    assert (json.loads(recorded), done) == (counts, 0)
    store.mark_erased(me)
    assert store.pending_erasures() == [] and tables_naming(me) == set()
    assert con.execute("SELECT warehouse_done FROM erasures").fetchone()[0] == 1
    on_disk = b"".join(p.read_bytes() for p in store.path.parent.iterdir() if p.is_file())
    assert me.encode() not in on_disk  # secure_delete zeroed it; the WAL was folded in
    assert other.encode() in on_disk


def test_recent_events_and_decision_outcomes(store: OnlineStore) -> None:
    store.add_events(
        [
            event(40, "C9", event_id="late", type="view", ts=T0 + timedelta(hours=2)),
            event(41, "C9", event_id="early", type="view", ts=T0 - timedelta(hours=2)),
            event(42, "C9", event_id="mid", type="add_to_cart", ts=T0, product_id="P1"),
        ]
    )
    got = store.customer_events("C9", T0)
    assert [(e.type, e.ts) for e in got] == [("add_to_cart", T0), ("view", T0 + timedelta(hours=2))]
    assert got[0].product_id == "P1"
    assert [e.type for e in store.customer_events("C9", T0, types=["view"])] == ["view"]
    assert store.customer_events("C9", T0, types=[]) == []
    first = store.decide_atomically(
        "C9", "email", day_start=DAY, week_start=DAY, choose=_one_offer_under_three("C9")
    )[0]
    second = store.decide_atomically(
        "C9", "email", day_start=DAY, week_start=DAY, choose=_one_offer_under_three("C9")
    )[0]
    store.add_events(
        [
            event(50, "C9", event_id="o1", type="email_open", decision_id=first.decision_id),
            event(51, "C9", event_id="b1", type="purchase", decision_id=first.decision_id),
            event(52, "C9", event_id="c2", type="email_click", decision_id=second.decision_id),
        ]
    )
    seen = peek(store, "C9")
    assert (seen.today, seen.week, seen.impressions) == (2, 2, {"O1": 2})
    history = store.decisions_for("C9")
    assert [h["decision_id"] for h in history[:2]] == [second.decision_id, first.decision_id]
    flags = [(h["opened"], h["clicked"], h["bought"]) for h in history[:2]]
    assert flags == [(False, True, False), (True, False, True)]
    assert history[0]["score_parts"] == {"value": 1.0}


def test_a_send_for_an_online_decision_is_one_contact(store: OnlineStore) -> None:
    rows = store.decide_atomically(
        "C5", "email", day_start=DAY, week_start=DAY, choose=_one_offer_under_three("C5")
    )
    store.add_events([event(3, "C5", event_id="S1", decision_id=rows[0].decision_id)])
    store.add_events([event(6, "C5", event_id="S2")])  # a send the batch decided: a contact
    assert peek(store, "C5").today == 2

    def broken(counts: ContactCounts) -> list[DecisionRow]:
        raise RuntimeError("scoring failed")

    before = store.counts()
    with pytest.raises(RuntimeError, match="scoring failed"):
        store.decide_atomically("C5", "email", day_start=DAY, week_start=DAY, choose=broken)
    assert store.counts() == before


@pytest.fixture(scope="module")
def small_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    from nextbest.simulate import SimConfig, simulate

    root = tmp_path_factory.mktemp("sync")
    simulate(SimConfig(n_customers=300, days=2, seed=3), root / "sim")
    ws = Workspace.init(root / "ws")
    ingest(ws.warehouse, [root / "sim"], ws.config.ingest)
    yield ws
    ws.close()


def test_sync_loads_once_quarantines_strangers_and_applies_erasures(small_shop: Workspace) -> None:
    ws = small_shop
    wh = ws.warehouse
    offer = wh.table("offers").offer_id.execute().iloc[0]
    store = OnlineStore(ws.root / "serving" / "online.db")
    when = datetime(2026, 1, 3, 10, tzinfo=UTC)
    customers = ["C0000001", "C0000002", "C0000003"]

    def two_offers(c: str) -> Callable[[ContactCounts], list[DecisionRow]]:
        return lambda _: [
            DecisionRow(
                decision_id=f"live:{c}:{k}",
                ts=when,
                customer_id=c,
                offer_id=offer,
                channel="web",
                slot=k,
                policy="live",
                score=0.5,
                score_parts={"value": 0.5},
                propensity=0.9,
                request_id=f"req:{c}",
            )
            for k in (1, 2)
        ]

    rows: list[DecisionRow] = []
    for c in customers:
        rows += store.decide_atomically(
            c, "web", day_start=DAY, week_start=DAY, choose=two_offers(c)
        )
    live = [
        EventIn(
            event_id=f"live-{d.decision_id}",
            customer_id=d.customer_id,
            ts=when,
            type="click",
            channel="web",
            offer_id=offer,
            decision_id=d.decision_id,
        )
        for d in rows
    ]
    live.append(EventIn(event_id="live-stranger", customer_id="Z-unknown", ts=when, type="visit"))
    store.add_events(live)
    before = wh.count("events"), wh.count("decisions")
    first = sync(ws, store)
    assert first.ok, first.failed
    assert (first.tables["decisions"].loaded, first.tables["decisions"].quarantined) == (6, 0)
    assert (first.tables["events"].loaded, first.tables["events"].quarantined) == (6, 1)
    assert (wh.count("events"), wh.count("decisions")) == (before[0] + 6, before[1] + 6)
    assert first.watermarks == {"decisions": 6, "events": 7}
    attrs = wh.table("decisions").filter(wh.table("decisions").decision_id == "live:C0000001:1")
    assert json.loads(attrs.attributes.execute().iloc[0]) == {"request_id": "req:C0000001"}
    again = sync(ws, store)
    assert again.files == [] and again.total("read") == 0
    assert (wh.count("events"), wh.count("decisions")) == (before[0] + 6, before[1] + 6)

    gone = "C0000002"
    store.forget(gone)
    third = sync(ws, store)
    assert third.erased == 1 and third.files == [] and store.pending_erasures() == []
    for table in ("customers", "decisions", "events"):
        t = wh.table(table)
        assert int(t.filter(t.customer_id == gone).count().execute()) == 0
    for path in (ws.root / "serving" / "outbox").glob("*.parquet"):
        assert gone not in pq.read_table(path).to_pandas().to_csv()
    sim = pq.read_table(ws.root.parent / "sim" / "decisions.parquet").to_pandas()
    assert wh.count("decisions") == before[1] + 4 - int((sim.customer_id == gone).sum())
    store.close()


def test_contact_counts_match_a_count_of_the_rows(tmp_path: Path) -> None:
    """The one-statement count (read early, and again under the write lock) against a count of
    the recorded contacts in Python: distinct requests per channel today and this week, and
    every showing per offer on any channel."""
    import random

    store = OnlineStore(tmp_path / "online.db")
    rng = random.Random(7)
    rows: list[tuple[str, str, datetime, str, str | None]] = []
    for r in range(400):
        customer, channel = rng.choice(["A", "B", "C"]), rng.choice(["email", "web", "app"])
        at = (
            DAY
            + timedelta(hours=12)
            - timedelta(days=rng.randrange(10), minutes=rng.randrange(1440))
        )
        offers = rng.sample(["O1", "O2", "O3", "O4", None], rng.randrange(1, 4))
        rows += [(customer, channel, at, f"r{r}", o) for o in offers]
    con = store._con()
    con.executemany(
        "INSERT INTO contacts (customer_id, channel, ts, request_id, offer_id) VALUES "
        "(?, ?, ?, ?, ?)",
        [(c, ch, at.isoformat(timespec="microseconds"), rq, o) for c, ch, at, rq, o in rows],
    )
    week_start = DAY - timedelta(days=7)
    found: list[ContactCounts] = []
    for customer in ("A", "B", "C", "nobody"):
        for channel in ("email", "web", "app"):
            mine = [r for r in rows if r[0] == customer]
            today = {rq for _, ch, at, rq, _ in mine if ch == channel and at >= DAY}
            week = {rq for _, ch, at, rq, _ in mine if ch == channel and at >= week_start}
            shown = Counter(str(o) for *_, o in mine if o is not None)
            early = store.contact_counts(customer, channel, day_start=DAY, week_start=week_start)
            assert early == ContactCounts(len(today), len(week), dict(shown))
            found.append(early)
        # peek: what decide_atomically gives choose, under the write lock
        assert peek(store, customer) == store.contact_counts(
            customer, "email", day_start=DAY, week_start=DAY
        )
    assert sum(c.today > 0 for c in found) >= 6 and found[-1] == ContactCounts(0, 0, {})
    # events wait for the disk; decisions (another connection) only for the process to live
    assert store._con().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._con(fsync=False).execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()
