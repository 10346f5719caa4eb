"""API keys, scopes, the per-key rate limit and the service's error bodies.

An app is wired with :func:`install` once; its routes ask for a scope with :func:`require`::

    app = FastAPI()
    app.state.db_path = settings.db_path(workspace_root)
    install(app, settings)

    @app.post("/decide")
    async def decide(body: DecideRequest, key: Annotated[KeyInfo, Depends(require("decide"))]):
        ...

A key is sent as ``Authorization: Bearer <key>``, ``X-API-Key: <key>`` or (Azure Personalizer's
header) ``Ocp-Apim-Subscription-Key: <key>``. Missing, unknown or revoked keys get 401, a key
without the scope 403 naming it, a key over its rate 429 with ``Retry-After``. ``admin`` implies
every scope.

Every error answers with one JSON shape::

    {"error": {"status": 422, "code": "invalid_request", "message": "...",
               "details": [{"field": "body.customer_id", "expected": "a valid string",
                            "received": "123"}]}}

nextbest's own errors raised in a route map to: ``ConfigError`` 400 (the request names
something the workspace does not have), ``DataError`` 422 (the data sent breaks the contract),
``NotFittedError`` 503 (no model trained yet: the service is not ready), ``InfeasibleError``
409. A route wanting another status raises :class:`ApiError`. Anything else is a bug: a 500
``internal_error`` with a request id, logged with the exception's type, the route template and
where it was raised only, never its message, the body or the raw path (they may hold customer
ids).
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import hmac
import logging
import math
import reprlib
import secrets
import sqlite3
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nextbest.errors import ConfigError, DataError, InfeasibleError, NextbestError, NotFittedError

if TYPE_CHECKING:
    from nextbest.serve.settings import ServeSettings

__all__ = [
    "ERROR_RESPONSES",
    "SCOPES",
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "ErrorInfo",
    "KeyInfo",
    "KeyStore",
    "RateLimiter",
    "check_scopes",
    "error_response",
    "install",
    "require",
]

logger = logging.getLogger(__name__)

SCOPES = ("decide", "events", "profiles", "admin")
KEY_PREFIX = "nb_"
_PREFIX_CHARS = len(KEY_PREFIX) + 8  # shown in listings to tell keys apart
_MAX_KEY_CHARS = 200
_LOCAL = "local"


# -- keys -------------------------------------------------------------------------------------


def check_scopes(scopes: Iterable[str] | str) -> tuple[str, ...]:
    """The scopes given, checked, deduplicated and in the canonical order of :data:`SCOPES`."""
    given = [scopes] if isinstance(scopes, str) else builtins.list(scopes)
    for scope in given:
        if scope not in SCOPES:
            raise ConfigError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if not given:
        raise ConfigError(f"at least one scope is needed: expected some of {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in given)


@dataclass(frozen=True)
class KeyInfo:
    """What the service knows about an API key: never the key itself, nor its hash."""

    key_id: str
    name: str
    prefix: str  # the key's first characters, to recognise it in a listing
    scopes: tuple[str, ...]
    created_ts: str
    revoked_ts: str | None = None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scopes": builtins.list(self.scopes)}


class KeyStore:
    """API keys in the service's SQLite file (table ``api_keys``), hashed.

    A key is ``"nb_"`` and 32 random bytes (``secrets.token_urlsafe``); it is shown once, at
    creation, and only its SHA-256 is stored. Keys are high-entropy random values, not
    passwords, so a fast hash is the standard choice: nothing can be guessed by brute force,
    and a slow hash (bcrypt, scrypt) would only cost every request time. Lookup is by the
    hash, so no comparison against the secret leaks timing.

    Positive lookups are cached in the process for ``cache_ttl`` seconds, so a request does not
    read SQLite to authenticate; a key revoked by another process stops working within that
    time (at once in this process). Each thread gets its own connection; the file is in WAL
    mode with ``synchronous=FULL``.

    Parameters
    ----------
    db_path
        The SQLite file (``ServeSettings.db_path``); created with its table if absent.
    cache_ttl
        Seconds a successful lookup is trusted; 0 reads SQLite every time.
    clock
        Monotonic seconds, for the cache (tests pass a fake one).
    """

    def __init__(
        self,
        db_path: Path,
        *,
        cache_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not cache_ttl >= 0:
            raise ConfigError(f"cache_ttl: expected seconds >= 0, got {cache_ttl!r}")
        self.db_path = Path(db_path)
        self.cache_ttl = float(cache_ttl)
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: builtins.list[sqlite3.Connection] = []
        self._cache: dict[str, tuple[KeyInfo, float]] = {}
        self._db().execute(
            "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, name TEXT NOT NULL, "
            "prefix TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE, scopes TEXT NOT NULL, "
            "created_ts TEXT NOT NULL, revoked_ts TEXT)"
        )

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.db_path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def create(self, name: str, scopes: Iterable[str] | str) -> tuple[KeyInfo, str]:
        """A new key: its description and the plaintext, which is not kept anywhere."""
        name = name.strip() if isinstance(name, str) else name
        if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable():
            raise ConfigError(
                f"key name: expected 1 to 100 printable characters, got {str(name)[:120]!r}"
            )
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        info = KeyInfo(
            key_id="key_" + secrets.token_hex(6),
            name=name,
            prefix=plaintext[:_PREFIX_CHARS],
            scopes=check_scopes(scopes),
            created_ts=_now(),
        )
        with self._transaction() as db:
            db.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (info.key_id, info.name, info.prefix, _sha256(plaintext), " ".join(info.scopes),
                 info.created_ts),
            )  # fmt: skip
        return info, plaintext

    def check(self, plaintext: str) -> KeyInfo | None:
        """The key's description when it exists and is not revoked, else None."""
        if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > _MAX_KEY_CHARS:
            return None
        digest = _sha256(plaintext)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        row = (
            self._db()
            .execute(f"SELECT {_COLUMNS}, sha256 FROM api_keys WHERE sha256 = ?", (digest,))
            .fetchone()
        )
        if row is None or row[5] is not None or not hmac.compare_digest(row[6], digest):
            self._cache.pop(digest, None)
            return None
        info = _info(row)
        if self.cache_ttl > 0:
            self._cache[digest] = (info, now + self.cache_ttl)
        return info

    def revoke(self, key_id_or_prefix: str) -> KeyInfo:
        """Revoke the one key with this id or prefix (or the whole key); revoked ones stay."""
        given = key_id_or_prefix.strip()
        if not given:
            raise ConfigError("expected a key id or prefix (see 'nextbest keys list'), got ''")
        with self._transaction() as db:
            rows = db.execute(f"SELECT {_COLUMNS}, sha256 FROM api_keys").fetchall()
            exact = [r for r in rows if given in (r[0], r[2]) or _sha256(given) == r[6]]
            found = exact or [r for r in rows if r[0].startswith(given) or r[2].startswith(given)]
            if not found:
                raise ConfigError(
                    f"no API key has the id or prefix {given!r}; 'nextbest keys list' shows them"
                )
            if len(found) > 1:
                ids = ", ".join(f"{r[0]} ({r[2]})" for r in found)
                raise ConfigError(
                    f"{given!r} matches {len(found)} API keys: {ids}; give a longer id or prefix"
                )
            (row,) = found
            if row[5] is None:
                db.execute("UPDATE api_keys SET revoked_ts = ? WHERE key_id = ?", (_now(), row[0]))
        self._cache = {k: v for k, v in self._cache.items() if v[0].key_id != row[0]}
        (after,) = (
            self._db()
            .execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (row[0],))
            .fetchall()
        )
        return _info(after)

    def list(self) -> builtins.list[KeyInfo]:
        """Every key, revoked ones included, oldest first."""
        rows = self._db().execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_ts, rowid")
        return [_info(r) for r in rows]

    def close(self) -> None:
        """Close every thread's connection (the store cannot be used afterwards)."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()


_COLUMNS = "key_id, name, prefix, scopes, created_ts, revoked_ts"


def _info(row: tuple[Any, ...]) -> KeyInfo:
    return KeyInfo(row[0], row[1], row[2], tuple(row[3].split()), row[4], row[5])


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- rate limit -------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per key, in this process: ``burst`` requests at once, ``rate`` per second.

    Parameters
    ----------
    rate
        Tokens added per second (``ServeSettings.worker_rate``).
    burst
        Bucket size (``ServeSettings.worker_burst``); a new key starts full.
    clock
        Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(f"rate: expected requests per second > 0, got {rate!r}")
        if burst < 1:
            raise ConfigError(f"burst: expected at least 1 request, got {burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def acquire(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when the request may go ahead, else seconds to wait."""
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


