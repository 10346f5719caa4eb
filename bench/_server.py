"""The server side of ``bench_serve.py``: ``nextbest serve`` as a process group, its CPU and
memory read from ``/proc`` (the server and every uvicorn worker)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Server", "cpu_seconds"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group(pgid: int) -> list[int]:
    """The processes of a process group (the server and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            pids.append(int(entry.name))
    return sorted(pids)


def _proc_kb(pid: int, path: str, keys: tuple[str, ...]) -> dict[str, int]:
    out = dict.fromkeys(keys, 0)
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in out:
                out[name] = int(rest.split()[0])
    except OSError:
        pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


@dataclass
class Server:
    ws: Path
    workers: int
    log: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, snapshot: Path) -> float:
        started = time.perf_counter()
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nextbest",
                "serve",
                "--workspace",
                str(self.ws),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env={**os.environ, "NO_COLOR": "1"},
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            start_new_session=True,  # its own process group: a signal reaches every worker
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server stopped: {self.log.read_text()[-3000:]}")
            if self._ready() and len(self.deciders(snapshot)) >= self.workers:
                return time.perf_counter() - started
            time.sleep(0.2)
        raise TimeoutError(f"the server was not ready in 120 s; see {self.log}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as got:
                return bool(got.status == 200)
        except OSError:
            return False

    def pids(self) -> list[int]:
        return _group(self.proc.pid) if self.proc is not None else []

    def deciders(self, snapshot: Path) -> list[int]:
        """Processes that have mapped the snapshot: uvicorn's workers, each with its app."""
        needle = str(snapshot / "id_hash.npy")
        found = []
        for pid in self.pids():
            try:
                if needle in Path(f"/proc/{pid}/maps").read_text():
                    found.append(pid)
            except OSError:
                continue
        return found

    def memory(self) -> dict[str, float]:
        """GB over the server's processes: resident (file pages shared between workers count
        once per worker), of which anonymous and file-backed, and proportional (PSS: shared
        pages split between the processes that map them, so the sum is the true footprint)."""
        total = dict.fromkeys(("rss", "anon", "file", "pss"), 0.0)
        for pid in self.pids():
            status = _proc_kb(pid, "status", ("VmRSS", "RssAnon", "RssFile", "RssShmem"))
            total["rss"] += status["VmRSS"] / 1024**2
            total["anon"] += status["RssAnon"] / 1024**2
            total["file"] += (status["RssFile"] + status["RssShmem"]) / 1024**2
            total["pss"] += _proc_kb(pid, "smaps_rollup", ("Pss",))["Pss"] / 1024**2
        return total

    def stop(self) -> None:
        """SIGTERM to the process group (the server and its workers), SIGKILL after 20 s."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        finally:
            self._log_file.close()
