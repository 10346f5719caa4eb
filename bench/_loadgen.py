"""The load generator of ``bench_serve.py``: open-loop ``POST /v1/decide`` and event batches.

A hand-written HTTP/1.1 client over asyncio streams (uvloop's loop), with keep-alive and a
few connections, run in a process of its own (:func:`run_load`): the load generator shares the
2 cores with the server, so every millisecond of CPU it spends is taken from what is measured
(it reports its own CPU). Requests are built before the clock starts; responses are parsed
after it stops (:func:`decide_figures`).

Open loop: request ``i`` is due at ``start + i / rate`` whether or not earlier ones were
answered, and its latency is counted from that scheduled time, so queueing in the server
shows in the figures instead of slowing the generator down.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import random
import re
import resource
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

__all__ = ["EVENT_BATCH", "decide_bodies", "decide_figures", "run_load"]

EVENT_BATCH = 500  # events per POST /v1/events


def _request(path: str, host: str, key: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[int, bytes]:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    at = head.lower().find(b"content-length:")
    if at < 0:
        raise RuntimeError(f"expected a Content-Length header, got {head[:300]!r}")
    length = int(head[at + 15 : head.index(b"\r\n", at)])
    return status, await reader.readexactly(length)


def decide_bodies(n: int, customers: int, day: datetime, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    weather = ("sun", "rain", "cloud", "snow")
    device = ("mobile", "desktop", "tablet")
    noon = day + timedelta(hours=12)
    out = []
    for _ in range(n):
        at = noon + timedelta(seconds=rng.randrange(12 * 3600))
        body = {
            "customer_id": f"B{rng.randrange(customers) + 1:07d}",
            "channel": "web",
            "context": {
                "weather": rng.choice(weather),
                "device": rng.choice(device),
                "time": at.isoformat(),
                "page": "home",
            },
        }
        out.append(json.dumps(body, separators=(",", ":")).encode())
    return out


async def _open_loop(
    port: int, key: str, bodies: list[bytes], rate: float, connections: int, grace: float
) -> dict[str, Any]:
    host = f"127.0.0.1:{port}"
    requests = [_request("/v1/decide", host, key, b) for b in bodies]
    n = len(requests)
    scheduled = np.zeros(n)
    sent = np.full(n, np.nan)
    done = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int32)
    answers: list[bytes | None] = [None] * n
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    errors: list[str] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (i := await queue.get()) is not None:
                sent[i] = time.perf_counter()
                try:
                    status[i], answers[i] = await _exchange(reader, writer, requests[i])
                except (OSError, asyncio.IncompleteReadError, ValueError, RuntimeError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                done[i] = time.perf_counter()
        finally:
            writer.close()

    workers = [asyncio.ensure_future(connection()) for _ in range(connections)]
    await asyncio.sleep(0.2)  # connections open before the clock starts
    base = time.perf_counter()
    for i in range(n):
        scheduled[i] = base + i / rate
        wait = scheduled[i] - time.perf_counter()
        if wait > 0.0005:
            await asyncio.sleep(wait)
        queue.put_nowait(i)
    for _ in workers:
        queue.put_nowait(None)
    finished, pending = await asyncio.wait(workers, timeout=grace)
    for w in pending:
        w.cancel()
    for w in finished:
        if w.exception() is not None:
            errors.append(f"{type(w.exception()).__name__}: {w.exception()}")
    return {
        "scheduled": scheduled,
        "sent": sent,
        "done": done,
        "status": status,
        "answers": answers,
        "errors": errors,
    }


def _event_body(tag: str, batch: int, rng: random.Random, customers: int, day: datetime) -> bytes:
    noon = int((day + timedelta(hours=12)).timestamp())
    parts = []
    for j in range(EVENT_BATCH):
        ts = datetime.fromtimestamp(noon + rng.randrange(12 * 3600), UTC).isoformat()
        kind = "view" if j % 4 else "visit"
        parts.append(
            f'{{"event_id":"{tag}-{batch}-{j}","customer_id":"B{rng.randrange(customers) + 1:07d}"'
            f',"ts":"{ts}","type":"{kind}","channel":"web","product_id":"P-{j % 97}"}}'
        )
    return ('{"events":[' + ",".join(parts) + "]}").encode()


async def _events(
    port: int, key: str, customers: int, day: datetime, seconds: float, connections: int
) -> dict[str, Any]:
    host = f"127.0.0.1:{port}"
    accepted = duplicates = batches = 0
    latency: list[float] = []
    status: dict[int, int] = {}
    first: list[bytes] = []
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + seconds

    async def connection(c: int) -> None:
        nonlocal accepted, duplicates, batches
        rng = random.Random(c)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                body = _event_body("bench", next(counter), rng, customers, day)
                if not first:
                    first.append(body)
                t = time.perf_counter()
                code, answer = await _exchange(
                    reader, writer, _request("/v1/events", host, key, body)
                )
                latency.append(time.perf_counter() - t)
                status[code] = status.get(code, 0) + 1
                if code == 200:
                    got = json.loads(answer)
                    accepted += got["accepted"]
                    duplicates += got["duplicates"]
                batches += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(connection(c) for c in range(connections))), seconds + 60
    )
    elapsed = time.perf_counter() - started
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    code, answer = await _exchange(reader, writer, _request("/v1/events", host, key, first[0]))
    writer.close()
    return {
        "accepted": accepted,
        "duplicates": duplicates,
        "batches": batches,
        "elapsed": elapsed,
        "latency": latency,
        "status": status,
        "replay_status": code,
        "replay": json.loads(answer) if code == 200 else answer.decode(errors="replace"),
    }


def _load_child(job: dict[str, Any], queue: Any) -> None:
    """The load generator's process: one job, its results (and its own CPU) on ``queue``."""
    runner: Any
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop comes with uvicorn[standard]; asyncio's loop works too
        runner = asyncio.run
    try:
        day = datetime.fromisoformat(job["day"])
        if job["kind"] == "decide":
            n = int(job["rate"] * job["seconds"])
            bodies = decide_bodies(n, job["customers"], day, job["seed"])
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            got = runner(
                _open_loop(
                    job["port"], job["key"], bodies, job["rate"], job["connections"], job["grace"]
                )
            )
        else:
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            got = runner(
                _events(
                    job["port"],
                    job["key"],
                    job["customers"],
                    day,
                    job["seconds"],
                    job["connections"],
                )
            )
        now = resource.getrusage(resource.RUSAGE_SELF)
        got["client_cpu"] = now.ru_utime - cpu.ru_utime + now.ru_stime - cpu.ru_stime
        queue.put(got)
    except BaseException as exc:  # reported by the parent
        queue.put({"failed": f"{type(exc).__name__}: {exc}"})


