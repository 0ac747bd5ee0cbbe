"""Waiting for a sandbox's envd to answer, with raw sockets: this sits on
the create path, and an HTTP client library costs more than the request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any


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


async def started(host: str, port: int, deadline_s: float) -> None:
    """Wait until envd's GET /ready says the template's start command is
    ready (at once when there is none); TimeoutError with envd's reason."""
    end = time.monotonic() + deadline_s
    reason = b""
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            try:
                writer.write(b"GET /ready HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n\r\n")
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(), 5)
            finally:
                writer.close()
            if answer.split(b" ", 2)[1:2] == [b"200"]:
                return
            reason = answer.partition(b"\r\n\r\n")[2][:500]
        except (OSError, TimeoutError, IndexError):
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the start command was not ready in {deadline_s:.0f} s: "
                       f"{reason.decode(errors='replace')}")


async def post_init(host: str, port: int, token: str, body: dict[str, Any]) -> None:
    """POST /init to envd: settings that apply after boot (default user,
    and after a restore from a shared snapshot, the sandbox's identity)."""
    # A waitReady init answers once the start command is ready.
    wait = body.get("waitReady")
    await _post(host, port, token, "/init", json.dumps(body).encode(),
                5 + (float(wait) if isinstance(wait, int | float) else 0))


async def prepare_snapshot(host: str, port: int, token: str) -> None:
    """Ask envd to drop its connections and listen anew: the image about to
    be taken must hold no accepted connection (see envd's HttpServer.relisten)."""
    await _post(host, port, token, "/snapshot/prepare", b"")


async def _post(host: str, port: int, token: str, path: str, data: bytes,
                answer_s: float = 5) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"X-Access-Token: {token}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), answer_s)
        parts = line.split()
        if len(parts) < 2 or parts[1] not in (b"200", b"204"):
            rest = await asyncio.wait_for(reader.read(2000), 5)
            raise RuntimeError(f"envd {path} answered {line!r}: {rest!r}")
    finally:
        writer.close()


async def init_when_ready(host: str, port: int, token: str, body: dict[str, Any]) -> bool:
    """A readiness probe that is also the /init: False while envd does not
    accept connections yet. (Repeating /init is harmless: the token it sets
    is the one it is sent with.)"""
    try:
        await post_init(host, port, token, body)
    except (OSError, TimeoutError):
        return False
    return True


async def wait_ready(
    host: str, port: int, deadline_s: float,
    alive: Callable[[], Awaitable[bool]] | None = None,
    probe: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Poll envd's /health (or probe) until it answers; give up early when
    alive() says the sandbox itself is gone (a broken rootfs fails in a
    second, not at the deadline)."""
    start = time.monotonic()
    end = start + deadline_s
    next_alive_check = start + 0.5
    dead_checks = 0
    while True:
        if probe is not None:
            if await probe():
                return
        elif await health(host, port, timeout=min(1.0, max(0.05, end - time.monotonic()))):
            return
        now = time.monotonic()
        if now >= end:
            raise TimeoutError(f"envd at {host}:{port} did not answer in {deadline_s}s")
        if alive is not None and now >= next_alive_check:
            # Three times in a row, 0.5 s apart: a `runsc state` can fail or
            # lag on a busy host, and a false "dead" fails a good create.
            dead_checks = dead_checks + 1 if not await alive() else 0
            if dead_checks >= 3:
                raise RuntimeError("the sandbox stopped before envd answered")
            next_alive_check = now + 0.5
        # A restored envd answers within tens of ms of runsc's exit: poll
        # close behind it (a refused connect costs ~0.2 ms), then slower.
        await asyncio.sleep(0.002 if now - start < 1.0 else 0.02)
