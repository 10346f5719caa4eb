"""API keys, scopes, rate limits, body limits and the error bodies, on a small app."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, ValidationError
from typer.testing import CliRunner

import nextbest.cli.keys  # noqa: F401 - registers `nextbest keys`
from nextbest.cli.main import app as cli
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError, DataError
from nextbest.serve.errors import BodyLimitMiddleware, ErrorBody
from nextbest.serve.security import (
    ERROR_RESPONSES,
    KeyInfo,
    KeyStore,
    RateLimiter,
    check_scopes,
    install,
    require,
)
from nextbest.serve.settings import ServeSettings


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[str]
    count: int = 1


def make_app(tmp_path: Path, settings: ServeSettings, clock: Clock) -> FastAPI:
    app = FastAPI()
    app.state.keys = KeyStore(tmp_path / "online.db", cache_ttl=5.0, clock=clock)
    app.state.limiter = RateLimiter(settings.worker_rate, settings.worker_burst, clock=clock)
    install(app, settings)

    @app.post("/decide", responses=ERROR_RESPONSES)
    async def decide(
        cart: Cart, key: Annotated[KeyInfo, Depends(require("decide"))]
    ) -> dict[str, Any]:
        return {"key": key.key_id, "items": len(cart.items)}

    @app.get("/admin")
    async def admin(key: Annotated[KeyInfo, Depends(require("admin"))]) -> dict[str, str]:
        return {"key": key.key_id}

    @app.get("/profiles")
    async def profiles(key: Annotated[KeyInfo, Depends(require("profiles"))]) -> dict[str, str]:
        return {"key": key.key_id}

    @app.post("/boom/{customer_id}")
    async def boom(customer_id: str) -> None:
        raise RuntimeError(f"failed for {customer_id}")

    @app.get("/config-error")
    async def config_error() -> None:
        raise ConfigError("no campaign named 'spring'; expected one of 'summer'")

    @app.get("/data-error")
    async def data_error() -> None:
        raise DataError("events line 3: ts must be a timestamp, got 'x'")

    return app


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(tmp_path: Path, clock: Clock) -> Iterator[FastAPI]:
    app = make_app(tmp_path, ServeSettings(rate_per_key=2.0, burst=5, max_body_bytes=1000), clock)
    yield app
    app.state.keys.close()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def key(app: FastAPI, *scopes: str) -> str:
    return app.state.keys.create("test", scopes)[1]


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The error body, after checking it has the service's shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["status"] == status and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert ErrorBody.model_validate(body).model_dump(exclude_none=True) == body  # as documented
    return body["error"]


CART = {"items": ["p1", "p2"]}


# -- keys and scopes --------------------------------------------------------------------------


def test_a_key_with_the_scope_is_let_in_by_each_header(app: FastAPI, client: TestClient) -> None:
    plaintext = key(app, "decide")
    info = app.state.keys.check(plaintext)
    for headers in (
        {"Authorization": f"Bearer {plaintext}"},
        {"X-API-Key": plaintext},
        {"Ocp-Apim-Subscription-Key": plaintext},
    ):
        got = client.post("/decide", json=CART, headers=headers)
        assert got.status_code == 200 and got.json() == {"key": info.key_id, "items": 2}


def test_missing_wrong_and_revoked_keys_get_401(app: FastAPI, client: TestClient) -> None:
    missing = error(client.post("/decide", json=CART), 401, "unauthorized")
    assert "an API key is needed" in missing["message"]
    assert "X-API-Key" in missing["message"]
    wrong = client.post("/decide", json=CART, headers={"X-API-Key": "nb_" + "x" * 43})
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    assert error(wrong, 401, "unauthorized")["message"] == "the API key is unknown or revoked"
    not_ours = {"Authorization": "Bearer sk-something-else"}
    error(client.post("/decide", json=CART, headers=not_ours), 401, "unauthorized")

    plaintext = key(app, "decide")
    assert client.post("/decide", json=CART, headers={"X-API-Key": plaintext}).status_code == 200
    app.state.keys.revoke(app.state.keys.check(plaintext).key_id)
    revoked = client.post("/decide", json=CART, headers={"X-API-Key": plaintext})
    assert error(revoked, 401, "unauthorized")["message"] == "the API key is unknown or revoked"


def test_an_under_scoped_key_gets_403_naming_the_scope(app: FastAPI, client: TestClient) -> None:
    plaintext = key(app, "events", "profiles")
    prefix = plaintext[:11]
    got = error(client.get("/admin", headers={"X-API-Key": plaintext}), 403, "forbidden")
    assert got["message"] == (
        f"this route needs the scope 'admin'; the key {prefix}... has events, profiles"
    )
    got = error(
        client.post("/decide", json=CART, headers={"X-API-Key": plaintext}), 403, "forbidden"
    )
    assert "needs the scope 'decide'" in got["message"]
    assert client.get("/profiles", headers={"X-API-Key": plaintext}).status_code == 200


def test_admin_reaches_every_scope(app: FastAPI, client: TestClient) -> None:
    headers = {"X-API-Key": key(app, "admin")}
    assert client.post("/decide", json=CART, headers=headers).status_code == 200
    assert client.get("/admin", headers=headers).status_code == 200
    assert client.get("/profiles", headers=headers).status_code == 200


def test_only_the_hash_is_stored(tmp_path: Path) -> None:
    db = tmp_path / "online.db"
    store = KeyStore(db)
    info, plaintext = store.create("shop", ["decide"])
    assert plaintext.startswith("nb_") and len(plaintext) == 3 + 43
    assert info.prefix == plaintext[:11]
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("online.db*"))  # WAL included
    assert plaintext.encode() not in stored
    assert hashlib.sha256(plaintext.encode()).hexdigest().encode() in stored
    assert "sha256" not in info.to_dict() and plaintext not in json.dumps(info.to_dict())
    store.close()


def test_a_key_revoked_elsewhere_stops_within_the_cache_ttl(tmp_path: Path, clock: Clock) -> None:
    server = KeyStore(tmp_path / "online.db", cache_ttl=5.0, clock=clock)
    admin_cli = KeyStore(tmp_path / "online.db")  # another process, say `nextbest keys revoke`
    info, plaintext = admin_cli.create("shop", ["decide"])
    assert server.check(plaintext) == info
    admin_cli.revoke(info.prefix)
    clock.now += 4.9
    assert server.check(plaintext) == info  # still cached
    clock.now += 0.2
    assert server.check(plaintext) is None
    (listed,) = server.list()
    assert listed.key_id == info.key_id and listed.revoked_ts is not None
    server.close()
    admin_cli.close()


def test_revoke_names_what_was_given_when_it_matches_none_or_several(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "online.db")
    a, _ = store.create("a", ["decide"])
    b, plaintext = store.create("b", ["events"])
    with pytest.raises(ConfigError, match="no API key has the id or prefix 'key_zzz'"):
        store.revoke("key_zzz")
    with pytest.raises(ConfigError, match=r"'key_' matches 2 API keys: key_\w+ \(nb_"):
        store.revoke("key_")
    assert store.revoke(plaintext).key_id == b.key_id  # the whole key works too
    assert store.revoke(a.key_id[:-2]).revoked_ts  # a prefix of the id
    assert [k.revoked_ts is not None for k in store.list()] == [True, True]
    store.close()


@pytest.mark.parametrize(
    ("scopes", "message"),
    [
        (
            ["decide", "write"],
            "unknown scope 'write': expected one of decide, events, profiles, admin",
        ),
        ([], "at least one scope is needed: expected some of decide, events, profiles, admin"),
        ("Admin", "unknown scope 'Admin': expected one of decide, events, profiles, admin"),
    ],
)
def test_bad_scopes_are_named(tmp_path: Path, scopes: Any, message: str) -> None:
    store = KeyStore(tmp_path / "online.db")
    with pytest.raises(ConfigError) as caught:
        store.create("x", scopes)
    assert str(caught.value) == message
    assert store.list() == []
    store.close()
    with pytest.raises(ConfigError, match="unknown scope 'root'"):
        require("root")


def test_scopes_are_deduplicated_in_canonical_order() -> None:
    assert check_scopes(["admin", "decide", "decide"]) == ("decide", "admin")


# -- rate limit -------------------------------------------------------------------------------


def test_rate_limit_gives_429_after_the_burst_and_recovers(
    app: FastAPI, client: TestClient, clock: Clock
) -> None:
    headers = {"X-API-Key": key(app, "decide")}
    other = {"X-API-Key": key(app, "decide")}

    def statuses(n: int, h: dict[str, str] = headers) -> list[int]:
        return [client.post("/decide", json=CART, headers=h).status_code for _ in range(n)]

    assert statuses(7) == [200] * 5 + [429] * 2  # burst 5
    limited = client.post("/decide", json=CART, headers=headers)
    assert limited.headers["Retry-After"] == "1"  # 0.5 s at 2 requests/s, rounded up
    assert (
        "over its rate of 2 requests/s; retry in 0.50 s"
        in error(limited, 429, "rate_limited")["message"]
    )
    assert statuses(1, other) == [200]  # buckets are per key
    clock.now += 1.0  # two tokens back
    assert statuses(3) == [200, 200, 429]
    clock.now += 60.0  # refills to the burst, not beyond
    assert statuses(6) == [200] * 5 + [429]


def test_each_worker_enforces_its_share() -> None:
    settings = ServeSettings(rate_per_key=1000.0, burst=2000, workers=4)
    assert (settings.worker_rate, settings.worker_burst) == (250.0, 500)
    assert ServeSettings(burst=3, workers=8).worker_burst == 1


# -- request bodies and error bodies ----------------------------------------------------------


def test_oversized_bodies_get_413(app: FastAPI, client: TestClient) -> None:
    headers = {"X-API-Key": key(app, "decide"), "Content-Type": "application/json"}
    body = json.dumps({"items": ["p" * 10] * 100}).encode()
    assert len(body) == 1411
    announced = error(
        client.post("/decide", content=body, headers=headers), 413, "payload_too_large"
    )
    assert announced["message"].startswith("the request body has 1,411 bytes; at most 1,000")
    chunks = iter([body[:600], body[600:]])  # no Content-Length: chunked
    streamed = error(
        client.post("/decide", content=chunks, headers=headers), 413, "payload_too_large"
    )
    assert streamed["message"] == (
        "the request body is too large; at most 1,000 bytes are accepted (send smaller batches)"
    )
    small = json.dumps({"items": ["p1"] * 50}).encode()
    assert (
        client.post("/decide", content=iter([small[:100], small[100:]]), headers=headers).json()[
            "items"
        ]
        == 50
    )


def test_422_names_field_expected_and_received(app: FastAPI, client: TestClient) -> None:
    headers = {"X-API-Key": key(app, "decide")}
    body = {"items": ["p1", 7], "count": "many", "coupon": "X" * 500}
    got = error(client.post("/decide", json=body, headers=headers), 422, "invalid_request")
    assert got["details"] == [
        {"field": "body.items.1", "expected": "a valid string", "received": "7"},
        {
            "field": "body.count",
            "expected": "a valid integer, unable to parse string as an integer",
            "received": "'many'",
        },
        {
            "field": "body.coupon",
            "expected": "no such field: unknown fields are refused",
            "received": "'" + "X" * 47 + "..." + "X" * 48 + "'",
        },
    ]
    assert got["message"] == "3 invalid field(s): body.items.1, body.count, body.coupon"
    missing = error(client.post("/decide", json={}, headers=headers), 422, "invalid_request")
    assert missing["details"] == [
        {"field": "body.items", "expected": "a value: the field is required", "received": "nothing"}
    ]


def test_malformed_json_is_a_422_naming_the_position(app: FastAPI, client: TestClient) -> None:
    headers = {"X-API-Key": key(app, "decide"), "Content-Type": "application/json"}
    got = client.post("/decide", content=b'{"items": ["p1",\n  ]}', headers=headers)
    body = error(got, 422, "invalid_json")
    assert body["message"] == (
        "the body is not valid JSON: Expecting value at line 2, column 3 (character 19)"
    )
    assert body["details"][0]["field"] == "body"
    no_type = client.post(
        "/decide", content=b'{"items": []}', headers={"X-API-Key": headers["X-API-Key"]}
    )
    assert (
        "Content-Type: application/json"
        in error(no_type, 422, "invalid_request")["details"][0]["expected"]
    )


def test_unknown_routes_and_methods_answer_in_the_same_shape(client: TestClient) -> None:
    assert error(client.get("/nowhere"), 404, "not_found")["message"] == "no route GET /nowhere"
    not_allowed = client.get("/decide")
    assert not_allowed.headers["Allow"] == "POST"
    assert error(not_allowed, 405, "method_not_allowed")["message"] == (
        "GET is not allowed on /decide; allowed: POST"
    )


def test_openapi_documents_the_error_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    responses = spec["paths"]["/decide"]["post"]["responses"]
    assert sorted(responses) == ["200", "4XX", "5XX"]  # not FastAPI's own 422 body
    assert responses["4XX"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert set(spec["components"]["securitySchemes"]) == {
        "Bearer",
        "ApiKey",
        "OcpApimSubscriptionKey",
    }


def test_a_content_length_that_is_not_a_number_is_a_400() -> None:
    sent: list[dict[str, Any]] = []

    async def never(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not be called")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-length", b"1e3")],
    }
    anyio.run(BodyLimitMiddleware(never, max_bytes=10), scope, receive, send)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["message"] == (
        "Content-Length: expected a whole number of bytes, got '1e3'"
    )


def test_nextbest_errors_map_to_4xx(client: TestClient) -> None:
    config = error(client.get("/config-error"), 400, "bad_request")
    assert config["message"] == "no campaign named 'spring'; expected one of 'summer'"
    error(client.get("/data-error"), 422, "invalid_data")


def test_a_bug_is_a_500_logged_without_personal_data(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="nextbest.serve.errors"):
        got = client.post("/boom/cust-4711", json={"email": "jane@example.com"})
    body = error(got, 500, "internal_error")
    assert body["message"] == "internal error" and len(body["request_id"]) == 32
    (record,) = caplog.records
    text = record.getMessage()
    assert body["request_id"] in text and "RuntimeError" in text and "/boom/{customer_id}" in text
    assert "test_security.py" in text  # where it was raised
    for secret in ("cust-4711", "jane@example.com", "failed for"):
        assert secret not in text
    assert record.exc_info is None


# -- local mode -------------------------------------------------------------------------------


def test_local_mode_serves_only_the_local_scopes_without_a_key(
    tmp_path: Path, clock: Clock
) -> None:
    app = make_app(tmp_path, ServeSettings(local=True, local_scopes=("profiles",)), clock)
    with TestClient(app) as client:
        assert client.get("/profiles").json() == {"key": "local"}
        refused = error(client.post("/decide", json=CART), 401, "unauthorized")
        assert "needs an API key with the scope 'decide'" in refused["message"]
        assert "local mode allows only profiles" in refused["message"]
        headers = {"X-API-Key": key(app, "decide")}
        assert client.post("/decide", json=CART, headers=headers).status_code == 200
        bad = client.get("/profiles", headers={"X-API-Key": "nb_wrong"})  # a key given is checked
        error(bad, 401, "unauthorized")
    app.state.keys.close()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"local": True, "host": "0.0.0.0"},
            "expected host 127.0.0.1, ::1 or localhost, got '0.0.0.0'",
        ),
        ({"local_scopes": ("profile",)}, "unknown scope 'profile': expected one of decide"),
        ({"prot": 80}, "Extra inputs are not permitted"),
        ({"workers": 0}, "greater than or equal to 1"),
    ],
)
def test_settings_refuse_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServeSettings(**values)


def test_settings_defaults_and_db_path(tmp_path: Path) -> None:
    settings = ServeSettings(local=True, host="::1")
    assert (settings.host, ServeSettings().port, settings.local_scopes) == (
        "::1",
        8000,
        ("profiles",),
    )
    path = ServeSettings().db_path(tmp_path)
    assert path == tmp_path / "serving" / "online.db" and path.parent.is_dir()


# -- the CLI ----------------------------------------------------------------------------------


def test_keys_create_list_revoke_round_trip(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    ws.close()
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli, ["keys", *args, "-w", str(ws.root)])

    made = run("create", "web shop", "--scope", "decide", "-s", "events,profiles", "--json")
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout)
    assert created["scopes"] == ["decide", "events", "profiles"] and created["name"] == "web shop"
    plaintext = created["key"]
    shown = run("create", "dashboard", "--scope", "admin")
    assert shown.exit_code == 0 and "will not be shown again" in shown.output
    second = next(w for w in shown.stdout.split() if w.startswith("nb_"))

    listed = run("list", "--json")
    keys = json.loads(listed.stdout)
    assert [k["name"] for k in keys] == ["web shop", "dashboard"]
    assert plaintext not in listed.stdout and second not in listed.stdout
    assert "sha256" not in listed.stdout
    table = run("list").stdout
    assert created["prefix"] + "..." in table and plaintext not in table

    gone = run("revoke", created["prefix"])
    assert gone.exit_code == 0 and f"Revoked {created['key_id']}" in gone.stdout
    store = KeyStore(ServeSettings().db_path(ws.root))
    assert store.check(plaintext) is None and store.check(second) is not None
    store.close()
    assert json.loads(run("list", "--json").stdout)[0]["revoked_ts"] is not None

    for args, message in [
        (("revoke", "nb_"), "'nb_' matches 2 API keys"),
        (("revoke", "key_nope"), "no API key has the id or prefix 'key_nope'"),
        (("create", "x"), "--scope: expected at least one of decide, events, profiles, admin"),
        (("create", "x", "-s", "all"), "unknown scope 'all'"),
    ]:
        failed = run(*args)
        assert failed.exit_code == 1 and message in failed.output, failed.output
