"""API keys, scopes and the per-key rate limit of the service, and :func:`install`.

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
every scope. Each answers with the service's error body; that body, its handlers and the
middleware (body limit, catch-all 500) are in :mod:`nextbest.serve.errors`, whose public names
are importable from here too.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import hmac
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from nextbest.errors import ConfigError
from nextbest.serve.errors import (
    ERROR_RESPONSES,
    ApiError,
    BodyLimitMiddleware,
    CatchAllMiddleware,
    ErrorBody,
    ErrorDetail,
    ErrorInfo,
    add_error_handling,
    error_response,
)

if TYPE_CHECKING:
    from nextbest.serve.settings import ServeSettings

# Re-exported from nextbest.serve.errors: ERROR_RESPONSES, ApiError, BodyLimitMiddleware,
# CatchAllMiddleware, ErrorBody, ErrorDetail, ErrorInfo and error_response.
__all__ = [
    "ERROR_RESPONSES",
    "SCOPES",
    "ApiError",
    "BodyLimitMiddleware",
    "CatchAllMiddleware",
    "ErrorBody",
    "ErrorDetail",
    "ErrorInfo",
    "KeyInfo",
    "KeyStore",
    "RateLimiter",
    "admit",
    "check_scopes",
    "error_response",
    "install",
    "key_in_headers",
    "require",
]


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
        given = (bearer.credentials if bearer else None) or x_api_key or apim_key
        return admit(request.app.state, given, needed)

    return api_key


def admit(state: Any, given: str | None, needed: str) -> KeyInfo:
    """The key ``given`` (or local mode without one) if it has scope ``needed`` and a token in
    its bucket; else :class:`ApiError` 401, 403 or 429. ``state`` is the app's: ``settings``,
    ``keys`` and ``limiter``. What :func:`require`'s dependency and the service's direct
    ``/v1/decide`` path (:mod:`nextbest.serve.fastpath`) both run."""
    settings: ServeSettings = state.settings
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


def key_in_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The API key of raw ASGI headers (lower-case names), read as :func:`require` reads it
    through FastAPI's security classes: ``Authorization: Bearer <key>`` (the first such header,
    scheme in any case), else ``X-API-Key``, else ``Ocp-Apim-Subscription-Key`` (the first of
    each, if not empty)."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _KEY_HEADERS and name not in found:
            found[name] = value
    bearer = None
    authorization = found.get(b"authorization", b"").decode("latin-1")
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if authorization and scheme and credentials and scheme.lower() == "bearer":
        bearer = credentials
    x_api_key = found.get(b"x-api-key", b"").decode("latin-1")
    apim_key = found.get(b"ocp-apim-subscription-key", b"").decode("latin-1")
    return bearer or x_api_key or apim_key or None


_KEY_HEADERS = frozenset((b"authorization", b"x-api-key", b"ocp-apim-subscription-key"))


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
    add_error_handling(app, state.settings.max_body_bytes)
