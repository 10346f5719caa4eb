"""A workspace: a folder with a ``nextbest.toml``, its warehouse and its reports.

It is the one object the front ends (CLI, API, dashboard) open, in the manner of SQLMesh's
``Context``: they all call the same core functions through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from nextbest.config import CONFIG_FILE, Config, default_config_text, load_config
from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError

__all__ = ["Workspace"]


@dataclass
class Workspace:
    """An opened workspace: its folder, validated configuration and warehouse."""

    root: Path
    config: Config

    @classmethod
    def init(cls, root: Path, name: str | None = None) -> Workspace:
        """Create a workspace in ``root`` (kept as it is if one exists) and its warehouse."""
        root.mkdir(parents=True, exist_ok=True)
        path = root / CONFIG_FILE
        if not path.exists():
            path.write_text(default_config_text(name or root.resolve().name), encoding="utf-8")
        ws = cls.open(root)
        ws.warehouse  # noqa: B018 - creates the warehouse file and its tables
        return ws

    @classmethod
    def open(cls, root: Path) -> Workspace:
        """Open an existing workspace; a clear error if there is none."""
        path = root / CONFIG_FILE
        if not path.exists():
            raise ConfigError(
                f"{root}: no {CONFIG_FILE} here, so this is not a nextbest workspace; create one "
                f"with 'nextbest init {root}', or pass --workspace DIR (or set NEXTBEST_WORKSPACE)"
            )
        return cls(root, load_config(path))

    @cached_property
    def warehouse(self) -> Warehouse:
        return Warehouse.connect(self.config.warehouse, self.root)

    @property
    def models(self) -> Path:
        """Folder of the model store (trained models, one folder per kind and version)."""
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / self.config.ingest.reports

    def close(self) -> None:
        if "warehouse" in self.__dict__:
            self.warehouse.close()
