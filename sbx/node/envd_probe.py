"""Waiting for a sandbox's envd to answer, with raw sockets: this sits on
the create path, and an HTTP client library costs more than the request."""

from __future__ import annotations

import asyncio
import time


async def health(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return len(parts) >= 2 and parts[1] in (b"200", b"204")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def wait_ready(host: str, port: int, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    delay = 0.005
    while True:
        if await health(host, port, timeout=min(1.0, max(0.05, end - time.monotonic()))):
            return
        if time.monotonic() >= end:
            raise TimeoutError(f"envd at {host}:{port} did not answer in {deadline_s}s")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.05)
