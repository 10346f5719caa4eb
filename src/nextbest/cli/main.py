"""The ``nextbest`` command: a thin front end over the core functions.

Errors nextbest raises on purpose print as one ``Error: ...`` line and exit 1; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from nextbest.cli.console import RichReporter, err, out, print_json, table
from nextbest.config import find_workspace
from nextbest.data.ingest import LoadResult, ingest
from nextbest.data.schema import LOAD_ORDER
from nextbest.data.workspace import Workspace
from nextbest.errors import NextbestError

__all__ = ["app", "command", "main"]

app = typer.Typer(
    name="nextbest",
    help="Next-best-action engine for retailers: load data, decide, measure, learn.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def command(*args: Any, on: typer.Typer | None = None, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` whose errors print as one ``Error:`` line (``--debug``: traceback).

    ``on`` registers the command on a sub-application (``nextbest models list``) instead.
    """

    def register(func: F) -> F:
        @functools.wraps(func)
        def run(*a: Any, **kw: Any) -> Any:
            try:
                return func(*a, **kw)
            except NextbestError as exc:
                if _state["debug"]:
                    raise
                err.print(f"[red]Error:[/] {exc}", soft_wrap=True, markup=True, highlight=False)
                raise typer.Exit(1) from None
            except (typer.Exit, typer.Abort, KeyboardInterrupt):
                raise
            except Exception as exc:
                if _state["debug"]:
                    raise
                err.print(
                    f"Error: unexpected {type(exc).__name__}: {exc} (run with --debug for the "
                    "traceback)",
                    soft_wrap=True,
                    markup=False,
                )
                raise typer.Exit(2) from None

        (on or app).command(*args, **kwargs)(run)
        return func

    return register


WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        help="Workspace folder (default: $NEXTBEST_WORKSPACE or the current folder).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def open_workspace(path: Path | None) -> Workspace:
    return Workspace.open(find_workspace(path))


@command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new workspace.")] = Path("."),
    name: Annotated[str | None, typer.Option(help="Workspace name (default: folder name).")] = None,
) -> None:
    """Create a workspace: a nextbest.toml and an empty warehouse."""
    ws = Workspace.init(directory, name)
    out.print(f"Workspace [bold]{ws.config.workspace.name}[/] ready in {directory}")
    out.print(f"  configuration: {directory / 'nextbest.toml'}")
    out.print(f"  warehouse:     {directory / ws.config.warehouse.path}")


@command("ingest")
def ingest_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to load.")],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="csv, parquet, jsonl, a public dataset (hillstrom, cdnow, obd, baskets, "
            "completejourney) or a mapping named in nextbest.toml. Default: from the suffix.",
        ),
    ] = None,
    table_name: Annotated[
        str | None, typer.Option("--table", help="Target table for csv/parquet/jsonl files.")
    ] = None,
    delimiter: Annotated[str | None, typer.Option(help="Field delimiter of CSV files.")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Load files into the warehouse: validated, idempotent, all or nothing per file."""
    ws = open_workspace(workspace)
    results = ingest(
        ws.warehouse,
        paths,
        ws.config.ingest,
        fmt=format,
        table=table_name,
        delimiter=delimiter,
        reports=ws.reports,
        reporter=RichReporter(enabled=not as_json),
    )
    if as_json:
        print_json([r.to_dict() for r in results])
    else:
        print_loads(results)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def print_loads(results: list[LoadResult]) -> None:
    """The ingest summary: per file and table, what was read, loaded, quarantined, skipped."""
    rows: list[list[Any]] = []
    for r in results:
        name = Path(r.source).name
        if not r.tables:
            rows.append([name, "-", r.status, None, None, None, None])
        for tname, c in r.tables.items():
            rows.append([name, tname, r.status, c.read, c.loaded, c.quarantined, c.skipped])
    out.print(
        table(
            "Loads",
            ["file", "table", "status", "read", "loaded", "quarantined", "already there"],
            rows,
        )
    )
    for r in results:
        if r.status == "failed":
            err.print(f"[red]Error:[/] {r.message}")
        elif r.message:
            out.print(f"{Path(r.source).name}: {r.message}")
        if r.problems:
            shown = r.total("quarantined")
            out.print(f"[yellow]{shown:,} row(s) of {Path(r.source).name} quarantined[/], e.g.:")
            for p in r.problems[:5]:
                out.print(f"  {p}")
        if r.report and (r.problems or r.status == "failed"):
            out.print(f"  report: {r.report}")


@command()
def status(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Rows per warehouse table and the latest loads."""
    ws = open_workspace(workspace)
    counts = ws.warehouse.counts()
    loads = ws.warehouse.table("loads").order_by("started_ts").to_pyarrow().to_pylist()[-10:]
    if as_json:
        print_json({"tables": counts, "loads": loads})
        return
    out.print(
        table(
            f"Warehouse of {ws.config.workspace.name}",
            ["table", "rows"],
            [[k, v] for k, v in counts.items()],
        )
    )
    if loads:
        out.print(
            table(
                "Latest loads",
                ["load", "source", "format", "loaded", "quarantined"],
                [
                    [
                        x["load_id"],
                        x["source"],
                        x["format"],
                        x["rows_loaded"],
                        x["rows_quarantined"],
                    ]
                    for x in loads
                ],
            )
        )


@command()
def quarantine(
    load: Annotated[str | None, typer.Option(help="Only this load id.")] = None,
    table_name: Annotated[str | None, typer.Option("--table", help="Only this table.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 50,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rejected rows: file, line, field, what was expected and what was received."""
    ws = open_workspace(workspace)
    q = ws.warehouse.table("quarantine")
    if load:
        q = q.filter(q.load_id == load)
    if table_name:
        if table_name not in LOAD_ORDER:
            raise NextbestError(
                f"--table: expected one of {', '.join(LOAD_ORDER)}, got {table_name!r}"
            )
        q = q.filter(q.table_name == table_name)
    rows = q.order_by(["load_id", "source", "line"]).limit(limit).to_pyarrow().to_pylist()
    if as_json:
        print_json(rows)
        return
    out.print(
        table(
            "Quarantine",
            ["source", "line", "table", "field", "expected", "received"],
            [
                [
                    Path(r["source"]).name,
                    r["line"],
                    r["table_name"],
                    r["field"],
                    r["expected"],
                    r["received"],
                ]
                for r in rows
            ],
        )
    )


def register_commands() -> None:
    """Import every command module: each adds its commands to :data:`app` on import."""
    from nextbest.cli import (  # noqa: F401 - register commands
        decide,
        demo,
        experiment,
        ideas,
        insight,
        keys,
        loop,
        models,
        ope,
        report,
        serve,
        value,
    )


def main() -> None:
    """Entry point: every command, and nextbest's errors as one line and an exit code."""
    register_commands()
    app()
