"""``nextbest keys``: the decision service's API keys (create, list, revoke).

Keys live in the service's SQLite file, ``WORKSPACE/serving/online.db``; only their SHA-256 is
stored, so a key is printed once, when it is created, and never again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from nextbest.cli.console import err, out, print_json, table
from nextbest.cli.main import JsonOpt, WorkspaceOpt, app, command, open_workspace
from nextbest.errors import ConfigError
from nextbest.serve.security import SCOPES, KeyInfo, KeyStore
from nextbest.serve.settings import ServeSettings

__all__ = ["create_cmd", "keys_app", "list_cmd", "print_keys", "revoke_cmd"]

keys_app = typer.Typer(
    help="API keys of the decision service: create, list, revoke.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

_NOT_AGAIN = "Keep it now: it will not be shown again (only its SHA-256 is stored)."


@contextmanager
def _store(workspace: WorkspaceOpt) -> Iterator[KeyStore]:
    ws = open_workspace(workspace)
    store = KeyStore(ServeSettings().db_path(ws.root), cache_ttl=0)
    try:
        yield store
    finally:
        store.close()


@command("create", on=keys_app)
def create_cmd(
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. 'web shop'.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            "-s",
            help=f"A scope the key has: {', '.join(SCOPES)} (admin implies all). Repeat it, or "
            "separate scopes with commas.",
            show_default=False,
        ),
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key and print it, once."""
    scopes = [s.strip() for given in scope or [] for s in given.split(",") if s.strip()]
    if not scopes:
        raise ConfigError(f"--scope: expected at least one of {', '.join(SCOPES)}, got none")
    with _store(workspace) as store:
        info, plaintext = store.create(name, scopes)
    if as_json:
        print_json({**info.to_dict(), "key": plaintext, "warning": _NOT_AGAIN})
        return
    out.print(
        f"Created API key {info.key_id} ({info.name!r}) with the scopes {', '.join(info.scopes)}:",
        markup=False,
    )
    out.print(f"  {plaintext}", markup=False, soft_wrap=True)
    err.print(f"[yellow]{_NOT_AGAIN}[/]")


@command("list", on=keys_app)
def list_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Every API key: id, prefix, name, scopes, when created and revoked (never the key)."""
    with _store(workspace) as store:
        keys = store.list()
    if as_json:
        print_json([k.to_dict() for k in keys])
    elif not keys:
        out.print("No API keys yet: create one with 'nextbest keys create NAME --scope decide'.")
    else:
        print_keys(keys)


def print_keys(keys: list[KeyInfo]) -> None:
    rows = [
        [k.key_id, k.prefix + "...", k.name, ", ".join(k.scopes), k.created_ts, k.revoked_ts]
        for k in keys
    ]
    out.print(table("API keys", ["key id", "prefix", "name", "scopes", "created", "revoked"], rows))


@command("revoke", on=keys_app)
def revoke_cmd(
    key: Annotated[str, typer.Argument(help="The key's id or prefix (see 'nextbest keys list').")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API key: running services refuse it within a few seconds."""
    with _store(workspace) as store:
        info = store.revoke(key)
    if as_json:
        print_json(info.to_dict())
        return
    out.print(
        f"Revoked {info.key_id} ({info.prefix}..., {info.name!r}) at {info.revoked_ts}; a "
        "running service refuses it within seconds.",
        markup=False,
    )
