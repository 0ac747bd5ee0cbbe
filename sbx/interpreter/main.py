"""Entry point: ``python3 -m interpreter [--port 49999]`` inside the sandbox."""

from __future__ import annotations

import argparse
import asyncio
import logging

import uvicorn

from .app import App
from .kernels import Contexts

PORT = 49999


async def serve(host: str, port: int) -> None:
    contexts = Contexts()
    app = App(contexts)
    config = uvicorn.Config(app, host=host, port=port, loop="asyncio", http="h11",
                            lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    warm = asyncio.create_task(app.warm())
    try:
        await server.serve()
    finally:
        warm.cancel()
        await contexts.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="interpreter")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args.host, args.port))
