"""One JSON route answered without FastAPI's per-request machinery, for requests that need none.

``POST /v1/decide`` is the service's hot route: at 500 requests/s on two cores every tenth of a
millisecond counts, and FastAPI spends about 0.6 ms of CPU on a request before and after the
decision itself (routing, the dependency graph of the key check, its security classes, the body
field, the exception middleware). :class:`DirectRoute`, an ASGI middleware, answers the
requests that are plainly valid itself, with the same pieces the route uses:

* the body is read as FastAPI reads it (``json.loads``) and validated by the same pydantic
  model in Python mode, as FastAPI validates a body parameter;
* the key is taken from the headers as the route's security classes take it
  (:func:`nextbest.serve.security.key_in_headers`) and admitted by the same function
  (:func:`nextbest.serve.security.admit`: 401, 403, 429 with the same bodies and headers);
* the handler is the route's own; nextbest's errors raised in it answer as the app's handlers
  answer them (:func:`nextbest.serve.errors.api_error_response`), anything else propagates to
  the catch-all like any route's bug.

Anything else goes to the app unchanged, with the body already read handed back to it: another
content type or none, no ``Content-Length`` (a streamed body: the body limit checks it while it
is read), a body that is not JSON or does not validate. FastAPI then answers it, and its error
bodies (422 naming the field, ``invalid_json`` with the position) stay the only ones. The route
stays declared in the app, so the OpenAPI schema is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nextbest.errors import NextbestError
from nextbest.serve.errors import ApiError, api_error_response
from nextbest.serve.security import admit, check_scopes, key_in_headers

__all__ = ["DirectRoute"]

_JSON = b"application/json"


class DirectRoute:
    """``POST path`` with a valid JSON body answered directly (see the module docstring).

    Parameters
    ----------
    app
        The application underneath (FastAPI's, with the route declared).
    path
        The route's path, exactly (no parameters).
    model
        The body's pydantic model, as the route declares it.
    scope
        The scope the route's key needs (:func:`nextbest.serve.security.require`'s).
    handler
        The route's work: the validated body in, the JSON answer (a 200) out; it may raise
        :class:`~nextbest.serve.errors.ApiError` or a nextbest error.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str,
        model: type[BaseModel],
        scope: str,
        handler: Callable[[BaseModel], bytes],
    ) -> None:
        self.app = app
        self.path = path
        self.model = model
        (self.scope,) = check_scopes([scope])
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        content_type = length = None
        for name, value in scope["headers"]:
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"content-length" and length is None:
                length = value
        if content_type != _JSON or length is None:
            await self.app(scope, receive, send)
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: no one to answer
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            parsed = self.model.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # not JSON, not UTF-8, or not valid
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            admit(scope["app"].state, key_in_headers(scope["headers"]), self.scope)
            answer = self.handler(parsed)
        except (ApiError, NextbestError) as exc:
            await api_error_response(exc)(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(answer)), (b"content-type", _JSON)],
            }
        )
        await send({"type": "http.response.body", "body": answer})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) first, then what ``receive`` gives."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
