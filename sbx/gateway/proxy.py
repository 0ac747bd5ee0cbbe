"""An ASGI layer in front of the API: requests addressed to a sandbox are
streamed to it, both ways; everything else goes on to the API."""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from sbx.core.errors import NotFound, Unavailable
from sbx.core.sandboxes import SandboxService
from sbx.nodeapi.wire import NODE_KEY_HEADER
from sbx.shared.forward import Pools, error, forward
from sbx.shared.lifecycle import SandboxState

_ROUTING = frozenset({NODE_KEY_HEADER, b"e2b-sandbox-id", b"e2b-sandbox-port"})
_NONE: frozenset[bytes] = frozenset()
_HOST_RE = re.compile(r"^(\d{1,5})-(sbx-[a-z0-9]{8})\.")


@dataclass(frozen=True)
class Route:
    ip: str
    state: str
    node_id: str | None = None


def upstream(route: Route, via: tuple[str, str] | None, sandbox_id: str, port: int
             ) -> tuple[str, list[tuple[bytes, bytes]]]:
    """Where to send the request: straight to the sandbox's address, or (via:
    a cluster node's URL and control key, read at each request so a node
    that joined again with new keys is reached) to the node, which forwards it."""
    if via is None:
        return f"http://{route.ip}:{port}", []
    url, key = via
    return url, [(NODE_KEY_HEADER, key.encode()), (b"e2b-sandbox-id", sandbox_id.encode()),
                     (b"e2b-sandbox-port", str(port).encode())]


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
        self._pools = Pools()
        self._routes: dict[str, Route] = {}
        service.on_leaving.append(self.forget)

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
        route = Route(self.service.address(row), row.state, row.node_id)
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
            await error(send, 400, "invalid E2b-Sandbox-Port")
            return
        try:
            route = await self.route(sandbox_id)
        except Unavailable as exc:  # its node is lost or unknown
            await error(send, 503, str(exc))
            return
        if route is None:
            await error(send, 404, f"Sandbox {sandbox_id} not found")
            return
        if route.state != SandboxState.RUNNING:
            status = 404 if route.state in ("deleted", "killed") else 409
            await error(send, status, f"Sandbox {sandbox_id} is {route.state}")
            return
        try:
            via = self.service.fleet.via(route.node_id)
        except Unavailable as exc:
            await error(send, 503, str(exc))
            return
        base, extra = upstream(route, via, sandbox_id, port)
        client = await self._pools.client(sandbox_id, route.ip)
        # Through a node, the routing headers are ours (a client's own
        # node-key header never reaches a node).
        await forward(scope, receive, send, client, base, extra,
                      f"Sandbox {sandbox_id} port {port}", drop=_ROUTING if extra else _NONE)

    async def aclose(self) -> None:
        await self._pools.aclose()
