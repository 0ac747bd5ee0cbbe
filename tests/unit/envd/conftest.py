"""Fixtures: envd as a real subprocess, a raw Connect client and the e2b SDK's clients."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .envd_testlib import TOKEN, Envd, Rpc, Sdk, launch, make_sdk, stop


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

    def make(
        token: str | None = TOKEN,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Envd:
        server = launch(token, extra_args, extra_env)
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
    return make_sdk(envd.url)