# -- the dependency ---------------------------------------------------------------------------

_BEARER = HTTPBearer(scheme_name="Bearer", auto_error=False)
_X_API_KEY = APIKeyHeader(name="X-API-Key", scheme_name="ApiKey", auto_error=False)
_APIM_KEY = APIKeyHeader(
    name="Ocp-Apim-Subscription-Key", scheme_name="OcpApimSubscriptionKey", auto_error=False
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_HOW = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


class ErrorDetail(BaseModel):
    field: str  # where, dotted: "body.context.cart.0"
    expected: str
    received: str  # a short repr of what was sent


class ErrorInfo(BaseModel):
    status: int
    code: str  # e.g. invalid_request, unauthorized, forbidden, rate_limited, internal_error
    message: str
    details: builtins.list[ErrorDetail] | None = None
    request_id: str | None = None  # on 500s, to find the log record


class ErrorBody(BaseModel):
    """Every error answer (its OpenAPI schema): ``{"error": {...}}``."""

    error: ErrorInfo


# For a route's ``responses=``: documents the error body instead of FastAPI's default 422.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "Refused: the body says why"},
    "5XX": {"model": ErrorBody, "description": "A bug: internal_error with a request id"},
}


class ApiError(Exception):
    """An error answer: status, code, message (and details, headers) of the JSON body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: builtins.list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers


@functools.cache
def require(scope: str) -> Callable[..., Coroutine[Any, Any, KeyInfo]]:
    """A FastAPI dependency admitting requests whose key has ``scope``; it returns the key.

    In local mode a request without a key gets ``local_scopes`` (a key given is still checked).
    Then a token is taken from the key's bucket in ``request.app.state.limiter``: give a route
    one ``require`` (the same scope twice is one dependency, run once per request).
    """
    (needed,) = check_scopes([scope])

    async def api_key(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
        x_api_key: Annotated[str | None, Security(_X_API_KEY)],
        apim_key: Annotated[str | None, Security(_APIM_KEY)],
    ) -> KeyInfo:
        state = request.app.state
        settings: ServeSettings = state.settings
        given = (bearer.credentials if bearer else None) or x_api_key or apim_key
        if given:
            info = state.keys.check(given)
            if info is None:
                raise ApiError(
                    401, "unauthorized", "the API key is unknown or revoked", headers=_CHALLENGE
                )
            if not info.allows(needed):
                raise ApiError(
                    403,
                    "forbidden",
                    f"this route needs the scope '{needed}'; the key {info.prefix}... has "
                    f"{', '.join(info.scopes)}",
                )
        elif settings.local:
            info = KeyInfo(_LOCAL, "local mode", "", settings.local_scopes, "")
            if not info.allows(needed):
                raise ApiError(
                    401,
                    "unauthorized",
                    f"this route needs an API key with the scope '{needed}' ({_HOW}); without a "
                    f"key, local mode allows only {', '.join(settings.local_scopes)}",
                    headers=_CHALLENGE,
                )
        else:
            raise ApiError(401, "unauthorized", f"an API key is needed: {_HOW}", headers=_CHALLENGE)
        wait = state.limiter.acquire(info.key_id)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"this key is over its rate of {state.limiter.rate:g} requests/s; retry in "
                f"{wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return info

    return api_key


# -- installing it ----------------------------------------------------------------------------


def install(app: FastAPI, settings: ServeSettings) -> None:
    """Wire ``app``: state (settings, keys, limiter), the body limit and the error handlers.

    ``app.state.keys`` is opened on ``app.state.db_path`` unless it is set already; likewise
    ``app.state.settings`` and ``app.state.limiter``. Call it after adding any other middleware
    (so its catch-all is the outermost) and before the app starts.
    """
    state = app.state
    if getattr(state, "settings", None) is None:
        state.settings = settings
    if getattr(state, "keys", None) is None:
        db_path = getattr(state, "db_path", None)
        if db_path is None:
            raise ConfigError("install: expected app.state.keys or app.state.db_path, got neither")
        state.keys = KeyStore(Path(db_path))
    if getattr(state, "limiter", None) is None:
        state.limiter = RateLimiter(state.settings.worker_rate, state.settings.worker_burst)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(NextbestError, _nextbest_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.settings.max_body_bytes)
    app.add_middleware(CatchAllMiddleware)  # added last: the outermost


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: builtins.list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The service's error body: ``{"error": {"status", "code", "message", ...}}``."""
    body: dict[str, Any] = {"status": status, "code": code, "message": message, **extra}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}
