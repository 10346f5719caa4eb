"""Shared fixtures: seeded, and session-scoped where they are expensive."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or a skip with the reason when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public datasets not found at {SHARED_DATA} (../shared/data is absent)")
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def cdnow_master(ws: Workspace) -> pd.DataFrame:
    """Load CDNOW master into ``ws`` and return the raw file as pandas reads it, independently."""
    path = shared_data("cdnow", "CDNOW_master.txt")
    ingest(ws.warehouse, [path], ws.config.ingest, fmt="cdnow")
    raw = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str, "date": str})
    raw["ts"] = pd.to_datetime(raw.date, format="%Y%m%d", utc=True)
    raw["customer_id"] = "cdnow-" + raw.customer_id
    return raw


def load_texts(ws: Workspace, files: dict[str, str]) -> Workspace:
    """Write each ``name -> text`` into ``ws`` and ingest them; every row must load."""
    for name, text in files.items():
        (ws.root / name).write_text(text)
    results = ingest(ws.warehouse, [ws.root / n for n in files], ws.config.ingest)
    assert all(r.total("quarantined") == 0 for r in results), [r.problems for r in results]
    return ws


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    yield ws
    ws.close()


@pytest.fixture(scope="session")
def sim_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    """20,000 simulated members over 28 days (seed 5), loaded; and the simulator's folder."""
    from nextbest.simulate import SimConfig, simulate

    root = tmp_path_factory.mktemp("simws")
    simulate(SimConfig(n_customers=20_000, days=28, seed=5), root / "sim")
    ws = Workspace.init(root / "ws")
    ingest(ws.warehouse, [root / "sim"], ws.config.ingest)
    yield ws, root / "sim"
    ws.close()


# -- scheduling under pytest-xdist ------------------------------------------------------------
# `make test` runs two workers with --dist loadscope (pyproject.toml): every test of a group
# runs on one worker. A group is a module, so its module-scoped fixtures are built once rather
# than on each worker that got some of its tests; modules that share an expensive build (a
# session fixture, or a workspace built once per process) are one group, so that it is built
# on one worker only. (xdist's loadgroup would do this with marks, but its group suffix is lost
# on pytest 9's node ids, so the scheduler below reads the groups from here.)
SHARED_BUILDS = {
    "sim_workspace": (  # tests/conftest.py
        "tests/measure/test_funnels.py",
        "tests/models/test_affinity.py",
        "tests/models/test_propensity.py",
    ),
    "holdout_sim": (  # hillstrom_root and holdout_sim_root in tests/measure/test_experiment.py
        "tests/cli/test_experiment_cli.py",
        "tests/measure/test_experiment.py",
        "tests/measure/test_ideas.py",
        "tests/measure/test_roi.py",
    ),
    "simulator_runs": (  # run and holdout_run in tests/simulate/conftest.py
        "tests/simulate/test_consistency.py",
        "tests/simulate/test_run.py",
        "tests/simulate/test_truth.py",
    ),
}
# each session fixture and its group: a module using one elsewhere is warned about
_SESSION_BUILD_GROUP = {
    "sim_workspace": "sim_workspace",
    "run": "simulator_runs",
    "holdout_run": "simulator_runs",
}
_GROUP_OF_MODULE = {m: name for name, modules in SHARED_BUILDS.items() for m in modules}
# The longest groups start first, so that the last to run are short and the two workers end
# together; the rest keep their collection order. (An older quiet run: the uplift fixtures
# 108 s, propensity's 108 s, the CLI's demo 114 s, the loop's 76 s, HiGHS on 40 offers 42 s.)
LONGEST_FIRST = (
    "tests/models/test_uplift.py",
    "sim_workspace",
    "tests/cli/test_cli.py",
    "tests/measure/test_loop.py",
    "holdout_sim",
    "simulator_runs",
    "tests/decide/test_allocation.py",
    "tests/decide/test_decide.py",
)


def scheduling_group(nodeid: str) -> str:
    """The scheduling group of a test: its module, or the shared build its module uses."""
    module = nodeid.split("::")[0]
    return _GROUP_OF_MODULE.get(module, module)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(scheduling_group(item.nodeid), len(first_seen))
        for fixture, name in _SESSION_BUILD_GROUP.items():
            if fixture in item.fixturenames and scheduling_group(item.nodeid) != name:
                message = f"{item.nodeid.split('::')[0]} uses the session fixture {fixture}: "
                message += f"list it under {name!r} in SHARED_BUILDS (tests/conftest.py)"
                warnings.warn(pytest.PytestWarning(message), stacklevel=1)

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = scheduling_group(item.nodeid)
        head = LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
        return head, first_seen[name]

    items.sort(key=rank)  # stable: a group's tests keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedBuildScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scheduling_group(nodeid)

    return SharedBuildScheduling(config, log)
