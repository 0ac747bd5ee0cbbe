"""A bound on request bodies, before any route buffers one.

Every JSON route reads its whole body into memory (`await request.body()`),
so an unbounded body is unbounded memory: one of 400 MiB took the server
from 533 MiB to 2.5 GiB. This layer answers 413, in the called surface's
error shape, as soon as a body is known to be too large: at once when its
Content-Length says so, else when the bytes read pass the bound, so no
more than the bound (and one chunk) is ever read. `POST /templates` (a
build context upload) is bounded by its own route, at
SBX_BUILD_MAX_CONTEXT_MIB. Requests to a sandbox (envd file uploads) never
reach this layer: the gateway streams them before it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sbx.api import errors
from sbx.core.errors import TooLarge

# The largest valid JSON body of any client route is far below this (env
# vars, metadata and policies are bounded in count and size).
JSON_MAX_BYTES = 1 << 20
# A cluster node's egress audit batch (up to 5000 events, with bodies when
# a sandbox's audit keeps them) from a node that holds a node key.
NODE_MAX_BYTES = 64 << 20


def _limit(scope: Scope) -> int | None:
    """The bound on this request's body; None: its route bounds it."""
    path = scope["path"]
    if scope["method"] == "POST" and path.rstrip("/") == "/templates":
        return None
    if path.startswith("/internal/nodes/"):
        return NODE_MAX_BYTES
    return JSON_MAX_BYTES


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"The request body is larger than {limit >> 20} MiB")


class BodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = _limit(scope) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            exc = _too_large(limit)
            response = errors.render(Request(scope), exc.status, exc.message, exc)
            await response(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the route's body read: the API's error
                    # handlers render it in the surface's shape.
                    raise _too_large(limit)
            return message

        await self.app(scope, bounded, send)