_NEXTBEST = (  # the first match wins
    (ConfigError, 400, "bad_request"),
    (DataError, 422, "invalid_data"),
    (NotFittedError, 503, "not_ready"),
    (InfeasibleError, 409, "infeasible"),
    (NextbestError, 400, "bad_request"),
)
_MAX_DETAILS = 50
_repr = reprlib.Repr()  # keyword arguments only from Python 3.12
_repr.maxstring = _repr.maxother = 100
_repr.maxlist = _repr.maxdict = _repr.maxset = _repr.maxtuple = 6
_repr.maxlevel = 2


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if status == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    elif status == 405 and message == "Method Not Allowed":
        allowed = (exc.headers or {}).get("Allow")
        message = f"{request.method} is not allowed on {request.url.path}" + (
            f"; allowed: {allowed}" if allowed else ""
        )
    return error_response(status, _CODES.get(status, "http_error"), message, headers=exc.headers)


async def _nextbest_error(request: Request, exc: Exception) -> JSONResponse:
    status, code = next((s, c) for cls, s, c in _NEXTBEST if isinstance(exc, cls))
    return error_response(status, code, str(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = builtins.list(exc.errors())
    if errors and errors[0].get("type") == "json_invalid":
        return _json_error(errors[0], exc.body)
    details = [_detail(e) for e in errors[:_MAX_DETAILS]]
    more = f" (the first {_MAX_DETAILS} shown)" if len(errors) > _MAX_DETAILS else ""
    fields = ", ".join(dict.fromkeys(d["field"] for d in details[:5]))
    message = f"{len(errors)} invalid field(s){more}: {fields}"
    return error_response(422, "invalid_request", message, details=details)


def _detail(error: dict[str, Any]) -> dict[str, str]:
    field = ".".join(str(part) for part in error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "missing":
        return {"field": field, "expected": "a value: the field is required", "received": "nothing"}
    if kind == "extra_forbidden":
        expected = "no such field: unknown fields are refused"
    elif isinstance(error.get("input"), bytes) and field == "body":
        expected = "a JSON body, sent with 'Content-Type: application/json'"
    else:
        expected = str(error.get("msg", "")).removeprefix("Value error, ")
        expected = expected.removeprefix("Input should be ")
    return {"field": field, "expected": expected, "received": _short(error.get("input"))}


def _json_error(error: dict[str, Any], document: Any) -> JSONResponse:
    pos = error["loc"][-1] if isinstance(error["loc"][-1], int) else 0
    text = document if isinstance(document, str) else ""
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    problem = (error.get("ctx") or {}).get("error", "not valid JSON")
    where = f"line {line}, column {column} (character {pos})"
    detail = {
        "field": "body",
        "expected": "a JSON document",
        "received": _short(text[max(0, pos - 30) : pos + 30]),
    }
    return error_response(
        422, "invalid_json", f"the body is not valid JSON: {problem} at {where}", details=[detail]
    )


def _short(value: Any) -> str:
    """A repr of at most 100 characters, however large the value."""
    text = _repr.repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


# -- middleware -------------------------------------------------------------------------------


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: at once from ``Content-Length``, else while read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if announced is not None:
            length = int(announced) if announced.isdigit() else None
            if length is None:
                response = error_response(
                    400,
                    "bad_request",
                    f"Content-Length: expected a whole number of bytes, got "
                    f"{_short(announced.decode('latin-1'))}",
                )
                await response(scope, receive, send)
                return
            if length > self.max_bytes:
                message = f"the request body has {length:,} bytes; {self._limit}"
                await error_response(413, "payload_too_large", message)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException reaches the app's handler through FastAPI's body reader.
                    raise StarletteHTTPException(
                        413, f"the request body is too large; {self._limit}"
                    )
            return message

        await self.app(scope, limited, send)

    @property
    def _limit(self) -> str:
        return f"at most {self.max_bytes:,} bytes are accepted (send smaller batches)"


class CatchAllMiddleware:
    """Any exception no handler took becomes a 500 ``internal_error`` body with a request id.

    The log record names the exception type, the route template and where it was raised; not
    the exception's message, the body or the path, which may hold personal data. Unlike
    Starlette's own handler for ``Exception`` it does not re-raise, so the server logs nothing
    more.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            request_id = uuid.uuid4().hex
            route = getattr(scope.get("route"), "path", None) or "(no route matched)"
            logger.error(
                "internal error %s: %s in %s %s, raised at %s",
                request_id,
                type(exc).__name__,
                scope.get("method", "?"),
                route,
                _where(exc),
            )
            if not started:  # else the server can only drop the connection
                response = error_response(
                    500, "internal_error", "internal error", request_id=request_id
                )
                await response(scope, receive, send)


def _where(exc: BaseException) -> str:
    """The innermost frames (file:line in function), without any values."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(frames))
