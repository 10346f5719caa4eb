"""End to end over real HTTP: ``nextbest serve`` as a process on loopback, two workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from nextbest.data.workspace import Workspace
from nextbest.serve.security import KeyStore
from nextbest.serve.settings import ServeSettings
from tests.serve.conftest import DAY, Shop

pytestmark = pytest.mark.slow

NOON = DAY + timedelta(hours=12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    root: Path
    url: str
    keys: dict[str, str]  # scope -> plaintext key
    proc: subprocess.Popen | None = None
    workers: int = 2

    def start(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        env = {**os.environ, "NO_COLOR": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nextbest",
                "serve",
                "--workspace",
                str(self.root),
                "--port",
                str(port),
                "--workers",
                str(self.workers),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "server.log").open("ab"),
            start_new_session=True,  # its own process group: SIGKILL reaches every worker
        )
        deadline = time.monotonic() + 60
        said = ""
        while time.monotonic() < deadline:
            try:
                got = httpx.get(f"{self.url}/readyz", timeout=1)
                if got.status_code == 200:
                    return
                said = got.text
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "server.log").read_text())
            time.sleep(0.2)
        raise TimeoutError(f"the server did not become ready in 60 s: {said}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def headers(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}


@pytest.fixture(scope="module")
def server(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("http") / "ws"
    shutil.copytree(shop.root, root)
    store = KeyStore(ServeSettings().db_path(root))
    keys = {s: store.create(f"test-{s}", [s])[1] for s in ("decide", "events", "profiles")}
    keys["admin"] = store.create("test-admin", ["admin"])[1]
    srv = Server(root, f"http://127.0.0.1:{_free_port()}", keys)
    srv.start()
    yield srv
    srv.stop()


def _ids(root: Path, n: int) -> list[str]:
    ws = Workspace.open(root)
    try:
        ids = ws.warehouse.table("customers").order_by("customer_id").customer_id.to_pandas()
        return [str(i) for i in ids.iloc[:n]]
    finally:
        ws.close()


def _decide(srv: Server, cid: str, channel: str, **context) -> httpx.Response:
    at = context.pop("at", NOON)
    body = {"customer_id": cid, "channel": channel, "context": {"time": at.isoformat(), **context}}
    return httpx.post(f"{srv.url}/v1/decide", json=body, headers=srv.headers("decide"), timeout=10)


def test_cart_then_store_within_a_second(server: Server) -> None:
    cid = _ids(server.root, 3)[2]
    before = _decide(server, cid, "store", weather="sun").json()
    assert before["offers"] == []
    event = {
        "event_id": "http-cart-1",
        "customer_id": cid,
        "ts": NOON.isoformat(),
        "type": "add_to_cart",
        "product_id": "P-BAG",
        "channel": "web",
    }
    start = time.monotonic()
    ack = httpx.post(
        f"{server.url}/v1/events",
        json={"events": [event]},
        headers=server.headers("events"),
        timeout=10,
    )
    assert ack.status_code == 200 and ack.json() == {"accepted": 1, "duplicates": 0}
    got = _decide(server, cid, "store", weather="rain", at=NOON + timedelta(minutes=1)).json()
    assert time.monotonic() - start < 1.0
    assert [o["offer_id"] for o in got["offers"]] == ["CART10"]
    offer = got["offers"][0]
    assert 0 < offer["probability"] <= 1 and offer["decision_id"].startswith("store-app:rt:")
    profile = httpx.get(f"{server.url}/v1/customers/{cid}", headers=server.headers("profiles"))
    body = profile.json()
    assert body["cart"] == ["P-BAG"]
    assert [d["offer_id"] for d in body["recent_decisions"]][:1] == ["CART10"]


def test_sync_takes_the_service_events_and_decisions_into_the_warehouse(server: Server) -> None:
    got = subprocess.run(
        [sys.executable, "-m", "nextbest", "sync", "--workspace", str(server.root), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert got.returncode == 0, got.stderr
    body = json.loads(got.stdout)
    assert body["tables"]["events"]["loaded"] >= 1 and not body["failed"]
    ws = Workspace.open(server.root)
    try:
        ev = ws.warehouse.table("events")
        assert ev.filter(ev.event_id == "http-cart-1").count().execute() == 1
        dec = ws.warehouse.table("decisions")
        assert dec.filter(dec.decision_id.startswith("store-app:rt:")).count().execute() >= 1
    finally:
        ws.close()
    again = subprocess.run(
        [sys.executable, "-m", "nextbest", "sync", "--workspace", str(server.root), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert json.loads(again.stdout)["tables"].get("events", {"loaded": 0})["loaded"] == 0


def test_contact_limit_holds_across_concurrent_requests_and_workers(server: Server) -> None:
    ids = _ids(server.root, 60)
    # a treated customer the web campaign serves (its holdout is 20%), not contacted yet today
    cid = next(c for c in ids[10:] if _decide(server, c, "web").json()["offers"])
    later = NOON + timedelta(hours=2)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _decide(server, cid, "web", at=later).json(), range(24)))
    served = [a for a in answers if a["offers"]]
    assert len(served) == 1  # per_day = { web = 2 }, one used by the first request
    assert all("2 web contacts today (limit 2)" in a["reasons"] for a in answers if not a["offers"])
    # consent: the e-mail campaign never answers a customer without e-mail consent
    ws = Workspace.open(server.root)
    try:
        cust = ws.warehouse.table("customers").to_pandas().set_index("customer_id")
    finally:
        ws.close()
    for c in ids[:40]:
        got = _decide(server, c, "email").json()
        if got["offers"]:
            assert bool(cust.consent_email[c])


def test_keys_are_checked(server: Server) -> None:
    body = {"customer_id": "x", "channel": "web"}
    assert httpx.post(f"{server.url}/v1/decide", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nb_not-a-key"}
    assert httpx.post(f"{server.url}/v1/decide", json=body, headers=wrong).status_code == 401
    under = httpx.post(f"{server.url}/v1/decide", json=body, headers=server.headers("profiles"))
    assert under.status_code == 403 and "decide" in under.json()["error"]["message"]
    bad = httpx.post(
        f"{server.url}/v1/decide",
        json={"customer_id": 5, "channel": "fax"},
        headers=server.headers("decide"),
    )
    assert bad.status_code == 422
    fields = {d["field"] for d in bad.json()["error"]["details"]}
    assert {"body.customer_id", "body.channel"} <= fields


def test_sigkill_during_an_event_load_loses_no_acknowledged_event(server: Server) -> None:
    acked: list[list[str]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(timeout=5) as client:
            for b in range(10_000):  # bounded; stopped by the kill long before
                if stop.is_set():
                    return
                ids = [f"k{worker}-{b}-{i}" for i in range(50)]
                batch = [
                    {
                        "event_id": e,
                        "customer_id": None,
                        "ts": NOON.isoformat(),
                        "type": "visit",
                        "channel": "web",
                    }
                    for e in ids
                ]
                try:
                    r = client.post(
                        f"{server.url}/v1/events",
                        json={"events": batch},
                        headers=server.headers("events"),
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append(ids)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(acked) >= 40
    server.start()
    wanted = [e for batch in acked for e in batch]
    with sqlite3.connect(ServeSettings().db_path(server.root)) as con:
        con.execute("CREATE TEMP TABLE wanted (event_id TEXT)")
        con.executemany("INSERT INTO wanted VALUES (?)", [(e,) for e in wanted])
        found = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT e.event_id) FROM events e JOIN wanted USING (event_id)"
        ).fetchone()
    assert found == (len(wanted), len(wanted))  # every acknowledged event, exactly once
    replay = httpx.post(
        f"{server.url}/v1/events",
        json={
            "events": [{"event_id": e, "ts": NOON.isoformat(), "type": "visit"} for e in acked[0]]
        },
        headers=server.headers("events"),
    ).json()
    assert replay == {"accepted": 0, "duplicates": len(acked[0])}


def test_forget_erases_everywhere(server: Server) -> None:
    cid = _ids(server.root, 5)[4]
    event = {
        "event_id": "f-1",
        "customer_id": cid,
        "ts": NOON.isoformat(),
        "type": "visit",
        "channel": "web",
    }
    httpx.post(
        f"{server.url}/v1/events", json={"events": [event]}, headers=server.headers("events")
    )
    _decide(server, cid, "web")
    under = httpx.post(f"{server.url}/v1/customers/{cid}/forget", headers=server.headers("events"))
    assert under.status_code == 403
    done = httpx.post(f"{server.url}/v1/customers/{cid}/forget", headers=server.headers("admin"))
    assert done.status_code == 200, done.text
    assert done.json()["snapshots"] >= 1 and isinstance(done.json()["warehouse"], dict)
    gone = httpx.get(f"{server.url}/v1/customers/{cid}", headers=server.headers("profiles"))
    assert gone.status_code == 404
    assert _decide(server, cid, "web").status_code == 404
    with sqlite3.connect(ServeSettings().db_path(server.root)) as con:
        for table in ("events", "decisions", "contacts"):
            n = con.execute(f"SELECT COUNT(*) FROM {table} WHERE customer_id = ?", (cid,))
            assert n.fetchone()[0] == 0
    ws = Workspace.open(server.root)
    try:
        for table in ("customers", "events", "decisions"):
            t = ws.warehouse.table(table)
            assert t.filter(t.customer_id == cid).count().execute() == 0
    finally:
        ws.close()
    raw = b"".join(p.read_bytes() for p in (server.root / "serving").rglob("*") if p.is_file())
    assert cid.encode() not in raw
