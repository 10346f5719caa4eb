"""The idea backlog: audiences, privacy, relevance and value against pandas on the warehouse."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import nextbest.cli.ideas  # noqa: F401 - registers the command for the in-process runner
from nextbest.cli.main import app
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError
from nextbest.features.customer360 import customer_features
from nextbest.measure.ideas import parse_ideas, score_ideas
from tests.measure.test_experiment import holdout_sim_root

AS_OF = datetime(2026, 1, 20, tzinfo=UTC)
LAPSED = {
    "name": "win back",
    "channel": "email",
    "eligibility": "recency_days > 7 and frequency_90 >= 1",
    "data": ["purchase_history"],
    "feasibility": 5,
    "expected_lift": 0.1,
    "margin_rate": 0.3,
    "contact_cost": 0.002,
    "horizon_days": 30,
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.open(holdout_sim_root(tmp_path_factory) / "ws")
    yield workspace
    workspace.close()


@pytest.fixture(scope="module")
def members(ws: Workspace) -> pd.DataFrame:
    features = customer_features(ws.warehouse, AS_OF).to_pandas()
    customers = ws.warehouse.table("customers").to_pandas()
    ev = ws.warehouse.table("events").to_pandas()
    gone = set(ev[(ev.type == "unsubscribe") & (ev.ts <= AS_OF)].customer_id)
    out = features.merge(customers, on="customer_id")
    out["unsubscribed"] = out.customer_id.isin(gone)
    return out


def test_audience_privacy_and_value_match_pandas(ws: Workspace, members: pd.DataFrame) -> None:
    profiling = {**LAPSED, "name": "profiled", "data": ["profiling"], "feasibility": 2}
    spec = parse_ideas({"idea": [LAPSED, profiling]})
    got = {s.name: s for s in score_ideas(ws.warehouse, spec, AS_OF)}
    audience = (members.recency_days > 7) & (members.frequency_90 >= 1)
    reachable = audience & members.consent_email.fillna(False) & ~members.unsubscribed
    win = got["win back"]
    assert win.audience == audience.sum() > 100
    assert win.reachable == reachable.sum() < win.audience
    assert win.usable == win.reachable
    assert win.privacy == pytest.approx(members.consent_email.fillna(False)[audience].mean())
    sub = members[reachable]
    p = min(1.0, sub.frequency_90.mean() / 90 * 30)
    margin = sub.aov.mean() * 0.3
    assert win.value == pytest.approx(len(sub) * (p * 0.1 * margin - 0.002), rel=1e-9)
    assert win.value > 0
    # profiling data needs consent_profiling too: a smaller usable audience, lower privacy
    covered = members.consent_email.fillna(False) & members.consent_profiling.fillna(False)
    prof = got["profiled"]
    assert prof.usable == (reachable & covered).sum() < win.usable
    assert prof.privacy == pytest.approx(covered[audience].mean())
    assert set(prof.consents_needed) == {"consent_profiling", "consent_email"}
    # the same idea, more feasible and more private, ranks first
    assert win.rank == 1 and prof.rank == 2 and win.priority > prof.priority


def test_relevance_is_the_audience_against_the_average(
    ws: Workspace, members: pd.DataFrame
) -> None:
    top = members.top_category.value_counts().index[0]
    fans = {**LAPSED, "name": "fans", "eligibility": f'top_category == "{top}"', "category": top}
    everyone = {**fans, "name": "everyone", "eligibility": "not_null(customer_id)"}
    got = {
        s.name: s for s in score_ideas(ws.warehouse, parse_ideas({"idea": [fans, everyone]}), AS_OF)
    }
    share = (members.top_category == top).mean()
    assert got["fans"].relevance == pytest.approx(1 / share)
    assert got["everyone"].relevance == pytest.approx(1.0)
    # twice the lift is twice the margin earned, less the same contact cost
    double = {**LAPSED, "name": "double", "expected_lift": 0.2}
    pair = {
        s.name: s for s in score_ideas(ws.warehouse, parse_ideas({"idea": [LAPSED, double]}), AS_OF)
    }
    cost = pair["win back"].usable * 0.002
    assert pair["double"].value + cost == pytest.approx(2 * (pair["win back"].value + cost))


@pytest.mark.parametrize(
    ("idea", "message"),
    [
        ({"eligibility": "shoe_size > 3"}, "idea.0.eligibility (win back)"),
        ({"data": ["dna"]}, "idea.0.data.0"),
        ({"feasibility": 9}, "idea.0.feasibility"),
        ({"colour": "red"}, "idea.0.colour"),
    ],
)
def test_bad_ideas_are_named(ws: Workspace, idea: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        score_ideas(ws.warehouse, parse_ideas({"idea": [{**LAPSED, **idea}]}), AS_OF)


def test_ideas_command(ws: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "ideas.toml"
    path.write_text(
        '[[idea]]\nname = "win back"\neligibility = "recency_days > 7 and frequency_90 >= 1"\n'
        "feasibility = 5\nexpected_lift = 0.1\ncontact_cost = 0.002\n",
        encoding="utf-8",
    )
    args = ["ideas", "--file", str(path), "--date", "2026-01-20", "-w", str(ws.root), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)["ideas"][0]
    want = score_ideas(ws.warehouse, parse_ideas({"idea": [LAPSED]}), AS_OF)[0]
    assert got["usable"] == want.usable and np.isclose(got["value"], want.value)
    missing = CliRunner().invoke(
        app, ["ideas", "--file", str(tmp_path / "x.toml"), "-w", str(ws.root)]
    )
    assert missing.exit_code == 1 and "no idea backlog" in missing.output
