"""Several uvicorn workers on one port, each with its own listening socket (``SO_REUSEPORT``).

uvicorn's own ``--workers`` shares one listening socket between its worker processes, and the
worker whose event loop wakes first accepts every connection queued at that moment: a client
that opens its keep-alive connections in a burst (a load balancer, a pool warming up) lands
them all on one worker, which then runs at a full core while the others idle. Measured with 8
connections on 2 workers: all 8 on one, 317-404 answers/s instead of 500, p99 3.5-8.6 s.

:func:`serve_workers` runs ``workers`` processes that each bind their own socket to the same
host and port with ``SO_REUSEPORT`` and listen on it; the kernel then picks a socket for every
new connection by a hash of its addresses and ports, whatever the accept timing. A worker
listens once its app is built (uvicorn starts listening after loading the app), so no
connection is queued on a worker that cannot answer yet.

The parent is a small supervisor, the parts of ``uvicorn.supervisors.Multiprocess`` that
matter here:

* it reserves the port with a bound socket that does not listen (so ``port=0`` works: the
  workers bind the port the kernel chose, and no other program can take it meanwhile; a
  socket that does not listen gets no connections);
* SIGINT and SIGTERM stop the workers (SIGTERM to each: uvicorn's graceful shutdown), then the
  parent, which waits for them;
* a worker that dies is replaced; one that fails at start-up (uvicorn's ``STARTUP_FAILURE``
  exit code, also when the app factory raises: the app cannot be built, which a new worker
  would not change) stops everything, and the parent exits with that code.

Left out: uvicorn's health-check pipe (a thread in each worker answering pings; it answers
while the event loop is stuck, so it catches little), and SIGHUP/SIGTTIN/SIGTTOU.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import socket
import sys
import threading
from multiprocessing.process import BaseProcess

__all__ = ["reuseport_socket", "serve_workers"]

log = logging.getLogger(__name__)

_APP = "nextbest.serve.app:factory"
_POLL_S = 0.5
_STOP_WAIT_S = 20.0


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, not listening yet."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _worker(host: str, port: int) -> None:  # pragma: no cover - runs in a child process
    """One worker: its own socket on ``host:port``, uvicorn serving the app on it."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    # bound, not listening: uvicorn listens on it (asyncio's create_server, with the config's
    # backlog) after the app is built, and only then does the kernel hand it connections
    sock = reuseport_socket(host, port)
    config = uvicorn.Config(
        _APP,
        factory=True,
        log_level="warning",
        access_log=False,  # no personal data in logs: paths carry customer ids
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except Exception:
        if server.started:
            raise
        # uvicorn exits with STARTUP_FAILURE when it cannot import the app, not when the
        # factory raises: either way a new worker would fail the same
        log.exception("the worker could not build the app")
        sys.exit(STARTUP_FAILURE)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def serve_workers(host: str, port: int, workers: int) -> int:
    """Serve the app (configured by the environment, as :func:`nextbest.serve.app.factory`
    reads it) from ``workers`` processes on ``host:port``, until SIGINT or SIGTERM.

    Returns the exit code: 0 after a signal, uvicorn's ``STARTUP_FAILURE`` if a worker could
    not start.
    """
    from uvicorn.config import STARTUP_FAILURE

    reserved = reuseport_socket(host, port)
    port = reserved.getsockname()[1]
    context = mp.get_context("spawn")  # a fresh interpreter: nothing of the parent inherited
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }

    def start() -> BaseProcess:
        process = context.Process(target=_worker, args=(host, port), name="nextbest-worker")
        process.start()
        log.info("worker %s started on %s:%s", process.pid, host, port)
        return process

    code = 0
    processes = [start() for _ in range(workers)]
    try:
        while not stop.wait(_POLL_S):
            for i, process in enumerate(processes):
                if process.is_alive():
                    continue
                process.join()
                if process.exitcode == STARTUP_FAILURE:
                    log.error("worker %s failed to start; stopping", process.pid)
                    code = STARTUP_FAILURE
                    stop.set()
                    break
                log.warning("worker %s died (exit code %s); replacing it", *_who(process))
                processes[i] = start()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests under way
        for process in processes:
            process.join(_STOP_WAIT_S)
            if process.is_alive():
                process.kill()
                process.join()
        reserved.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _who(process: BaseProcess) -> tuple[int | None, int | None]:
    return process.pid, process.exitcode
