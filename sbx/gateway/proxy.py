"""An ASGI layer in front of the API: requests addressed to a sandbox are
streamed to it, both ways; everything else goes on to the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from sbx.core.errors import NotFound
from sbx.core.sandboxes import SandboxService
from sbx.shared.lifecycle import SandboxState

_HOST_RE = re.compile(r"^(\d{1,5})-(sbx-[a-z0-9]{8})\.")
_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
}


@dataclass(frozen=True)
class Route:
    ip: str
    state: str


def target(scope: Scope) -> tuple[str, int] | None:
    """(sandbox_id, port) when the request is for a sandbox."""
    sandbox_id = port = None
    host = ""
    for name, value in scope["headers"]:
        if name == b"e2b-sandbox-id":
            sandbox_id = value.decode("latin-1").strip()
        elif name == b"e2b-sandbox-port":
            port = value.decode("latin-1").strip()
        elif name == b"host":
            host = value.decode("latin-1")
    if sandbox_id:
        try:
            return sandbox_id, int(port) if port else 49983
        except ValueError:
            return sandbox_id, -1
    m = _HOST_RE.match(host)
    if m:
        return m.group(2), int(m.group(1))
    return None


class Gateway:
    def __init__(self, app: ASGIApp, service: SandboxService) -> None:
        self.app = app
        self.service = service
        # One pool per sandbox: addresses are reused by later sandboxes, and
        # a kept-alive connection to a sandbox that vanished (no FIN from a
        # netstack that is gone) must never carry the next one's requests.
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._routes: dict[str, Route] = {}
        service.on_leaving.append(self.forget)
        self._owner: dict[str, str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        dest = target(scope)
        if dest is None:
            await self.app(scope, receive, send)
            return
        await self.proxy(scope, receive, send, *dest)

    async def route(self, sandbox_id: str) -> Route | None:
        """Where the sandbox is. Running routes are cached until the service
        says the sandbox is leaving (pause, delete): the hot path reads no
        store, and a sandbox being paused gets no new connection."""
        cached = self._routes.get(sandbox_id)
        if cached is not None:
            return cached
        try:
            row = await self.service.get(None, sandbox_id)
        except NotFound:
            return None
        if row.ip_slot is None:
            return None
        route = Route(self.service.address(row), row.state)
        if route.state == SandboxState.RUNNING:
            if len(self._routes) >= 10_000:
                self._routes.clear()
            self._routes[sandbox_id] = route
        return route

    def forget(self, sandbox_id: str) -> None:
        self._routes.pop(sandbox_id, None)

    async def proxy(self, scope: Scope, receive: Receive, send: Send, sandbox_id: str,
                    port: int) -> None:
        if not 1 <= port <= 65535:
            await _error(send, 400, "invalid E2b-Sandbox-Port")
            return
        route = await self.route(sandbox_id)
        if route is None:
            await _error(send, 404, f"Sandbox {sandbox_id} not found")
            return
        if route.state != SandboxState.RUNNING:
            status = 404 if route.state in ("deleted", "killed") else 409
            await _error(send, status, f"Sandbox {sandbox_id} is {route.state}")
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP]
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        content: bytes | AsyncIterator[bytes]
        if length is not None and int(length) <= 1 << 20:
            content = await _read_all(receive)
        else:
            content = _stream_body(receive)
        path = scope.get("raw_path") or scope["path"].encode()
        qs = scope.get("query_string", b"")
        url = f"http://{route.ip}:{port}{path.decode('latin-1')}"
        if qs:
            url += "?" + qs.decode("latin-1")
        client = await self._client(sandbox_id, route.ip)
        req = client.build_request(scope["method"], url, headers=headers, content=content)
        try:
            resp = await client.send(req, stream=True)
        except httpx.HTTPError as exc:
            await _error(send, 502, f"Sandbox {sandbox_id} port {port} is not reachable: {exc}")
            return
        try:
            out_headers = [
                (k.lower(), v) for k, v in resp.headers.raw if k.lower() not in _HOP
            ]
            await send({"type": "http.response.start", "status": resp.status_code,
                        "headers": out_headers})
            if isinstance(content, bytes):
                await _relay_until_gone(resp, send, receive)
            else:
                await _relay(resp, send)
        finally:
            # Closed before its end, the connection to the sandbox is dropped
            # (not pooled): the service inside sees its client leave.
            await resp.aclose()

    async def _client(self, sandbox_id: str, ip: str) -> httpx.AsyncClient:
        owner = self._owner.get(ip)
        if owner is not None and owner != sandbox_id:
            stale = self._clients.pop(owner, None)
            if stale is not None:
                await stale.aclose()
        self._owner[ip] = sandbox_id
        client = self._clients.get(sandbox_id)
        if client is None and len(self._clients) >= 512:
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


async def _relay(resp: httpx.Response, send: Send) -> None:
    async for chunk in resp.aiter_raw():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _relay_until_gone(resp: httpx.Response, send: Send, receive: Receive) -> None:
    """Relay the answer, and stop as soon as the client disconnects, even
    while the sandbox sends nothing: a long-running call (a code cell) the
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


async def _error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"code": status, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
