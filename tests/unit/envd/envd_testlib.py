"""Helpers for the envd tests: launching envd and a raw Connect client.

A uniquely named module (not conftest) so that test files can import it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.unit import hermetic

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKEN = "test-token-7f3a"
# Must never reach a spawned process (envd strips every SBX_ENVD_* variable).
EXTRA_SECRET = ("SBX_ENVD_SOMETHING_SECRET", "do-not-leak")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Envd:
    port: int
    token: str | None
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    home: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def launch(
    token: str | None,
    extra_args: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Envd:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBX_ENVD_")}
    if token is not None:
        env["SBX_ENVD_ACCESS_TOKEN"] = token
    env[EXTRA_SECRET[0]] = EXTRA_SECRET[1]
    env["ENVD_TEST_MARKER"] = "inherited"
    # Whatever this host has at envd's default paths is none of a test's business.
    env["SBX_ENVD_TEMPLATE_CONFIG"] = "/nonexistent/sbx-test/template.json"
    env["SBX_ENVD_START_LOG"] = "/nonexistent/sbx-test/start.log"
    env.update(extra_env or {})
    port = free_port()
    log_fd, log_name = tempfile.mkstemp(prefix="envd-test-", suffix=".log")
    args, home = hermetic.wrap(
        [sys.executable, "-m", "sbx.envd", "--port", str(port), *(extra_args or [])])
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log_fd, stderr=log_fd)
    os.close(log_fd)
    envd = Envd(port, token, proc, Path(log_name), extra_args or [], home)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envd exited early:\n{envd.log()}")
        try:
            if httpx.get(envd.url + "/health", timeout=0.5).status_code == 204:
                return envd
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    stop(envd)
    raise RuntimeError(f"envd did not become healthy:\n{envd.log()}")


def stop(envd: Envd) -> None:
    # Only the process this test run started.
    if envd.proc.poll() is None:
        envd.proc.terminate()
        try:
            envd.proc.wait(5)
        except subprocess.TimeoutExpired:
            envd.proc.kill()
            envd.proc.wait(5)
    hermetic.remove(envd.home)
    envd.log_path.unlink(missing_ok=True)


# --- raw Connect client --------------------------------------------------------


def envelope(obj: Any, flags: int = 0) -> bytes:
    payload = json.dumps(obj).encode()
    return struct.pack(">BI", flags, len(payload)) + payload


def parse_frames(data: bytes) -> list[tuple[int, Any]]:
    frames = []
    while data:
        flags, size = struct.unpack(">BI", data[:5])
        frames.append((flags, json.loads(data[5 : 5 + size])))
        data = data[5 + size :]
    return frames


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass
class StreamResult:
    status: int
    events: list[dict[str, Any]]
    end: dict[str, Any]

    @property
    def pid(self) -> int:
        return int(self.events[0]["event"]["start"]["pid"])

    def output(self, kind: str = "stdout") -> bytes:
        return b"".join(
            unb64(e["event"]["data"][kind])
            for e in self.events
            if "data" in e.get("event", {}) and kind in e["event"]["data"]
        )

    @property
    def exit(self) -> dict[str, Any]:
        last = self.events[-1]["event"]
        assert "end" in last, self.events
        return dict(last["end"])


class Rpc:
    def __init__(self, url: str, token: str | None) -> None:
        headers = {"X-Access-Token": token} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30)

    def unary(self, method: str, msg: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post(
            "/" + method,
            content=json.dumps(msg).encode(),
            headers={"content-type": "application/json", **(headers or {})},
        )

    def call(self, method: str, msg: Any, headers: dict[str, str] | None = None) -> Any:
        resp = self.unary(method, msg, headers)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def stream(self, method: str, msg: Any, headers: dict[str, str] | None = None) -> StreamResult:
        resp = self.http.post(
            "/" + method,
            content=envelope(msg),
            headers={"content-type": "application/connect+json", **(headers or {})},
        )
        frames = parse_frames(resp.content) if resp.status_code == 200 else []
        assert frames, (resp.status_code, resp.content)
        assert frames[-1][0] == 0x02, frames
        assert all(flags == 0 for flags, _ in frames[:-1])
        return StreamResult(resp.status_code, [m for _, m in frames[:-1]], frames[-1][1])

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Rpc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Sdk:
    commands: Any
    files: Any
    pty: Any


def make_sdk(url: str, token: str = TOKEN) -> Sdk:
    """The e2b SDK's own envd-level clients, pointed at the envd at ``url``."""
    from e2b.api.client_sync import get_envd_api
    from e2b.connection_config import ConnectionConfig
    from e2b.sandbox_sync.commands.command import Commands
    from e2b.sandbox_sync.commands.pty import Pty
    from e2b.sandbox_sync.filesystem.filesystem import Filesystem
    from packaging.version import Version

    config = ConnectionConfig(extra_sandbox_headers={"X-Access-Token": token})
    version = Version("0.6.4")
    api = get_envd_api(config, url)
    return Sdk(
        commands=Commands(url, config, version, api),
        files=Filesystem(url, version, config, api),
        pty=Pty(url, config, version, api),
    )


class AsyncFrames:
    """Reads Connect envelopes from a streaming httpx response as they arrive."""

    def __init__(self, resp: httpx.Response) -> None:
        self._chunks = resp.aiter_bytes()
        self._buf = b""

    async def next(self) -> tuple[int, Any]:
        while True:
            if len(self._buf) >= 5:
                flags, size = struct.unpack(">BI", self._buf[:5])
                if len(self._buf) >= 5 + size:
                    payload = self._buf[5 : 5 + size]
                    self._buf = self._buf[5 + size :]
                    return flags, json.loads(payload)
            self._buf += await self._chunks.__anext__()

    async def event(self) -> dict[str, Any]:
        """The next process event (skipping keepalives); fails on end of stream."""
        while True:
            flags, msg = await self.next()
            assert flags == 0, msg
            event = msg["event"]
            if "keepalive" not in event:
                return dict(event)


def async_client(envd: Envd, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"X-Access-Token": token} if token else {}
    return httpx.AsyncClient(base_url=envd.url, headers=headers, timeout=30)


STREAM_HEADERS = {"content-type": "application/connect+json"}


def proc_list(rpc: Rpc) -> dict[int, dict[str, Any]]:
    return {p["pid"]: p for p in rpc.call("process.Process/List", {})["processes"]}


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
