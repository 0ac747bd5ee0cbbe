"""Request routing, authentication and the small plain-HTTP endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import users
from .auth import basic_username, token_ok
from .connect import Code, ConnectError, ConnectRouter, send_error
from .files import FilesApi
from .filesystem_service import FilesystemService
from .httpd import Request, Response
from .process_service import ProcessService
from .reaper import Reaper
from .startcmd import StartCommand
from .state import EnvdState
from .template import DEFAULT_START_LOG

NO_STORE = [("Cache-Control", "no-store")]
UNAUTHORIZED = "unauthorized access, please provide a valid access token"
SERVICE_PREFIXES = ("/process.Process/", "/filesystem.Filesystem/")
# Bound on /init's waitReady, seconds.
MAX_WAIT_READY = 3600


class App:
    def __init__(
        self,
        state: EnvdState,
        reaper: Reaper,
        force_polling: bool = False,
        start_log: str = DEFAULT_START_LOG,
    ) -> None:
        self.state = state
        self.router = ConnectRouter()
        self.processes = ProcessService(state, reaper)
        self.processes.register(self.router)
        self.start_cmd = StartCommand(state, self.processes, start_log)
        self.filesystem = FilesystemService(state, force_polling)
        self.filesystem.register(self.router)
        self.files = FilesApi(state)
        self._cpu_sample: tuple[float, float] | None = None
        # Set by main once the HTTP server exists (see HttpServer.relisten).
        self.relisten: Callable[[asyncio.StreamWriter], Awaitable[None]] | None = None

    def close(self) -> None:
        self.start_cmd.stop()
        self.processes.shells.close()
        self.filesystem.close()

    async def __call__(self, req: Request, resp: Response) -> None:
        path = req.path
        if path == "/health":
            await resp.send(204, headers=NO_STORE)
        elif path == "/ready":
            # Unauthenticated like /health: it tells no more than whether the
            # template's start command is up.
            await self._ready(req, resp)
        elif path == "/files":
            # Authenticated there: a signed URL may stand in for the token.
            await self.files.handle(req, resp)
        elif path == "/init":
            await self._init(req, resp)
        elif path.startswith(SERVICE_PREFIXES):
            if not token_ok(self.state, req):
                await send_error(resp, ConnectError(Code.UNAUTHENTICATED, UNAUTHORIZED))
            elif self.router.handles(path):
                await self.router.handle(req, resp, basic_username(req))
            else:
                await send_error(resp, ConnectError(Code.UNIMPLEMENTED, f"no procedure {path}"))
        elif not token_ok(self.state, req):
            await resp.send_json(401, {"code": 401, "message": UNAUTHORIZED})
        elif path == "/envs" and req.method == "GET":
            await resp.send_json(200, self.state.env_vars, NO_STORE)
        elif path == "/metrics" and req.method == "GET":
            await resp.send_json(200, self._metrics(), NO_STORE)
        elif path == "/snapshot/prepare" and req.method == "POST":
            # The host is about to checkpoint the sandbox: every other
            # connection ends and envd listens on a fresh socket (the
            # template's start command too, through its prepare command).
            await self.start_cmd.before_snapshot()
            if self.relisten is not None:
                await self.relisten(req.conn.writer)
            resp.keep_alive = False
            await resp.send(204, headers=NO_STORE)
        else:
            await resp.send_json(404, {"code": 404, "message": f"no route for {path}"})

    async def _init(self, req: Request, resp: Response) -> None:
        if req.method != "POST":
            await resp.send(405, headers=[("Allow", "POST")])
            return
        # Once a token is set only its holder may re-initialise (e.g. rotate it
        # when a sandbox is restored from a shared snapshot).
        if not token_ok(self.state, req):
            await resp.send_json(401, {"code": 401, "message": UNAUTHORIZED})
            return
        raw = await req.body.read_all(1024 * 1024)
        try:
            body: Any = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            await resp.send_json(400, {"code": 400, "message": f"invalid JSON: {e}"})
            return
        error = self._apply_init(body)
        if error:
            await resp.send_json(400, {"code": 400, "message": error})
            return
        wait = body.get("waitReady")
        # The rest is applied by now: the caller may retry the /init alone.
        if wait is not None and not await self.start_cmd.wait_ready(float(wait)):
            await self._send_ready(resp)
            return
        await resp.send(204, headers=NO_STORE)

    async def _ready(self, req: Request, resp: Response) -> None:
        if req.method not in ("GET", "HEAD"):
            await resp.send(405, headers=[("Allow", "GET, HEAD")])
            return
        await self._send_ready(resp)

    async def _send_ready(self, resp: Response) -> None:
        if self.start_cmd.ready:
            await resp.send_json(200, {"ready": True}, NO_STORE)
        else:
            reason = self.start_cmd.reason or "not ready"
            await resp.send_json(503, {"ready": False, "reason": reason}, NO_STORE)

    def _apply_init(self, body: Any) -> str | None:
        """Validate everything first, then apply, so a bad request changes nothing."""
        if not isinstance(body, dict):
            return "body must be a JSON object"
        token = body.get("accessToken")
        env_vars = body.get("envVars")
        default_user = body.get("defaultUser")
        workdir = body.get("defaultWorkdir")
        hostname = body.get("hostname")
        memory_mib = body.get("memoryMib")
        warm = body.get("warmShells")
        wait_ready = body.get("waitReady")
        if wait_ready is not None and (
            not isinstance(wait_ready, (int, float)) or isinstance(wait_ready, bool)
            or not 0 <= wait_ready <= MAX_WAIT_READY
        ):
            return f"waitReady must be a number of seconds from 0 to {MAX_WAIT_READY}"
        if warm is not None and (
            not isinstance(warm, int) or isinstance(warm, bool) or not 0 <= warm <= 4
        ):
            return "warmShells must be an integer from 0 to 4"
        if memory_mib is not None and (
            not isinstance(memory_mib, int) or isinstance(memory_mib, bool) or memory_mib <= 0
        ):
            return "memoryMib must be a positive integer"
        for name, value in (
            ("accessToken", token),
            ("defaultUser", default_user),
            ("defaultWorkdir", workdir),
            ("hostname", hostname),
        ):
            if value is not None and not isinstance(value, str):
                return f"{name} must be a string"
        if env_vars is not None and (
            not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values())
        ):
            return "envVars must be an object of strings"
        trust = body.get("trust")
        if trust is not None and not (
            isinstance(trust, dict) and set(trust) == {"pem", "bundle", "caFile"}
            and all(isinstance(v, str) for v in trust.values())
            and os.path.isabs(trust["bundle"]) and os.path.isabs(trust["caFile"])
            and "-----BEGIN CERTIFICATE-----" in trust["pem"]
        ):
            return "trust must be {pem: a PEM certificate, bundle and caFile: absolute paths}"
        if token == "":
            return "accessToken must not be empty"
        if default_user:
            try:
                users.lookup(default_user)
            except users.UnknownUser:
                return f"unknown user '{default_user}'"
        if trust is not None:
            error = _trust(trust["pem"], trust["bundle"], trust["caFile"])
            if error:
                return error
        if token is not None:
            self.state.access_token = token
        if env_vars:
            self.state.env_vars.update(env_vars)
        if default_user is not None:
            self.state.default_user = default_user or None
        if workdir is not None:
            self.state.default_workdir = workdir or None
        if memory_mib is not None:
            self.state.memory_limit_mib = memory_mib
        if warm is not None:
            self.state.warm_shells = warm
            self.processes.shells.resize(warm)
        if hostname:
            # Best effort: needs CAP_SYS_ADMIN in a UTS namespace of our own.
            with contextlib.suppress(OSError):
                socket.sethostname(hostname)
        return None

    def _metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": int(time.time()), "cpu_count": os.cpu_count() or 1}
        with contextlib.suppress(OSError, ValueError):
            mem: dict[str, int] = {}
            with open("/proc/meminfo") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    mem[key] = int(rest.split()[0]) * 1024
            total = mem["MemTotal"]
            used = total - mem.get("MemAvailable", mem.get("MemFree", 0))
            out.update(
                mem_total=total,
                mem_used=used,
                mem_total_mib=total >> 20,
                mem_used_mib=used >> 20,
            )
        with contextlib.suppress(OSError):
            disk = shutil.disk_usage("/")
            out.update(disk_total=disk.total, disk_used=disk.used)
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open("/proc/stat") as f:
                fields = [float(x) for x in f.readline().split()[1:]]
            idle, total_time = fields[3] + fields[4], sum(fields)
            if self._cpu_sample is not None:
                d_total = total_time - self._cpu_sample[1]
                d_idle = idle - self._cpu_sample[0]
                if d_total > 0:
                    out["cpu_used_pct"] = round(100.0 * (1 - d_idle / d_total), 2)
            self._cpu_sample = (idle, total_time)
        return out


TRUST_BEGIN = "# sbx egress CA begin\n"
TRUST_END = "# sbx egress CA end\n"


def _trust(pem: str, bundle: str, ca_file: str) -> str | None:
    """The egress CA into the system bundle (replacing one put there
    before, between markers) and on its own into ca_file."""
    try:
        with open(bundle, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        return f"reading {bundle} failed: {e.strerror}"
    start = text.find(TRUST_BEGIN)
    if start >= 0:
        end = text.find(TRUST_END, start)
        text = text[:start] + (text[end + len(TRUST_END):] if end >= 0 else "")
    if text and not text.endswith("\n"):
        text += "\n"
    pem = pem if pem.endswith("\n") else pem + "\n"
    block = TRUST_BEGIN + pem + TRUST_END
    return (_write_root_file(bundle, (text + block).encode("utf-8", "surrogateescape"))
            or _write_root_file(ca_file, pem.encode()))


def _write_root_file(path: str, content: bytes) -> str | None:
    """Replace path (root's, mode 0644) in one rename: a reader never sees
    half of it. Answers an error message or None."""
    tmp = f"{path}.sbx-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with open(fd, "wb") as f:
            f.write(content)
            os.fchmod(f.fileno(), 0o644)
        os.rename(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return f"writing {path} failed: {e.strerror}"
    return None
