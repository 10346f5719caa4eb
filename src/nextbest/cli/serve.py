"""``nextbest serve``, ``snapshot``, ``sync`` and ``forget``: the real-time service's commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from nextbest.cli.console import RichReporter, err, out, print_json, table
from nextbest.cli.decide import day_after_data
from nextbest.cli.main import JsonOpt, WorkspaceOpt, command, open_workspace
from nextbest.config import find_workspace
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError
from nextbest.serve.erasure import forget_everywhere
from nextbest.serve.online import serving_campaigns
from nextbest.serve.settings import ServeSettings
from nextbest.serve.snapshot import build_snapshot
from nextbest.serve.store import OnlineStore
from nextbest.serve.sync import sync
from nextbest.serve.workers import serve_workers

__all__ = ["forget_cmd", "make_snapshot", "run_server", "serve_cmd", "snapshot_cmd", "sync_cmd"]


def make_snapshot(ws: Workspace, date: str | None, *, quiet: bool = False) -> Path:
    """Build the snapshot of ``date`` (default: the day after the data) and make it current."""
    day = day_after_data(ws, date)
    return build_snapshot(
        ws, day, serving_campaigns(ws.root), reporter=RichReporter(enabled=not quiet)
    )


@command("snapshot")
def snapshot_cmd(
    date: Annotated[
        str | None, typer.Option(help="Day of the snapshot (default: after the data).")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the customer 360 snapshot the service reads, and make it current."""
    ws = open_workspace(workspace)
    folder = make_snapshot(ws, date, quiet=as_json)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    if as_json:
        print_json({k: meta[k] for k in ("name", "as_of", "customers", "offers", "model")})
        return
    out.print(
        f"Snapshot [bold]{meta['name']}[/] as of {meta['as_of'][:10]}: {meta['customers']:,} "
        f"customers, {meta['offers']} offers, model {meta['model']} ({folder})"
    )


@command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    local: Annotated[
        bool,
        typer.Option(help="Serve read-only routes without a key (only on 127.0.0.1)."),
    ] = False,
    rebuild: Annotated[
        bool, typer.Option("--snapshot/--no-snapshot", help="Build a fresh snapshot first.")
    ] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Run the HTTP API: decisions, events, profiles, erasure (OpenAPI at /docs)."""
    if workers < 1:
        raise ConfigError(f"--workers: expected a whole number >= 1, got {workers}")
    if local and host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"--local serves without keys, so only on 127.0.0.1; got --host {host}")
    root = find_workspace(workspace)
    pointer = root / "serving" / "snapshots" / "CURRENT"
    if rebuild or not pointer.exists():
        ws = Workspace.open(root)
        try:
            make_snapshot(ws, None)
        finally:
            ws.close()  # the service never holds the warehouse: batch jobs need it
    settings = ServeSettings(host=host, port=port, workers=workers, local=local)
    out.print(f"nextbest serving {root} on http://{host}:{port} (OpenAPI: /docs)")
    run_server(root, settings)


def run_server(root: Path, settings: ServeSettings) -> None:
    """Serve the workspace at ``root`` under uvicorn, in the foreground, until interrupted.

    Several workers each listen on a socket of their own (:mod:`nextbest.serve.workers`), so
    the kernel spreads connections over them; uvicorn's own ``workers`` shares one socket, and
    a burst of connections lands on one worker.
    """
    import uvicorn

    os.environ["NEXTBEST_WORKSPACE"] = str(root.resolve())
    os.environ["NEXTBEST_SERVE_SETTINGS"] = settings.model_dump_json()
    if settings.workers > 1:
        code = serve_workers(settings.host, settings.port, settings.workers)
        if code:
            raise typer.Exit(code)
        return
    uvicorn.run(
        "nextbest.serve.app:factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,  # no personal data in logs: paths carry customer ids
    )


@command("sync")
def sync_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Take the service's events and decisions into the warehouse; apply queued erasures."""
    ws = open_workspace(workspace)
    store = OnlineStore(ServeSettings().db_path(ws.root))
    result = sync(ws, store, reporter=RichReporter(enabled=not as_json))
    counts = {t: vars(c) for t, c in result.tables.items()}
    if as_json:
        print_json(
            {
                "tables": counts,
                "files": [str(f) for f in result.files],
                "erased": result.erased,
                "watermarks": result.watermarks,
                "failed": result.failed,
            }
        )
    else:
        out.print(
            table(
                "Synced from the service",
                ["table", "read", "loaded", "quarantined", "already there"],
                [[t, c.read, c.loaded, c.quarantined, c.skipped] for t, c in result.tables.items()],
            )
        )
        out.print(f"{result.erased} queued erasure(s) applied to the warehouse")
    for problem in result.failed:
        err.print(f"[red]Error:[/] {problem}")
    if not result.ok:
        raise typer.Exit(1)


@command("forget")
def forget_cmd(
    customer_id: Annotated[str, typer.Argument(help="The customer to erase.")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase a customer's personal data and events everywhere, keeping a record that it happened."""
    ws = open_workspace(workspace)
    store = OnlineStore(ServeSettings().db_path(ws.root))
    result = forget_everywhere(ws.root, store, customer_id, ws)
    if as_json:
        print_json(result)
        return
    out.print(
        f"Erased customer {customer_id}: online store {result['online_store']}, "
        f"{result['snapshots']} snapshot(s), warehouse {result['warehouse']}"
    )
