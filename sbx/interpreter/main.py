"""Entry point: ``python3 -m interpreter [--port 49999]`` inside the sandbox."""

from __future__ import annotations

import argparse
import asyncio
import logging

import uvicorn

from .app import App
from .kernels import Contexts

PORT = 49999


async def relisten(server: uvicorn.Server, keep: tuple[str, int] | None) -> None:
    """Close every connection but keep's and listen on a fresh socket, before
    a checkpoint (envd's prepare command asks): gVisor restores a listener
    that had accepted connections deaf, and a connection kept across a
    checkpoint is reset, so the gateway must see them closed now."""
    old = list(server.servers)
    # asyncio's Server keeps uvicorn's protocol factory: the new listener
    # serves exactly as the old one.
    factory = old[0]._protocol_factory  # type: ignore[attr-defined]
    sockname = old[0].sockets[0].getsockname()
    for listener in old:
        listener.close()
    for conn in list(server.server_state.connections):
        if getattr(conn, "client", None) != keep:
            conn.transport.close()
    fresh = await asyncio.get_running_loop().create_server(
        factory, host=sockname[0], port=sockname[1], reuse_address=True,
        backlog=server.config.backlog)
    server.servers[:] = [fresh]


async def serve(host: str, port: int) -> None:
    contexts = Contexts()
    app = App(contexts)
    config = uvicorn.Config(app, host=host, port=port, loop="asyncio", http="h11",
                            lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    app.relisten = lambda keep: relisten(server, keep)
    warm = asyncio.create_task(app.warm())
    # Never ready then (the template's build says so): the reason is logged.
    warm.add_done_callback(_log_failure)
    try:
        await server.serve()
    finally:
        warm.cancel()
        await contexts.close()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        logging.getLogger("interpreter").error("warming the default context failed",
                                               exc_info=error)


def main() -> None:
    parser = argparse.ArgumentParser(prog="interpreter")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args.host, args.port))
