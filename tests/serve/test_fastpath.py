"""POST /v1/decide answered directly gives what FastAPI's route gives, answers and refusals alike.

Two copies of the served shop, two apps: requests to ``direct`` carry
``Content-Type: application/json`` (the direct path takes them), the same requests to ``routed``
carry ``application/json; charset=utf-8`` (the direct path passes them to FastAPI's route).
Request ids are drawn from one seeded sequence per app, so both apps explore alike, and every
answer must be the same bytes.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import nextbest.serve.fastpath as fastpath
import nextbest.serve.online as online
from nextbest.data.workspace import Workspace
from nextbest.serve import KeyStore, ServeSettings, create_app
from tests.serve.conftest import DAY, Shop

NOON = DAY + timedelta(hours=12)
DIRECT = "application/json"
ROUTED = "application/json; charset=utf-8"


@dataclass
class Pair:
    direct: TestClient
    routed: TestClient
    keys: dict[str, str]  # scope -> plaintext, the same in both apps
    ids: list[str]  # customers of the shop
    admitted: list[str]  # scopes admitted by the direct path, in order


def _workspace(shop: Shop, root: Path, settings: ServeSettings) -> dict[str, str]:
    """A copy of the shop with a key per scope (before any app opens it)."""
    shutil.copytree(shop.root, root)
    store = KeyStore(settings.db_path(root))
    keys = {s: store.create(f"test-{s}", [s])[1] for s in ("decide", "events")}
    store.close()
    return keys


def _close(app: Any) -> None:
    app.state.personalizer.close()
    app.state.service.store.close()
    app.state.keys.close()


class _Ids:
    """``uuid4`` for :mod:`nextbest.serve.online`: each id twice in a row, as the direct and
    the routed app each decide the same request in turn."""

    def __init__(self) -> None:
        self.calls = 0

    def uuid4(self) -> uuid.UUID:
        self.calls += 1
        return uuid.UUID(int=((self.calls + 1) // 2 * 0x9E3779B97F4A7C15) % 2**128)


@pytest.fixture
def pair(shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    settings = ServeSettings(rate_per_key=1e6, burst=1_000_000)
    keys = _workspace(shop, tmp_path / "a", settings)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same keys and store in both
    monkeypatch.setattr(online, "uuid", _Ids())
    admitted: list[str] = []
    real_admit = fastpath.admit

    def spy(state: Any, given: str | None, needed: str) -> Any:
        admitted.append(needed)
        return real_admit(state, given, needed)

    monkeypatch.setattr(fastpath, "admit", spy)
    ws = Workspace.open(shop.root)
    try:
        ids = ws.warehouse.table("customers").order_by("customer_id").customer_id.to_pandas()
    finally:
        ws.close()
    a, b = create_app(tmp_path / "a", settings), create_app(tmp_path / "b", settings)
    with TestClient(a) as ca, TestClient(b) as cb:
        yield Pair(ca, cb, keys, [str(i) for i in ids.iloc[:60]], admitted)
    _close(a)
    _close(b)


def _both(pair: Pair, body: Any, headers: dict[str, str]) -> tuple[Any, Any]:
    """The same request to both apps, the direct one first; raw bytes unless ``body`` is
    a dict (sent as JSON text)."""
    content = body if isinstance(body, bytes) else _json(body)
    answers = []
    for client, kind in ((pair.direct, DIRECT), (pair.routed, ROUTED)):
        answers.append(
            client.post("/v1/decide", content=content, headers={"Content-Type": kind, **headers})
        )
    return answers[0], answers[1]


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _ask(cid: str, channel: str = "web", **context: Any) -> dict[str, Any]:
    return {
        "customer_id": cid,
        "channel": channel,
        "context": {"time": NOON.isoformat(), **context},
    }


def test_answers_are_the_route_s_to_the_byte(pair: Pair) -> None:
    bearer = {"Authorization": f"Bearer {pair.keys['decide']}"}
    seen = {"offers": 0, "held_out": 0, "capped": 0, "explored": 0}
    # every customer three times on the web (its cap is two a day), some in the store
    for cid in pair.ids[:40] * 3 + pair.ids[40:50]:
        channel = "store" if cid in pair.ids[40:50] else "web"
        direct, routed = _both(pair, _ask(cid, channel, weather="rain"), bearer)
        assert direct.status_code == routed.status_code == 200, (direct.text, routed.text)
        assert direct.content == routed.content
        assert direct.headers["content-type"] == routed.headers["content-type"]
        got = direct.json()
        seen["offers"] += bool(got["offers"])
        seen["held_out"] += got["held_out"]
        seen["capped"] += any("contact" in r for r in got["reasons"])
        seen["explored"] += any(o["explored"] for o in got["offers"])
    assert pair.admitted == ["decide"] * 130  # every request above took the direct path
    # the sequence met every branch: slates, the holdout, the cap, exploration
    assert all(seen.values()), seen


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (_ask("C0000001"), {}, 401, "unauthorized"),
        (_ask("C0000001"), {"Authorization": "Bearer nb_wrong"}, 401, "unauthorized"),
        (_ask("C0000001"), {"Authorization": "Basic abc"}, 401, "unauthorized"),
        (_ask("C0000001"), {"X-API-Key": "{events}"}, 403, "forbidden"),
        (_ask("NOBODY"), {"X-API-Key": "{decide}"}, 404, "unknown_customer"),
        (_ask("C0000001", "sms"), {"X-API-Key": "{decide}"}, 400, "bad_request"),
        ({**_ask("C0000001"), "campaign": "nope"}, {"X-API-Key": "{decide}"}, 400, "bad_request"),
        ({**_ask("C0000001"), "colour": 1}, {"X-API-Key": "{decide}"}, 422, "invalid_request"),
        ({**_ask("C0000001"), "count": "x"}, {"X-API-Key": "{decide}"}, 422, "invalid_request"),
        (b'{"customer_id": "C0000001",', {"X-API-Key": "{decide}"}, 422, "invalid_json"),
        (b"[1, 2]", {"X-API-Key": "{decide}"}, 422, "invalid_request"),
        (b"\xff\xfe", {"X-API-Key": "{decide}"}, 422, "invalid_json"),
        (b'{"customer_id": 1}', {}, 401, "unauthorized"),  # the key is checked first
    ],
)
def test_refusals_are_the_route_s(
    pair: Pair, body: Any, headers: dict[str, str], status: int, code: str
) -> None:
    headers = {k: v.format(**pair.keys) for k, v in headers.items()}
    direct, routed = _both(pair, body, headers)
    assert (direct.status_code, direct.json()["error"]["code"]) == (status, code), direct.text
    assert direct.status_code == routed.status_code
    assert direct.json() == routed.json()
    assert direct.headers.get("www-authenticate") == routed.headers.get("www-authenticate")


def test_the_rate_limit_is_shared_with_the_route(shop: Shop, tmp_path: Path) -> None:
    settings = ServeSettings(rate_per_key=0.001, burst=3)
    keys = _workspace(shop, tmp_path / "ws", settings)
    app = create_app(tmp_path / "ws", settings)
    headers = {"Authorization": f"Bearer {keys['decide']}"}
    body = _json(_ask("NOBODY"))  # admitted, then 404: the token is taken all the same
    with TestClient(app) as client:
        got = [
            client.post("/v1/decide", content=body, headers={"Content-Type": kind, **headers})
            for kind in (DIRECT, ROUTED, DIRECT, ROUTED, DIRECT)
        ]
    _close(app)
    assert [r.status_code for r in got] == [404, 404, 404, 429, 429]
    for refused in got[3:]:
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
