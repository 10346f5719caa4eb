"""``nextbest clv`` as a user meets it: a real process, its JSON, its one-line errors."""

from __future__ import annotations

import json

import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from tests.cli.test_cli import run
from tests.conftest import shared_data


@pytest.mark.shared_data
def test_clv_json_gives_the_published_cdnow_parameters(workspace: Workspace) -> None:
    ingest(
        workspace.warehouse,
        [shared_data("cdnow", "CDNOW_sample.txt")],
        workspace.config.ingest,
        fmt="cdnow",
    )
    workspace.close()  # the command opens the warehouse in its own process
    done = run(
        "clv", "--calibration-end", "1997-09-30", "--top", "5", "--json", "-w", ".",
        cwd=workspace.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    params = {k: round(v, 3) for k, v in payload["bgnbd"]["params"].items()}
    assert params == {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    errors = {k: round(v, 3) for k, v in payload["bgnbd"]["standard_errors"].items()}
    assert errors == {"r": 0.013, "alpha": 0.378, "a": 0.186, "b": 0.705}
    spend = {k: round(v, 2) for k, v in payload["gamma_gamma"]["params"].items()}
    assert spend == {"p": 6.25, "q": 3.74, "gamma": 15.44}
    customers = payload["customers"]
    assert len(customers) == 5
    assert [c["clv"] for c in customers] == sorted((c["clv"] for c in customers), reverse=True)
    assert set(customers[0]) == {
        "customer_id",
        "frequency",
        "recency",
        "T",
        "monetary_value",
        "probability_alive",
        "expected_purchases",
        "expected_average_value",
        "clv",
    }
    text = run("clv", "--calibration-end", "1997-09-30", "-w", ".", cwd=workspace.root)
    assert text.returncode == 0, text.stderr
    assert "Lifetime value as of 1997-09-30: 2,357 customers" in text.stdout
    assert "alpha" in text.stdout and "Top 10 customers by lifetime value" in text.stdout


def test_clv_on_an_empty_workspace_is_one_error_line(workspace: Workspace) -> None:
    workspace.close()
    done = run("clv", "-w", ".", cwd=workspace.root)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: the warehouse has no purchase events to fit lifetime value on; expected events "
        "of type 'purchase' with a customer_id: ingest some first"
    ]
    assert "Traceback" not in done.stderr