def run_load(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load_child, args=(job, queue), daemon=True)
    proc.start()
    try:
        got: dict[str, Any] = queue.get(timeout=timeout)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
    if "failed" in got:
        raise RuntimeError(f"the load generator failed: {got['failed']}")
    return got


# -- figures ------------------------------------------------------------------------------------


def decide_figures(got: dict[str, Any]) -> dict[str, Any]:
    ok = ~np.isnan(got["done"])
    # a request still unanswered when the load generator gave up has an unbounded latency
    latency = np.where(ok, got["done"] - got["scheduled"], np.inf) * 1000
    service = (got["done"] - got["sent"])[ok] * 1000
    codes: dict[int, int] = {}
    for s in got["status"][ok]:
        codes[int(s)] = codes.get(int(s), 0) + 1
    with_offers = held_out = capped = 0
    reasons: dict[str, int] = {}
    for raw, code in zip(got["answers"], got["status"], strict=True):
        if raw is None or code != 200:
            continue
        body = json.loads(raw)
        with_offers += bool(body["offers"])
        held_out += bool(body["held_out"])
        for r in body["reasons"]:
            key = re.sub(r"\d+", "N", r.split(" excluded")[0])
            if "contact" in r:
                capped += 1
            reasons[key] = reasons.get(key, 0) + 1
    # answers per second while they came back (open loop: at most the offered rate)
    ends = np.sort(got["done"][ok & (got["status"] == 200)])
    span = ends[-1] - ends[0] if len(ends) > 1 else np.inf
    return {
        "n": len(got["status"]),
        "answered": int(ok.sum()),
        "p50": float(np.percentile(latency, 50, method="inverted_cdf")),
        "p95": float(np.percentile(latency, 95, method="inverted_cdf")),
        "p99": float(np.percentile(latency, 99, method="inverted_cdf")),
        "max": float(latency.max()),
        "service_p50": float(np.percentile(service, 50)),
        "service_p99": float(np.percentile(service, 99)),
        "throughput": float((len(ends) - 1) / span),
        "codes": codes,
        "non_200": int(ok.sum() - codes.get(200, 0)),
        "unanswered": int((~ok).sum()),
        "with_offers": with_offers,
        "held_out": held_out,
        "capped": capped,
        "reasons": sorted(reasons.items(), key=lambda kv: -kv[1])[:4],
        "errors": got["errors"][:3],
        "client_cpu": got["client_cpu"],
    }
