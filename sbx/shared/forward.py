"""Streaming one ASGI HTTP request to an upstream and its answer back, both
ways, bodies never held whole (but small ones). The gateway forwards a
client's request to a sandbox (or, in a cluster, to the sandbox's node),
and a node forwards it on to its sandbox, with this one piece."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
from starlette.types import Receive, Scope, Send

HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
}


async def forward(scope: Scope, receive: Receive, send: Send, client: httpx.AsyncClient,
                  base: str, extra_headers: list[tuple[bytes, bytes]], what: str,
                  drop: frozenset[bytes] = frozenset()) -> None:
    """scope's request to base + its path and query; 502 naming `what` when
    the upstream cannot be reached. drop: request headers not to pass on."""
    headers = [(k, v) for k, v in scope["headers"] if k not in HOP and k not in drop]
    headers += extra_headers
    length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    content: bytes | AsyncIterator[bytes]
    if length is not None and int(length) <= 1 << 20:
        content = await _read_all(receive)
    else:
        content = _stream_body(receive)
    path = scope.get("raw_path") or scope["path"].encode()
    qs = scope.get("query_string", b"")
    url = f"{base}{path.decode('latin-1')}"
    if qs:
        url += "?" + qs.decode("latin-1")
    req = client.build_request(scope["method"], url, headers=headers, content=content)
    try:
        resp = await client.send(req, stream=True)
    except httpx.HTTPError as exc:
        await error(send, 502, f"{what} is not reachable: {exc}")
        return
    try:
        out_headers = [(k.lower(), v) for k, v in resp.headers.raw if k.lower() not in HOP]
        await send({"type": "http.response.start", "status": resp.status_code,
                    "headers": out_headers})
        if isinstance(content, bytes):
            await _relay_until_gone(resp, send, receive)
        else:
            await _relay(resp, send)
    finally:
        # Closed before its end, the connection upstream is dropped (not
        # pooled): the service inside sees its client leave.
        await resp.aclose()


async def _relay(resp: httpx.Response, send: Send) -> None:
    async for chunk in resp.aiter_raw():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _relay_until_gone(resp: httpx.Response, send: Send, receive: Receive) -> None:
    """Relay the answer, and stop as soon as the client disconnects, even
    while the upstream sends nothing: a long-running call (a code cell) the
    client gave up on must see its connection close, not run on unseen."""
    relay = asyncio.create_task(_relay(resp, send))
    gone = asyncio.create_task(_disconnected(receive))
    try:
        await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not relay.done():
            relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay


async def _disconnected(receive: Receive) -> None:
    # The request body was read whole: what is left to receive is the end.
    while (await receive())["type"] != "http.disconnect":
        pass


class Pools:
    """One connection pool per sandbox: addresses are reused by later
    sandboxes, and a kept-alive connection to a sandbox that vanished (no
    FIN from a netstack that is gone) must never carry the next one's
    requests. A new sandbox at an address closes the old one's pool."""

    def __init__(self, max_pools: int = 512) -> None:
        self.max_pools = max_pools
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._owner: dict[str, str] = {}

    async def client(self, sandbox_id: str, address: str) -> httpx.AsyncClient:
        owner = self._owner.get(address)
        if owner is not None and owner != sandbox_id:
            stale = self._clients.pop(owner, None)
            if stale is not None:
                await stale.aclose()
        self._owner[address] = sandbox_id
        client = self._clients.get(sandbox_id)
        if client is None and len(self._clients) >= self.max_pools:
            # Dicts keep insertion order: the oldest pool goes first.
            oldest = next(iter(self._clients))
            await self._clients.pop(oldest).aclose()
        if client is None:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(connect=5.0, read=None, write=60.0, pool=10.0),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                follow_redirects=False,
            )
            self._clients[sandbox_id] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


async def _read_all(receive: Receive) -> bytes:
    parts = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        parts.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    return b"".join(parts)


async def _stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        body = msg.get("body", b"")
        if body:
            yield body
        if not msg.get("more_body"):
            return


async def error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"code": status, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
