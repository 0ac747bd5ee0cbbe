"""Contexts: one Jupyter kernel each, and a cell's execution on one.

A context runs one cell at a time (a lock); contexts run side by side,
each its own kernel process. Kernels talk over ZeroMQ's ipc transport
(Unix sockets): unlike loopback TCP, those survive gVisor's checkpoint and
restore, so kernels warm in the template snapshot and in paused sandboxes
keep their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import secrets
import shlex
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import AsyncKernelManager

from . import outputs

log = logging.getLogger("interpreter.kernels")

# Language → kernel spec name ("ir": Debian's IRkernel); languages without a
# kernel in the image (Java) are refused.
KERNELS = {"python": "python3", "bash": "bash", "javascript": "javascript",
           "typescript": "typescript", "r": "ir"}
ALIASES = {"python3": "python", "sh": "bash", "shell": "bash", "js": "javascript",
           "ts": "typescript", "node": "javascript"}
DEFAULT_LANGUAGE = "python"
DEFAULT_CWD = os.environ.get("SBX_INTERPRETER_CWD", "/home/user")
# What one cell may send of stdout and stderr together; past it the rest is
# read from the kernel and dropped (a cell printing 100 MiB must neither fill
# the client's memory nor hold the kernel back).
MAX_STREAM_BYTES = 8 << 20
# How often a cell with no output checks that its kernel still lives (a
# kernel killed by the sandbox's OOM guard sends nothing more).
ALIVE_CHECK_S = 0.5
KERNEL_START_TIMEOUT_S = 60.0
RUNTIME_DIR = os.environ.get("SBX_INTERPRETER_RUNTIME", "/tmp/sbx-kernels")
# The kernel extension (charts, per-cell env vars), installed as a module.
PYTHON_EXTENSION = "sbx_ipython"


class UnknownContext(LookupError):
    pass


class UnsupportedLanguage(ValueError):
    pass


class KernelDied(RuntimeError):
    pass


def language_of(name: str | None) -> str:
    lang = (name or DEFAULT_LANGUAGE).strip().lower()
    lang = ALIASES.get(lang, lang)
    if lang not in KERNELS:
        raise UnsupportedLanguage(
            f"language {name!r} is not available in this template "
            f"(available: {', '.join(sorted(KERNELS))})")
    return lang


@dataclass
class Context:
    id: str
    language: str
    cwd: str
    km: AsyncKernelManager
    kc: Any  # AsyncKernelClient
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    env_applied: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}


def kernel_env() -> dict[str, str]:
    """The kernels' environment: the service's, less what only it needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBX_")}
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return env


