"""Fixtures: envd as a real subprocess, a raw Connect client and the e2b SDK's clients."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .envd_testlib import TOKEN, Envd, Rpc, Sdk, launch, stop


@pytest.fixture(scope="session")
def envd() -> Iterator[Envd]:
    server = launch(TOKEN)
    try:
        yield server
    finally:
        stop(server)


@pytest.fixture
def envd_factory() -> Iterator[Any]:
    started: list[Envd] = []

    def make(token: str | None = TOKEN, extra_args: list[str] | None = None) -> Envd:
        server = launch(token, extra_args)
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            stop(server)


@pytest.fixture
def rpc(envd: Envd) -> Iterator[Rpc]:
    client = Rpc(envd.url, TOKEN)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch directory owned by this test (envd runs on the same host)."""
    with tempfile.TemporaryDirectory(prefix="envd-test-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def sdk(envd: Envd) -> Sdk:
    from e2b.api.client_sync import get_envd_api
    from e2b.connection_config import ConnectionConfig
    from e2b.sandbox_sync.commands.command import Commands
    from e2b.sandbox_sync.commands.pty import Pty
    from e2b.sandbox_sync.filesystem.filesystem import Filesystem
    from packaging.version import Version

    config = ConnectionConfig(extra_sandbox_headers={"X-Access-Token": TOKEN})
    version = Version("0.6.4")
    api = get_envd_api(config, envd.url)
    return Sdk(
        commands=Commands(envd.url, config, version, api),
        files=Filesystem(envd.url, version, config, api),
        pty=Pty(envd.url, config, version, api),
    )
