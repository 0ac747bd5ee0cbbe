"""Fixtures for the SDK tests: a real envd subprocess (tests of the envd-facing
client) and SDK objects pointed straight at it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sbx.sdk import AsyncSandbox, Sandbox
from tests.unit import hermetic

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKEN = "sdk-test-token"


@dataclass
class LocalEnvd:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # By PID: only the envd this session started.
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="session")
def envd() -> Iterator[LocalEnvd]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBX_")}
    env["SBX_ENVD_ACCESS_TOKEN"] = TOKEN
    log_fd, log_name = tempfile.mkstemp(prefix="sdk-envd-", suffix=".log")
    argv, home = hermetic.wrap(
        [sys.executable, "-m", "sbx.envd", "--port", str(port), "--host", "127.0.0.1"])
    proc = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env=env,
        stdout=log_fd,
        stderr=log_fd,
    )
    os.close(log_fd)
    server = LocalEnvd(f"http://127.0.0.1:{port}", TOKEN, proc, Path(log_name))
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"envd exited early:\n{server.log.read_text()}")
            try:
                if httpx.get(server.url + "/health", timeout=0.5).status_code == 204:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"envd did not start:\n{server.log.read_text()}")
            time.sleep(0.05)
        yield server
    finally:
        _stop(proc)
        hermetic.remove(home)
        server.log.unlink(missing_ok=True)


@pytest.fixture
def sbx(envd: LocalEnvd) -> Iterator[Sandbox]:
    sandbox = Sandbox._for_envd(envd.url, envd.token)
    with sandbox:
        yield sandbox


@pytest.fixture
async def async_sbx(envd: LocalEnvd) -> AsyncIterator[AsyncSandbox]:
    sandbox = AsyncSandbox._for_envd(envd.url, envd.token)
    async with sandbox:
        yield sandbox


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch directory; envd runs on this host, so its paths are ours."""
    with tempfile.TemporaryDirectory(prefix="sdk-test-") as d:
        yield Path(d)


def open_connections(port: int) -> int:
    """TCP connections from this process to ``port`` (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count
