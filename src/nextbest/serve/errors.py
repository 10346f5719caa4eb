"""The service's error answers: one JSON body for every refusal, and what produces it.

Every error answers with one shape (:class:`ErrorBody`, documented by :data:`ERROR_RESPONSES`)::

    {"error": {"status": 422, "code": "invalid_request", "message": "...",
               "details": [{"field": "body.customer_id", "expected": "a valid string",
                            "received": "123"}]}}

:func:`add_error_handling` (called by :func:`nextbest.serve.security.install`) wires an app:

* a route raising :class:`ApiError` answers its status, code, message and headers;
* FastAPI's request validation is a 422 naming each field (``invalid_json`` with the line and
  column for a body that is not JSON); Starlette's HTTP errors (404, 405, ...) get the body too;
* nextbest's own errors raised in a route map to: ``ConfigError`` 400 (the request names
  something the workspace does not have), ``DataError`` 422 (the data sent breaks the
  contract), ``NotFittedError`` 503 (no model trained yet: the service is not ready),
  ``InfeasibleError`` 409;
* :class:`BodyLimitMiddleware` refuses a body over the limit with 413, announced or streamed;
* :class:`CatchAllMiddleware` turns anything else, a bug, into a 500 ``internal_error`` with a
  request id, logged with the exception's type, the route template and where it was raised
  only, never its message, the body or the raw path (they may hold customer ids).
"""

from __future__ import annotations

import logging
import reprlib
import traceback
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nextbest.errors import ConfigError, DataError, InfeasibleError, NextbestError, NotFittedError

__all__ = [
    "ERROR_RESPONSES",
    "ApiError",
    "BodyLimitMiddleware",
    "CatchAllMiddleware",
    "ErrorBody",
    "ErrorDetail",
    "ErrorInfo",
    "add_error_handling",
    "api_error_response",
    "error_response",
]

logger = logging.getLogger(__name__)


# -- the error body ---------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    field: str  # where, dotted: "body.context.cart.0"
    expected: str
    received: str  # a short repr of what was sent


class ErrorInfo(BaseModel):
    status: int
    code: str  # e.g. invalid_request, unauthorized, forbidden, rate_limited, internal_error
    message: str
    details: list[ErrorDetail] | None = None
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
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The service's error body: ``{"error": {"status", "code", "message", ...}}``."""
    body: dict[str, Any] = {"status": status, "code": code, "message": message, **extra}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


# -- wiring -----------------------------------------------------------------------------------


def add_error_handling(app: FastAPI, max_body_bytes: int) -> None:
    """Add the exception handlers, the body limit and the catch-all to ``app``.

    Call it after adding any other middleware, so the catch-all is the outermost.
    """
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(NextbestError, _nextbest_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(CatchAllMiddleware)  # added last: the outermost


# -- handlers ---------------------------------------------------------------------------------

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
_UNPARSED = "There was an error parsing the body"  # FastAPI's, when the body is not JSON text
_repr = reprlib.Repr()  # keyword arguments only from Python 3.12
_repr.maxstring = _repr.maxother = 100
_repr.maxlist = _repr.maxdict = _repr.maxset = _repr.maxtuple = 6
_repr.maxlevel = 2


def api_error_response(exc: ApiError | NextbestError) -> JSONResponse:
    """The answer to an :class:`ApiError`, or to one of nextbest's errors raised in a route."""
    if isinstance(exc, ApiError):
        return error_response(
            exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers
        )
    status, code = next((s, c) for cls, s, c in _NEXTBEST if isinstance(exc, cls))
    return error_response(status, code, str(exc))


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return api_error_response(exc)


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
    elif status == 400 and message == _UNPARSED:  # bytes that are no text, say
        detail = {"field": "body", "expected": "a JSON document", "received": "unreadable bytes"}
        message = "the body could not be read: expected a JSON document in UTF-8"
        return error_response(400, "invalid_json", message, details=[detail])
    return error_response(status, _CODES.get(status, "http_error"), message, headers=exc.headers)


async def _nextbest_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NextbestError)
    return api_error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
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