class Contexts:
    def __init__(self) -> None:
        self._contexts: dict[str, Context] = {}
        self._defaults: dict[str, str] = {}
        self._default_locks: dict[str, asyncio.Lock] = {}
        # The sandbox's own variables (its create's envs), once known: every
        # context gets them beneath a cell's own.
        self.sandbox_env: dict[str, str] = {}

    # -- lifecycle -----------------------------------------------------------
    async def create(self, language: str | None, cwd: str | None) -> Context:
        lang = language_of(language)
        ctx_id = secrets.token_hex(8)
        workdir = cwd or DEFAULT_CWD
        if not os.path.isdir(workdir):
            raise FileNotFoundError(f"cwd {workdir!r} is not a directory")
        km, kc = await self._start_kernel(ctx_id, lang, workdir)
        ctx = Context(ctx_id, lang, workdir, km, kc)
        self._contexts[ctx_id] = ctx
        log.info("context %s (%s) started in %s", ctx_id, lang, workdir)
        return ctx

    async def _start_kernel(self, ctx_id: str, lang: str, cwd: str) -> tuple[Any, Any]:
        os.makedirs(RUNTIME_DIR, mode=0o700, exist_ok=True)
        km = AsyncKernelManager(kernel_name=KERNELS[lang], transport="ipc",
                                ip=os.path.join(RUNTIME_DIR, ctx_id))
        km.connection_file = os.path.join(RUNTIME_DIR, f"{ctx_id}.json")
        extra = []
        if lang == "python":
            extra = [f"--IPKernelApp.extensions={PYTHON_EXTENSION}",
                     # No history database: a file per context for nothing.
                     "--HistoryManager.enabled=False"]
        await km.start_kernel(cwd=cwd, env=kernel_env(), extra_arguments=extra)
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=KERNEL_START_TIMEOUT_S)
        except BaseException:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
            raise
        return km, kc

    async def default(self, language: str | None) -> Context:
        """The language's default context, started on first use."""
        lang = language_of(language)
        lock = self._default_locks.setdefault(lang, asyncio.Lock())
        async with lock:
            ctx_id = self._defaults.get(lang)
            if ctx_id is not None and ctx_id in self._contexts:
                return self._contexts[ctx_id]
            ctx = await self.create(lang, None)
            self._defaults[lang] = ctx.id
            return ctx

    def get(self, ctx_id: str) -> Context:
        ctx = self._contexts.get(ctx_id)
        if ctx is None:
            raise UnknownContext(f"context {ctx_id!r} not found")
        return ctx

    def list(self) -> list[Context]:
        return list(self._contexts.values())

    async def restart(self, ctx_id: str) -> None:
        ctx = self.get(ctx_id)
        async with ctx.lock:
            await self._restart(ctx)

    async def _restart(self, ctx: Context) -> None:
        ctx.kc.stop_channels()
        with contextlib.suppress(Exception):
            await ctx.km.shutdown_kernel(now=True)
        ctx.km, ctx.kc = await self._start_kernel(ctx.id, ctx.language, ctx.cwd)
        ctx.env_applied = {}

    async def remove(self, ctx_id: str) -> None:
        ctx = self.get(ctx_id)
        del self._contexts[ctx_id]
        for lang, default_id in list(self._defaults.items()):
            if default_id == ctx_id:
                del self._defaults[lang]
        ctx.kc.stop_channels()
        await ctx.km.shutdown_kernel(now=True)

    async def close(self) -> None:
        for ctx_id in list(self._contexts):
            with contextlib.suppress(Exception):
                await self.remove(ctx_id)

    # -- execution -----------------------------------------------------------
    async def execute(self, ctx: Context, code: str, env_vars: dict[str, str] | None
                      ) -> AsyncGenerator[dict[str, Any], None]:
        """The cell's events as they come. Cancelled (the client went away,
        or its timeout ran out), the kernel is interrupted and the context
        stays usable; the context's lock is held until the kernel is idle."""
        async with ctx.lock:
            if not await ctx.km.is_alive():
                # Killed (out of memory) after its last cell: a fresh kernel.
                await self._restart(ctx)
            await self._apply_sandbox_env(ctx)
            cell_env = {k: str(v) for k, v in (env_vars or {}).items()}
            if cell_env:
                await self.run_silent(ctx, set_env_code(ctx.language, cell_env))
            try:
                async for event in self._run(ctx, code):
                    yield event
            finally:
                if cell_env:
                    await asyncio.shield(self._restore_env(ctx, cell_env))

    async def _restore_env(self, ctx: Context, cell_env: dict[str, str]) -> None:
        with contextlib.suppress(Exception):
            if await ctx.km.is_alive():
                await self.run_silent(ctx, restore_env_code(ctx.language, list(cell_env)))

    async def _apply_sandbox_env(self, ctx: Context) -> None:
        if self.sandbox_env and ctx.env_applied != self.sandbox_env:
            await self.run_silent(ctx, set_env_code(ctx.language, self.sandbox_env, keep=True))
            ctx.env_applied = dict(self.sandbox_env)

    async def run_silent(self, ctx: Context, code: str) -> None:
        """Run code that shows nothing and counts no execution."""
        msg_id = ctx.kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        await self._reply(ctx, msg_id, None)

    async def _reply(self, ctx: Context, msg_id: str, timeout: float | None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                msg: dict[str, Any] = await ctx.kc.get_shell_msg(timeout=ALIVE_CHECK_S)
            except queue.Empty:
                if not await ctx.km.is_alive():
                    raise KernelDied("the kernel died") from None
                if deadline is not None and loop.time() > deadline:
                    raise TimeoutError from None
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg

    async def _run(self, ctx: Context, code: str) -> AsyncIterator[dict[str, Any]]:
        msg_id = ctx.kc.execute(code, store_history=True, allow_stdin=False)
        reply: asyncio.Task[dict[str, Any]] = asyncio.create_task(self._reply(ctx, msg_id, None))
        sent = 0
        truncated = False
        done = False
        count: int | None = None
        try:
            while True:
                try:
                    msg = await ctx.kc.get_iopub_msg(timeout=ALIVE_CHECK_S)
                except queue.Empty:
                    if reply.done():
                        # IOPub may drop messages under a flood (its
                        # high-water mark): the shell reply still ends the cell.
                        break
                    continue
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg.get("msg_type")
                content = msg.get("content", {})
                if kind == "status" and content.get("execution_state") == "idle":
                    break
                if kind == "execute_input":
                    count = content.get("execution_count")
                    continue
                event = outputs.from_iopub(msg)
                if event is None:
                    continue
                if event["type"] in ("stdout", "stderr"):
                    size = len(event["text"].encode())
                    if sent + size > MAX_STREAM_BYTES:
                        if not truncated:
                            truncated = True
                            yield outputs.stream(
                                "stderr", f"\n[sbx: output past {MAX_STREAM_BYTES >> 20} MiB "
                                "of this cell was dropped]\n")
                        continue
                    sent += size
                yield event
            try:
                msg = await reply
            except KernelDied:
                yield died_error()
                done = True
                return
            content = msg.get("content", {})
            if count is None:
                count = content.get("execution_count")
            if count is not None:
                yield outputs.execution_count(int(count))
            done = True
        finally:
            if not done:
                await asyncio.shield(self._interrupt(ctx, reply))
            reply.cancel()

    async def _interrupt(self, ctx: Context, reply: asyncio.Task[dict[str, Any]]) -> None:
        """Stop the cell (the caller went away or timed out) and wait until
        the kernel is idle, so the next cell starts on a quiet kernel."""
        if reply.done():
            return
        with contextlib.suppress(Exception):
            await ctx.km.interrupt_kernel()
        try:
            await asyncio.wait_for(asyncio.shield(reply), 10)
        except (TimeoutError, KernelDied, asyncio.CancelledError):
            # Deaf to SIGINT (a C loop that never checks): a fresh kernel.
            log.warning("context %s: the interrupted cell did not stop; restarting", ctx.id)
            with contextlib.suppress(Exception):
                await self._restart(ctx)


def died_error() -> dict[str, Any]:
    return outputs.error(
        "KernelDiedError",
        "The kernel of this context died while running the cell, most likely killed "
        "for using more memory than the sandbox has. Its state is lost; the next cell "
        "runs in a fresh kernel.", "")


def set_env_code(language: str, env: dict[str, str], keep: bool = False) -> str:
    """Code that sets env in the kernel's process; unless keep, the old
    values are saved for restore_env_code."""
    values = json.dumps(env)
    if language == "python":
        fn = "set_sandbox_env" if keep else "set_cell_env"
        return f"__import__({PYTHON_EXTENSION!r}).{fn}({values})"
    if language == "r":
        names = ", ".join(json.dumps(k) for k in env)
        args = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in env.items())
        save = "" if keep else f".sbx_env <- Sys.getenv(c({names}), unset = NA)\n"
        return f"{save}invisible(do.call(Sys.setenv, list({args})))"
    if language in ("javascript", "typescript"):
        save = "" if keep else (
            f"globalThis.__sbx_env = Object.fromEntries(Object.keys({values})"
            ".map((k) => [k, process.env[k]]));\n")
        return f"{save}Object.assign(process.env, {values}); undefined"
    lines = [] if keep else [f"__sbx_saved_env=$(declare -p {' '.join(env)} 2>/dev/null)"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items() if k.isidentifier()]
    return "\n".join(lines)


def restore_env_code(language: str, names: list[str]) -> str:
    if language == "python":
        return f"__import__({PYTHON_EXTENSION!r}).restore_cell_env()"
    if language == "r":
        return ("for (k in names(.sbx_env)) if (is.na(.sbx_env[[k]])) Sys.unsetenv(k) "
                "else do.call(Sys.setenv, setNames(list(.sbx_env[[k]]), k))\n"
                "rm(.sbx_env)")
    if language in ("javascript", "typescript"):
        return ("for (const [k, v] of Object.entries(globalThis.__sbx_env || {})) {\n"
                "  if (v === undefined) delete process.env[k]; else process.env[k] = v;\n"
                "}\ndelete globalThis.__sbx_env; undefined")
    return (f"unset {' '.join(n for n in names if n.isidentifier())}\n"
            'eval "$__sbx_saved_env"; unset __sbx_saved_env')
