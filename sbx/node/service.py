"""A node's side of the node interface over HTTP (sbx/nodeapi/wire.py):
every call of the contract, served for the control plane by `sbx node`,
answered by the node's own `Node` (the agent). Only a caller with the
node's control key gets in; nothing here decides anything."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sbx.nodeapi import wire
from sbx.nodeapi.contract import Node, SpareClaim, StartFailed
from sbx.shared.forward import Pools, error, forward

log = logging.getLogger(__name__)


class _Refused(Exception):
    pass


def node_app(node: Node, control_key: str,
             locate: Callable[[str], str | None] | None = None) -> ASGIApp:
    """The node's HTTP API; control_key is what the control plane presents.
    With locate (a sandbox's address on this node, or None), it also
    forwards the gateway's requests for a sandbox's port (see
    SandboxForwarder)."""

    async def authorised(request: Request) -> None:
        got = request.headers.get("authorization", "")
        scheme, _, key = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.encode(),
                                                                   control_key.encode()):
            raise _Refused()

    app = FastAPI(title="sbx node", docs_url=None, redoc_url=None, openapi_url=None)
    r = APIRouter(prefix=wire.PREFIX, dependencies=[Depends(authorised)])

    @app.exception_handler(_Refused)
    async def refused(_r: Request, _e: _Refused) -> JSONResponse:
        return _error(401, "unauthorised", "a valid control key is needed")

    @app.exception_handler(StartFailed)
    async def start_failed(_r: Request, exc: StartFailed) -> JSONResponse:
        return _error(409, "start_failed", str(exc))

    @app.exception_handler(Exception)
    async def failed(_r: Request, exc: Exception) -> JSONResponse:
        log.warning("node call failed: %s", exc)
        return _error(500, "node_error", str(exc) or type(exc).__name__)

    # -- address slots ----------------------------------------------------------
    @r.post("/reserve_slot")
    async def reserve_slot(body: wire.Holder) -> wire.Slot:
        return wire.Slot(slot=await node.reserve_slot(body.holder))

    @r.post("/release_slot")
    async def release_slot(body: wire.Holder) -> wire.Done:
        await node.release_slot(body.holder)
        return wire.Done()

    # -- sandboxes ----------------------------------------------------------------
    @r.post("/start")
    async def start(body: wire.PlanBody) -> StreamingResponse:
        return StreamingResponse(_start(node, body), media_type="application/x-ndjson")

    @r.post("/adopt")
    async def adopt(body: wire.AdoptBody) -> wire.Done:
        await node.adopt(body.plan.plan(), body.pool_token)
        return wire.Done()

    @r.post("/pause")
    async def pause(body: wire.PauseBody) -> wire.Size:
        paused = await asyncio.shield(node.pause(body.sandbox_id, body.slot, body.envd_token))
        return wire.Size(size=paused.size)

    @r.post("/resume")
    async def resume(body: wire.PlanBody) -> wire.Done:
        await asyncio.shield(node.resume(body.plan()))
        return wire.Done()

    def on_sandbox(name: str, call: Callable[[str], Awaitable[None]]) -> None:
        async def handler(body: wire.SandboxRef) -> wire.Done:
            await asyncio.shield(call(body.sandbox_id))
            return wire.Done()
        r.add_api_route(f"/{name}", handler, methods=["POST"], response_model=wire.Done)

    on_sandbox("discard_spent", node.discard_spent)
    on_sandbox("stop", node.stop)
    on_sandbox("forget", node.forget)
    on_sandbox("unfreeze", node.unfreeze)
    on_sandbox("drop_snapshot", node.drop_snapshot)

    @r.post("/runtime_state")
    async def runtime_state(body: wire.SandboxRef) -> wire.State:
        return wire.State(state=await node.runtime_state(body.sandbox_id))

    @r.post("/is_alive")
    async def is_alive(body: wire.AliveQuery) -> wire.Flag:
        return wire.Flag(value=await node.is_alive(body.sandbox_id, body.slot))

    @r.post("/snapshot_sealed")
    async def snapshot_sealed(body: wire.SandboxRef) -> wire.Flag:
        return wire.Flag(value=await node.snapshot_sealed(body.sandbox_id))

    @r.post("/reconcile")
    async def reconcile(body: wire.ReconcileBody) -> wire.Ids:
        dead = await node.reconcile(body.keep, body.in_flight)
        return wire.Ids(ids=sorted(dead))

    # -- spares and templates -------------------------------------------------------
    @r.post("/take_spare")
    async def take_spare(body: wire.Shape) -> wire.MaybeClaim:
        claim = await node.take_spare(Path(body.rootfs), body.vcpu, body.memory_mib,
                                      body.disk_mib)
        return wire.MaybeClaim(claim=wire.Claim(id=claim.id, slot=claim.slot)
                               if claim is not None else None)

    @r.post("/put_back")
    async def put_back(body: wire.Claim) -> wire.Done:
        await node.put_back(SpareClaim(body.id, body.slot))
        return wire.Done()

    @r.post("/want_spares")
    async def want_spares(body: wire.Shape) -> wire.Done:
        await node.want_spares(Path(body.rootfs), body.vcpu, body.memory_mib, body.disk_mib)
        return wire.Done()

    @r.post("/forget_template")
    async def forget_template(body: wire.TemplatePath) -> wire.Done:
        await node.forget_template(Path(body.path))
        return wire.Done()

    @r.post("/prepare_template")
    async def prepare_template(body: wire.PrepareBody) -> wire.Flag:
        return wire.Flag(value=await node.prepare_template(
            Path(body.rootfs), body.vcpu, body.memory_mib, body.ready_s, body.strict))

    # -- egress -----------------------------------------------------------------------
    @r.post("/set_policy")
    async def set_policy(body: wire.PolicyBody) -> wire.Done:
        await node.set_policy(body.sandbox_id, body.policy)
        return wire.Done()

    @r.post("/sync_policy")
    async def sync_policy(body: wire.SyncBody) -> wire.Flag:
        return wire.Flag(value=await node.sync_policy(
            body.sandbox_id, body.slot, body.policy, body.security, body.envd_token,
            Path(body.rootfs)))

    app.include_router(r)
    return SandboxForwarder(app, control_key, locate) if locate is not None else app


class SandboxForwarder:
    """Requests that name a sandbox (E2b-Sandbox-Id, E2b-Sandbox-Port) and
    carry the control key go on to that sandbox's port on this node: the
    control plane's gateway reaches sandboxes on any host this way, the
    sandbox addresses staying the node's own."""

    def __init__(self, app: ASGIApp, control_key: str,
                 locate: Callable[[str], str | None]) -> None:
        self.app = app
        self.key = control_key.encode()
        self.locate = locate
        self._pools = Pools()

    async def aclose(self) -> None:
        await self._pools.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", [])) if scope["type"] == "http" else {}
        sandbox_id = headers.get(b"e2b-sandbox-id")
        if sandbox_id is None:
            await self.app(scope, receive, send)
            return
        if not hmac.compare_digest(headers.get(wire.NODE_KEY_HEADER, b""), self.key):
            await error(send, 401, "a valid control key is needed")
            return
        sid = sandbox_id.decode("latin-1")
        ip = self.locate(sid)
        try:
            port = int(headers.get(b"e2b-sandbox-port", b"49983"))
        except ValueError:
            port = -1
        if ip is None or not 1 <= port <= 65535:
            await error(send, 404, f"Sandbox {sid} is not on this node")
            return
        await forward(scope, receive, send, await self._pools.client(sid, ip),
                      f"http://{ip}:{port}", [],
                      f"Sandbox {sid} port {port}",
                      drop=frozenset({wire.NODE_KEY_HEADER, b"e2b-sandbox-id",
                                      b"e2b-sandbox-port"}))


async def _start(node: Node, body: wire.PlanBody) -> AsyncIterator[bytes]:
    """start() as a stream: the runtime being up is told as it happens, so
    the control plane's bookkeeping overlaps the wait for envd, as in
    process. The start itself runs to its end even if the caller goes."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_up(from_snapshot: bool) -> None:
        await events.put({"up": from_snapshot})

    async def run() -> None:
        try:
            done = await node.start(body.plan(), on_up)
            await events.put({"done": done})
        except StartFailed as exc:
            await events.put({"error": {"kind": "start_failed", "message": str(exc)}})
        except Exception as exc:
            await events.put({"error": {"kind": "node_error", "message": str(exc)}})

    task = asyncio.create_task(run())
    try:
        while True:
            event = await events.get()
            yield (json.dumps(event) + "\n").encode()
            if "up" not in event:
                return
    finally:
        if not task.done():
            # The caller went away: the start finishes anyway (and the
            # control plane's reconcile removes it if no record wants it).
            with contextlib.suppress(Exception):
                await asyncio.shield(task)


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(wire.ErrorAnswer(error=wire.ErrorBody(kind=kind, message=message))
                        .model_dump(), status_code=status)
