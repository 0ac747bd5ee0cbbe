"""The HTTP surface (a bare ASGI app, served by uvicorn).

`/execute` watches for the client's disconnect while the cell runs, also
when the cell prints nothing: a client that gives up (its timeout, a
cancelled request) interrupts the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from . import kernels, outputs

log = logging.getLogger("interpreter.app")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY = 16 << 20
ENVD_ENVS_URL = "http://127.0.0.1:49983/envs"
_CONTEXT_PATH = re.compile(r"^/contexts/([A-Za-z0-9_-]+)(/restart)?$")
WARM_CELL = f"__import__({kernels.PYTHON_EXTENSION!r}).warm()"


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class App:
    def __init__(self, contexts: kernels.Contexts) -> None:
        self.contexts = contexts
        self.ready = asyncio.Event()
        self._env_tokens: set[str] = set()
        # Set by main: drop connections and listen anew (before a snapshot).
        self.relisten: Callable[[tuple[str, int] | None], Awaitable[None]] | None = None

    async def warm(self) -> None:
        """The default Python context started and warm; then /health says
        ready (the template's ready command, so the snapshot holds it)."""
        ctx = await self.contexts.default("python")
        async with ctx.lock:
            await self.contexts.run_silent(ctx, WARM_CELL)
        self.ready.set()
        log.info("ready: default python context %s is warm", ctx.id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await self.route(scope, receive, send)
        except HTTPError as e:
            await send_json(send, e.status, {"code": e.status, "message": str(e)})

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if path == "/health":
            ok = self.ready.is_set()
            await send_json(send, 200 if ok else 503, {"status": "ok" if ok else "starting"})
        elif path == "/snapshot/prepare" and method == "POST":
            client = scope.get("client")
            # From inside the sandbox only (envd's prepare command): it drops
            # every client's connection, running cells included.
            if not client or client[0] != "127.0.0.1":
                raise HTTPError(403, "only from inside the sandbox")
            if self.relisten is not None:
                await self.relisten((client[0], client[1]))
            await send_json(send, 200, {})
        elif path == "/execute" and method == "POST":
            await self.execute(scope, receive, send)
        elif path == "/contexts" and method == "POST":
            body = await read_json(receive)
            try:
                ctx = await self.contexts.create(_opt_str(body, "language"), _opt_str(body, "cwd"))
            except kernels.UnsupportedLanguage as e:
                raise HTTPError(400, str(e)) from None
            except FileNotFoundError as e:
                raise HTTPError(400, str(e)) from None
            await send_json(send, 200, ctx.describe())
        elif path == "/contexts" and method == "GET":
            await send_json(send, 200, [c.describe() for c in self.contexts.list()])
        elif (m := _CONTEXT_PATH.match(path)) is not None:
            ctx_id, restart = m.group(1), m.group(2)
            try:
                if restart and method == "POST":
                    await self.contexts.restart(ctx_id)
                elif not restart and method == "DELETE":
                    await self.contexts.remove(ctx_id)
                else:
                    raise HTTPError(405, f"{method} {path} is not allowed")
            except kernels.UnknownContext as e:
                raise HTTPError(404, str(e)) from None
            await send_json(send, 200, {})
        else:
            raise HTTPError(404, f"no route for {method} {path}")

    async def execute(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_json(receive)
        code = body.get("code")
        if not isinstance(code, str):
            raise HTTPError(400, "code must be a string")
        env_vars = body.get("env_vars") or {}
        if not isinstance(env_vars, dict):
            raise HTTPError(400, "env_vars must be an object")
        timeout = body.get("timeout")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise HTTPError(400, "timeout must be a positive number of seconds")
        ctx_id = _opt_str(body, "context_id")
        try:
            if ctx_id:
                ctx = self.contexts.get(ctx_id)
            else:
                ctx = await self.contexts.default(_opt_str(body, "language"))
        except kernels.UnknownContext as e:
            raise HTTPError(404, str(e)) from None
        except kernels.UnsupportedLanguage as e:
            raise HTTPError(400, str(e)) from None
        await self._learn_sandbox_env(scope)

        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-store")]})
        pump = asyncio.create_task(self._pump(ctx, code, env_vars, timeout, send))
        gone = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not pump.done():
                # The client left: cancelling the cell interrupts the kernel.
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pump
            gone.cancel()
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, ctx: kernels.Context, code: str, env_vars: dict[str, str],
                    timeout: float | None, send: Send) -> None:
        events = self.contexts.execute(ctx, code, env_vars)
        try:
            async with asyncio.timeout(timeout):
                async for event in events:
                    await send({"type": "http.response.body", "more_body": True,
                                "body": json.dumps(event).encode() + b"\n"})
        except TimeoutError:
            event = outputs.error("TimeoutError", f"Execution timed out after {timeout:g} s", "")
            await send({"type": "http.response.body", "more_body": True,
                        "body": json.dumps(event).encode() + b"\n"})
        finally:
            await events.aclose()

    async def _learn_sandbox_env(self, scope: Scope) -> None:
        """The sandbox's own variables come to envd after this service has
        started (the template snapshot is made before any sandbox exists):
        fetched once from envd, with the caller's access token."""
        token = _header(scope, b"x-access-token") or ""
        if token in self._env_tokens:
            return
        try:
            env = await asyncio.to_thread(_fetch_envs, token)
        except (OSError, ValueError) as e:
            log.warning("sandbox env vars not fetched from envd: %s", e)
            return
        self._env_tokens.add(token)
        self.contexts.sandbox_env = env


def _fetch_envs(token: str) -> dict[str, str]:
    req = urllib.request.Request(ENVD_ENVS_URL, headers={"X-Access-Token": token} if token else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        data = json.loads(resp.read())
    if not isinstance(data, dict):
        raise ValueError("envd /envs did not answer an object")
    return {str(k): str(v) for k, v in data.items()}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise HTTPError(400, f"{key} must be a string")
    return value


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def read_json(receive: Receive) -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise HTTPError(400, "client disconnected")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPError(413, "request body too large")
        chunks.append(chunk)
        if not msg.get("more_body"):
            break
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise HTTPError(400, f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the body must be a JSON object")
    return body


async def send_json(send: Send, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
