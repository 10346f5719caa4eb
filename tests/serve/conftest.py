"""A served shop: a simulated retailer with a trained model, a batch day, campaigns, a snapshot.

2,000 simulated members over 10 days (seed 31), plus what the cart-then-store case needs: two
products (sunglasses and a bag) and a store-only offer, 10% on the cart, whose rule is the one
in DESIGN.md: not when it rains and the cart holds sunglasses. The batch decides the e-mail of
the 11th day with the stock of the offer it sends most cut to a third, so its dual price is
positive and the service must pay it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.decide import decide, load_campaign, parse_campaign
from nextbest.models import ModelStore, TrainOptions, train
from nextbest.serve.online import serving_campaigns
from nextbest.serve.snapshot import build_snapshot
from nextbest.simulate import SimConfig, simulate

DAY = datetime(2026, 1, 11, tzinfo=UTC)  # the day after the 10 simulated ones

EMAIL = """
[campaign]
name = "daily-email"
channel = "email"
slots = 3
max_per_brand = 1

[campaign.contact]
per_week = { email = 7 }

[offers."{scarce}"]
stock = {stock}
"""

WEB = """
[campaign]
name = "web-reco"
channel = "web"
slots = 3
max_per_brand = 1

[campaign.contact]
per_day = { web = 2 }

[campaign.exploration]
share = 0.2
method = "epsilon"

[campaign.experiment]
name = "web-reco"
holdout = 0.2
salt = "t1"
"""

STORE = """
[campaign]
name = "store-app"
channel = "store"
slots = 2
"""

CART_RULE = 'cart_count > 0 and not (weather == "rain" and has(cart_categories, "sunglasses"))'


@dataclass
class Shop:
    root: Path  # the workspace (its warehouse closed: open it with Workspace.open and close)
    scarce: str  # the offer whose stock binds in the batch


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    root = tmp_path_factory.mktemp("served")
    simulate(SimConfig(n_customers=2_000, days=10, seed=31, holdout_share=0.1), root / "sim")
    ws = Workspace.init(root / "ws")
    ingest(ws.warehouse, [root / "sim"], ws.config.ingest)
    extra = root / "extra"
    extra.mkdir()
    pd.DataFrame(
        {
            "product_id": ["P-SUN", "P-BAG"],
            "name": ["Aviator sunglasses", "Weekend bag"],
            "brand": ["Maison 900", "Maison 901"],
            "category": ["sunglasses", "bags"],
            "price": [120.0, 240.0],
            "cost": [40.0, 90.0],
        }
    ).to_csv(extra / "products.csv", index=False)
    pd.DataFrame(
        {
            "offer_id": ["CART10"],
            "kind": ["discount"],
            "name": ["10% on your cart"],
            "channels": ["store"],
            "start_ts": ["2026-01-01T00:00:00Z"],
            "end_ts": ["2026-02-01T00:00:00Z"],
            "unit_cost": [0.0],
            "margin": [30.0],
            "discount": [0.1],
            "eligibility": [CART_RULE],
        }
    ).to_csv(extra / "offers.csv", index=False)
    ingest(ws.warehouse, [extra / "products.csv", extra / "offers.csv"], ws.config.ingest)
    options = TrainOptions(holdout_days=2, calibration_days=2)
    train(ws.warehouse, ModelStore(ws.models), "propensity", options)
    # a dry run finds the offer the batch sends most; its stock is then cut to a third
    dry = decide(
        ws,
        parse_campaign({"campaign": {"name": "dry", "slots": 3}}),
        DAY,
        out=root / "dry",
        log_decisions=False,
    )
    most = max(dry.summary["offers"], key=lambda o: o["expected_units"])
    scarce, stock = str(most["offer_id"]), round(most["expected_units"] / 3, 3)
    email = EMAIL.replace("{scarce}", scarce).replace("{stock}", str(stock))
    (ws.root / "campaign.toml").write_text(email, encoding="utf-8")
    (ws.root / "campaigns").mkdir()
    (ws.root / "campaigns" / "web.toml").write_text(WEB, encoding="utf-8")
    (ws.root / "campaigns" / "store.toml").write_text(STORE, encoding="utf-8")
    decide(ws, load_campaign(ws.root / "campaign.toml"), DAY, out=root / "out")
    build_snapshot(ws, DAY, serving_campaigns(ws.root))
    ws.close()  # the service never holds the warehouse
    return Shop(root / "ws", scarce)
