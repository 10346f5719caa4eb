"""Schema fuzzing: every operation of the service's OpenAPI document, in process (schemathesis).

The cases come from the app's own document (its routes do not depend on the data, so it is
read from an app on an empty workspace when the module is collected); they are sent to an app
on a copy of the served shop through schemathesis's ASGI transport, so nothing goes over the
network. Each operation gets the coverage phase's boundary and just-invalid values and
``MAX_EXAMPLES`` generated cases, valid and invalid (``mode = "all"``), with a fixed seed and
Hypothesis derandomized: a run is the same every time. Half the valid cases naming a customer
name a real one (and, for a decision, a channel a campaign serves), so decisions, profiles and
erasures run through, not only the unknown-customer 404.

With an admin key, every answer must pass:

* ``not_a_server_error``: no 5xx, whatever is sent (STYLE.md: never a bare 500 for bad input);
* ``status_code_conformance``: the status is one the document lists (every route documents
  ``4XX`` and ``5XX`` with the error body, the Personalizer's 400, 404 and 409 too);
* ``content_type_conformance`` and ``response_schema_conformance``: a JSON body where one is
  documented, matching its schema (the error body for every 4xx);
* ``negative_data_rejection``: a request the schema forbids is refused with a 4xx;
* ``unsupported_method`` and ``allow_header_conformance``: an undocumented method gets 405 with
  ``Allow``.

Left out: ``positive_data_acceptance``, since a schema-valid request may be refused on purpose
(an unknown customer is 404; a repeated action id, an unknown ``excludedActions`` id or a
baseline shared by two slots in a Personalizer rank is 400; a reward for an event never ranked
is 404); ``missing_required_header``, as no operation declares a required header; and the
stateful checks, which need the stateful phase this file does not run (authentication is
checked below instead).

Without the right key (schemathesis's own random credentials in the three key headers, or
none; a revoked key; a key with every scope but the one needed) every guarded operation is
refused with 401 or 403 and the error body, each key tried in one of the three headers in turn.
The one exception is a body the server cannot read at all (over the size limit, or not JSON),
refused as such (413; 400 or 422 ``invalid_json``) before the key is looked at: FastAPI parses
a JSON body before it runs the route's dependencies.

``schemathesis.pytest.from_fixture`` would load the document from a fixture, but it fails
under pytest 9.2 (it sets ``Function._nodeid``, which pytest no longer has); hence the document
read at collection and the app passed to each call.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from nextbest.data.workspace import Workspace
from nextbest.serve import create_app
from nextbest.serve.errors import ErrorBody
from nextbest.serve.security import KeyStore
from nextbest.serve.settings import ServeSettings
from tests.serve.conftest import Shop

pytestmark = pytest.mark.slow

SEED = 20260111
MAX_EXAMPLES = 25  # generated cases per operation, on top of the coverage phase's
MAX_KEYLESS = 10  # generated cases per operation without our key, each sent three ways
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,
    allow_header_conformance,
]
OPEN = {"/healthz", "/readyz"}  # no key needed
NEEDS = {  # the scope of each guarded route; the Personalizer's rewards and activations: events
    "/v1/decide": "decide",
    "/v1/events": "events",
    "/v1/customers/{customer_id}": "profiles",
    "/v1/offers": "profiles",
    "/v1/customers/{customer_id}/forget": "admin",
    "/personalizer/v1.0/rank": "decide",
    "/personalizer/v1.0/multislot/rank": "decide",
}
SERVED = ("email", "web", "store")  # the shop's campaigns' channels
KEY_HEADERS = ("Authorization", "X-API-Key", "Ocp-Apim-Subscription-Key")
UNREADABLE = {"invalid_json", "payload_too_large"}  # error codes of a body that cannot be read
# The fuzzer found that the request models took JSON booleans and numeric strings as numbers and
# numbers as times (an event with "amount": false was stored as 0.0); the fields are strict now,
# and test_only_the_documented_types_are_taken pins each case it found.
_TURNS = itertools.count()
REJECTED = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]  # schemathesis's and 413


def _document() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(Path(folder))
        document = app.openapi()
        app.state.personalizer.close()
        app.state.service.store.close()
        app.state.keys.close()
    return document


def _config(*, generated_credentials: bool) -> schemathesis.Config:
    """With our key: coverage and fuzzing. Without: a few generated cases, their credentials."""
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": MAX_KEYLESS if generated_credentials else MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                "with-security-parameters": generated_credentials,
            },
            "phases": {
                "coverage": {"enabled": not generated_credentials},
                "stateful": {"enabled": False},
            },
            # 413 refuses a body over the size limit (10,000 events, say) as well
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
        }
    )


DOCUMENT = _document()
with_key = schemathesis.openapi.from_dict(DOCUMENT, config=_config(generated_credentials=False))
without_key = schemathesis.openapi.from_dict(DOCUMENT, config=_config(generated_credentials=True))


@dataclass
class Fuzzed:
    app: FastAPI
    keys: dict[str, str]  # "admin", "revoked", and "no-<scope>": every other scope but admin
    customers: list[str]  # real customer ids of the shop


@pytest.fixture(scope="module")
def fuzzed(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Fuzzed:
    root = tmp_path_factory.mktemp("fuzz") / "ws"
    shutil.copytree(shop.root, root)
    store = KeyStore(ServeSettings().db_path(root))
    keys = {"admin": store.create("fuzz-admin", ["admin"])[1]}
    for scope in ("decide", "events", "profiles", "admin"):
        others = [s for s in ("decide", "events", "profiles") if s != scope]
        keys[f"no-{scope}"] = store.create(f"fuzz-no-{scope}", others)[1]
    keys["revoked"] = store.create("fuzz-revoked", ["admin"])[1]
    store.revoke(keys["revoked"])
    store.close()
    ws = Workspace.open(root)
    try:
        ids = ws.warehouse.table("customers").order_by("customer_id").customer_id.to_pandas()
    finally:
        ws.close()
    app = create_app(root)
    assert app.openapi() == DOCUMENT
    return Fuzzed(app, keys, [str(c) for c in ids[:50]])


def _realistic(case: schemathesis.Case, fuzzed: Fuzzed) -> None:
    """Half the valid cases naming a customer name a real one; a decision then also names a
    channel a campaign serves, and no campaign. The invalid cases stay as drawn."""
    if case.meta is None or case.meta.generation.mode.is_negative:
        return
    in_body = isinstance(case.body, dict) and isinstance(case.body.get("customer_id"), str)
    if not (in_body or "customer_id" in (case.path_parameters or {})):
        return
    draw = next(_TURNS)  # the cases come in a fixed order: every other one is real
    if draw % 2:
        return
    customer = fuzzed.customers[draw // 2 % len(fuzzed.customers)]
    if in_body:
        body = {k: v for k, v in case.body.items() if k != "campaign"}
        case.body = {**body, "customer_id": customer, "channel": SERVED[draw // 2 % len(SERVED)]}
    else:
        case.path_parameters = {**case.path_parameters, "customer_id": customer}


@with_key.parametrize()
def test_no_server_error_and_answers_match_the_schema(
    case: schemathesis.Case, fuzzed: Fuzzed
) -> None:
    _realistic(case, fuzzed)
    headers = {"Authorization": f"Bearer {fuzzed.keys['admin']}"}
    case.call_and_validate(headers=headers, checks=CHECKS, app=fuzzed.app)


EVENT = {"event_id": "lax-1", "ts": "2026-01-11T12:00:00Z", "type": "view"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/events", {"events": [{**EVENT, "amount": False}]}),
        ("/v1/events", {"events": [{**EVENT, "amount": "1.5"}]}),
        ("/v1/events", {"events": [{**EVENT, "quantity": True}]}),
        ("/v1/events", {"events": [{**EVENT, "ts": 0}]}),
        ("/v1/decide", {"channel": "web", "count": True}),
        ("/v1/decide", {"channel": "web", "context": {"time": 0}}),
    ],
    ids=["amount-false", "amount-string", "quantity-true", "ts-number", "count-true", "time-num"],
)
def test_only_the_documented_types_are_taken(
    path: str, body: dict[str, Any], fuzzed: Fuzzed
) -> None:
    if path == "/v1/decide":
        body = {"customer_id": fuzzed.customers[0], **body}
    headers = {"Authorization": f"Bearer {fuzzed.keys['admin']}"}
    with TestClient(fuzzed.app) as client:
        response = client.post(path, json=body, headers=headers)
    assert response.status_code == 422, response.text


def _refused(response: Any, status: int, what: str) -> None:
    """``status`` with the error body; or a body the server could not read at all, refused as
    such before any key is looked at (413, or the body is not JSON: FastAPI parses it first)."""
    assert response.headers["content-type"] == ["application/json"], what
    body = ErrorBody.model_validate_json(response.content)
    assert body.error.status == response.status_code, what
    if body.error.code in UNREADABLE and response.status_code in (400, 413, 422):
        return
    assert response.status_code == status, (
        f"{what}: expected {status}, got {response.status_code}: {response.text[:300]}"
    )


@without_key.parametrize()
def test_without_the_right_key_refused_in_the_error_shape(
    case: schemathesis.Case, fuzzed: Fuzzed
) -> None:
    path = case.operation.path
    response = case.call(app=fuzzed.app)  # schemathesis's credentials, or none
    case.validate_response(response, checks=[not_a_server_error])
    if path in OPEN or case.method.upper() != case.operation.method.upper():
        return  # no key needed; or another method, refused with 405 before any key is read
    _refused(response, 401, "generated credentials")
    ours = {h.lower() for h in KEY_HEADERS}
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ours}
    turn = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode())
    for key, status in (("revoked", 401), (f"no-{NEEDS.get(path, 'events')}", 403)):
        header = KEY_HEADERS[turn % len(KEY_HEADERS)]  # each header in turn
        value = fuzzed.keys[key]
        sent = {header: f"Bearer {value}" if header == "Authorization" else value}
        _refused(case.call(headers=sent, app=fuzzed.app), status, f"{key} key in {header}")
        turn //= len(KEY_HEADERS)
