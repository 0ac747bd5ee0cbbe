"""create_app(): the API (FastAPI) behind the gateway, on one port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sbx import __version__
from sbx.api import contract, errors
from sbx.api.body_limit import BodyLimit
from sbx.api.routes import admin, egress, nodes, sandboxes, templates, usage, v1_sandbox
from sbx.api.schemas.answers import Health, HealthDown
from sbx.config import Settings
from sbx.gateway.proxy import Gateway
from sbx.platform import Platform


def create_app(settings: Settings, progress: Callable[[str], None] | None = None,
               on_ready: Callable[[Platform], None] | None = None, cluster: bool = False
               ) -> Any:
    """cluster: a cluster's control plane (`sbx api`), its nodes over the
    wire; else the all-in-one server with its own node."""
    platform = Platform(settings, progress, cluster=cluster)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        if on_ready is not None:
            on_ready(platform)
        try:
            yield
        finally:
            await gateway.aclose()
            await platform.stop()

    app = FastAPI(title="sbx", version=__version__, lifespan=lifespan)
    app.state.platform = platform
    errors.install(app)
    contract.install(app)

    @app.get("/health", tags=["health"], response_model=Health, responses={
        503: {"model": HealthDown, "description": "Starting, or failed"}})
    async def health(request: Request) -> JSONResponse:
        if platform.ready.is_set():
            return JSONResponse({"status": "ok", "version": __version__})
        status = "failed" if platform.failure else "starting"
        return JSONResponse({"code": 503, "message": platform.failure or "starting",
                             "status": status}, status_code=503)

    app.include_router(v1_sandbox.router)
    app.include_router(sandboxes.router)
    app.include_router(egress.router)
    app.include_router(egress.router_002)
    app.include_router(usage.router)
    app.include_router(admin.router)
    app.include_router(templates.router)
    app.include_router(nodes.router)
    gateway = Gateway(BodyLimit(app), platform.sandboxes)
    return gateway
