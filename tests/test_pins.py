"""The pinned set is the installed set, and its known-fragile pins hold (see pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            out[name.strip().lower()] = ver.strip()
    return out


@pytest.mark.parametrize("package", ["duckdb", "ibis-framework", "sqlglot", "pyarrow", "pandas"])
def test_installed_versions_are_the_pinned_ones(package: str) -> None:
    assert version(package) == pins()[package]


def test_the_fragile_pins() -> None:
    # ibis 12 emits CREATE TABLE SQL that DuckDB rejects with sqlglot 30.x, and calls
    # fetch_arrow_table, which duckdb 2.0 removed.
    p = pins()
    assert p["sqlglot"] == "28.10.1"
    assert int(p["duckdb"].split(".")[0]) < 2
