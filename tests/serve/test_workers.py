"""Several workers on one port (:mod:`nextbest.serve.workers`): the kernel spreads connections
over them, a worker that dies is replaced, one that cannot start stops the server."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nextbest.serve.workers import reuseport_socket
from tests.serve.conftest import Shop
from tests.serve.test_http import Server, _free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("workers") / "ws"
    shutil.copytree(shop.root, root)
    srv = Server(root, f"http://127.0.0.1:{_free_port()}", keys={}, workers=2)
    srv.start()
    yield srv
    srv.stop()


def _burst(srv: Server, n: int) -> list[int]:
    """``n`` keep-alive connections opened at once, then ``GET /healthz`` twice on each: the
    process id that answered, per connection (both answers on a connection must agree)."""
    port = int(srv.url.rsplit(":", 1)[1])
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(n)]
    for c in conns:
        c.connect()
    try:
        pids = []
        for c in conns:
            seen = set()
            for _ in range(2):
                c.request("GET", "/healthz")
                got = c.getresponse()
                assert got.status == 200
                seen.add(json.loads(got.read())["worker"])
            (pid,) = seen  # keep-alive: one connection, one worker
            pids.append(pid)
        return pids
    finally:
        for c in conns:
            c.close()


def _workers_up(srv: Server, expected: int, timeout: float = 60.0) -> set[int]:
    """Wait until fresh connections have reached ``expected`` distinct workers (counting
    every worker seen since the call)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # a connection queued on a worker just killed is reset
        with contextlib.suppress(ConnectionError, http.client.HTTPException):
            seen |= set(_burst(srv, 8))
        if len(seen) >= expected:
            return seen
        time.sleep(0.2)
    raise TimeoutError(f"expected {expected} workers answering, saw {sorted(seen)}")


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_a_burst_of_connections_reaches_both_workers(server: Server) -> None:
    assert server.proc is not None
    workers = _workers_up(server, 2)
    assert workers <= _children(server.proc.pid)  # the supervisor's (and multiprocessing's
    # resource tracker)
    for _ in range(3):
        # uvicorn's shared socket gave a burst like this to whichever worker woke first; with a
        # socket per worker the kernel hashes each connection: all 16 on one worker has a
        # chance of 2 x 2**-16
        pids = _burst(server, 16)
        assert set(pids) == workers, pids


def test_a_worker_that_dies_is_replaced(server: Server) -> None:
    assert server.proc is not None
    before = _workers_up(server, 2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = _workers_up(server, 2)
    assert victim not in after and len(after & before) == 1
    assert after <= _children(server.proc.pid) and victim not in _children(server.proc.pid)


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    # settings that do not parse: the app factory raises in every worker, at start-up
    env = {**os.environ, "NEXTBEST_WORKSPACE": str(tmp_path), "NEXTBEST_SERVE_SETTINGS": "{"}
    code = (
        "from nextbest.serve.workers import serve_workers\n"
        "raise SystemExit(serve_workers('127.0.0.1', 0, 2))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr[-2000:]  # uvicorn's STARTUP_FAILURE


def test_the_reserved_port_is_shared_only_by_reuseport_sockets() -> None:
    reserved = reuseport_socket("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    try:
        other = reuseport_socket("127.0.0.1", port)  # a worker's: allowed
        other.close()
        plain = socket.socket()
        with pytest.raises(OSError):  # any other program: the port is taken
            plain.bind(("127.0.0.1", port))
        plain.close()
    finally:
        reserved.close()
