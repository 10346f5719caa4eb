"""Workspace configuration: ``nextbest.toml`` read into pydantic models.

Unknown keys are errors that name the key, so a typo never turns silently into a default::

    [workspace]
    name = "my-shop"

    [warehouse]
    backend = "duckdb"            # the only backend wired up today; queries are Ibis
    path = "warehouse.duckdb"     # relative to the workspace
    memory_limit = "4GB"          # DuckDB spills to disk (in .tmp/ of the workspace) beyond it

    [ingest]
    batch_rows = 250000           # rows read and validated at a time
    default_timezone = "UTC"      # for timestamps without an offset; unset: such rows are rejected
    reports = "reports"           # where load reports are written

    [ingest.mappings.shop_orders]   # use with: nextbest ingest orders.csv --format shop_orders
    table = "events"
    file_type = "csv"
    delimiter = ";"
    columns = { order_no = "event_id", client = "customer_id", paid_at = "ts", total = "amount" }
    constants = { type = "purchase" }
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nextbest.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "Config",
    "IngestConfig",
    "Mapping",
    "Segmentation",
    "WarehouseConfig",
    "WorkspaceConfig",
    "default_config_text",
    "find_workspace",
    "load_config",
    "read_toml",
    "validation_message",
]

CONFIG_FILE = "nextbest.toml"
WORKSPACE_ENV = "NEXTBEST_WORKSPACE"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkspaceConfig(_Strict):
    name: str = "nextbest"


class WarehouseConfig(_Strict):
    backend: Literal["duckdb"] = "duckdb"
    path: str = "warehouse.duckdb"
    # DuckDB spills to disk beyond this, so large loads run in bounded memory.
    memory_limit: str = Field("4GB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")


class Mapping(_Strict):
    """How a retailer's own file layout maps onto a canonical table."""

    table: Literal["customers", "products", "offers", "decisions", "events"]
    file_type: Literal["csv", "parquet", "jsonl"] = "csv"
    delimiter: str = Field(",", min_length=1, max_length=1)
    columns: dict[str, str] = Field(default_factory=dict)
    constants: dict[str, str] = Field(default_factory=dict)


class IngestConfig(_Strict):
    batch_rows: int = Field(250_000, ge=1)
    default_timezone: str | None = None
    reports: str = "reports"
    mappings: dict[str, Mapping] = Field(default_factory=dict)

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}, e.g. 'UTC'") from None
        return value


class Segmentation(_Strict):
    """A segmentation for a purpose: the customer 360 columns it clusters on, and how."""

    purpose: str = Field(min_length=1)
    features: list[str] = Field(min_length=1)
    method: Literal["kmeans", "gmm"] = "kmeans"
    k: int | None = Field(None, ge=2, le=50)
    k_max: int = Field(8, ge=2, le=50)
    random_state: int = 0


class Config(_Strict):
    workspace: WorkspaceConfig = Field(default_factory=lambda: WorkspaceConfig())
    warehouse: WarehouseConfig = Field(default_factory=lambda: WarehouseConfig())
    ingest: IngestConfig = Field(default_factory=lambda: IngestConfig())
    segmentations: dict[str, Segmentation] = Field(default_factory=dict)


def default_config_text(name: str) -> str:
    """The nextbest.toml that ``nextbest init`` writes."""
    return (
        "# nextbest workspace configuration; unknown keys are errors.\n"
        f'[workspace]\nname = "{name}"\n\n'
        '[warehouse]\nbackend = "duckdb"\npath = "warehouse.duckdb"\n'
        'memory_limit = "4GB"   # DuckDB spills to disk beyond this\n\n'
        "[ingest]\nbatch_rows = 250000\n"
        '# default_timezone = "UTC"   # for timestamps without an offset\n'
        'reports = "reports"\n'
    )


def read_toml(path: Path, missing: str) -> dict[str, Any]:
    """A TOML file's tables; a missing file says ``missing``, a malformed one what is wrong."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {missing}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(path: Path) -> Config:
    """Read and validate a nextbest.toml; errors name the file and the key."""
    raw = read_toml(path, f"not found; run 'nextbest init {path.parent}' to create a workspace")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(str(path), exc)) from None


def validation_message(where: str, exc: ValidationError) -> str:
    """One line naming every bad key of a configuration: unknown, or what was wrong with it."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"'{key}': {message} (got {err.get('input')!r})")
    return f"{where}: " + "; ".join(problems)


def find_workspace(explicit: Path | None) -> Path:
    """The workspace folder: the one given, else $NEXTBEST_WORKSPACE, else the current one."""
    if explicit is not None:
        return explicit
    env = os.environ.get(WORKSPACE_ENV)
    return Path(env) if env else Path.cwd()
