"""``train``: each kind from the warehouse into the store, with held-out metrics that hold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError, DataError
from nextbest.features.experiment_features import control_arm, experiment_frame
from nextbest.models import ModelStore, TrainOptions, train
from tests.conftest import shared_data

HILLSTROM = "Kevin_Hillstrom_MineThatData_E-MailAnalytics_DataMiningChallenge_2008.03.20.csv"


@pytest.fixture(scope="module")
def hillstrom(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace.init(tmp_path_factory.mktemp("hillstrom") / "ws")
    path = shared_data("hillstrom", HILLSTROM)
    ingest(ws.warehouse, [path], ws.config.ingest, fmt="hillstrom")
    yield ws
    ws.close()


@pytest.mark.shared_data
def test_experiment_rows_reproduce_the_published_rates(hillstrom: Workspace) -> None:
    assert control_arm(hillstrom.warehouse, "hillstrom-2008") == "No E-Mail"
    visits = experiment_frame(hillstrom.warehouse, "hillstrom-2008", outcome="visit")
    assert len(visits) == 64_000
    rate = visits.groupby("arm").y.mean()
    # Hillstrom (2008): visit rates 18.28% (men's e-mail), 15.14% (women's), 10.62% (none)
    assert rate.round(4).to_dict() == {
        "Mens E-Mail": 0.1828,
        "No E-Mail": 0.1062,
        "Womens E-Mail": 0.1514,
    }
    spend = experiment_frame(hillstrom.warehouse, "hillstrom-2008", outcome="revenue")
    raw = pd.read_csv(shared_data("hillstrom", HILLSTROM))
    assert spend.y.sum() == pytest.approx(raw.spend.sum())  # 67,258.13 over 578 buyers
    assert (spend.y > 0).sum() == (raw.spend > 0).sum()
    assert {"attr_recency", "attr_history", "attr_channel"} <= set(visits.columns)
    assert visits.attr_history.dtype.kind == "f" and visits.attr_channel.dtype.kind != "f"


@pytest.mark.shared_data
@pytest.mark.slow
def test_train_uplift_on_hillstrom(hillstrom: Workspace, tmp_path: Path) -> None:
    options = TrainOptions(uplift_outcome="visit", n_jobs=1)
    manifest = train(hillstrom.warehouse, ModelStore(tmp_path), "uplift", options).made[0]
    m = manifest.metrics
    assert manifest.params["treatments"] == ["Mens E-Mail", "Womens E-Mail"]
    assert m["rows"] == 64_000 and 18_000 < m["held_out_rows"] < 20_500
    for arm in ("Mens E-Mail", "Womens E-Mail"):
        # the average predicted effect is the experiment's measured effect
        assert abs(m[f"{arm}: mean predicted effect"] - m[f"{arm}: difference in means"]) < 0.01
        assert m[f"{arm}: qini"] > 0
    # measured: women's e-mail Qini 0.00234 against a random 95th percentile of 0.00168
    assert m["Womens E-Mail: qini"] > m["Womens E-Mail: random qini p95"]


def test_uplift_needs_an_experiment_with_a_control(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no experiment with a control arm"):
        train(workspace.warehouse, ModelStore(tmp_path), "uplift")
    with pytest.raises(DataError, match="no decisions in experiment 'spring'; experiments: none"):
        train(
            workspace.warehouse, ModelStore(tmp_path), "uplift", TrainOptions(experiment="spring")
        )
    with pytest.raises(ConfigError, match="unknown model kind 'upflit'; expected one of"):
        train(workspace.warehouse, ModelStore(tmp_path), "upflit")
