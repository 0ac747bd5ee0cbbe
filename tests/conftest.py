"""Shared fixtures: a real sbx server (real runsc, nftables, SQLite) for the
integration and compatibility suites, and a real PostgreSQL (tests.postgres)
for the store's tests on both backends; each created only when a test asks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.server import Server, free_subnet, leaks, mounts_of
from tests.integration.server import own_server as own
from tests.postgres import Postgres, db_url, postgres

__all__ = ["db_url", "postgres"]


@pytest.fixture(scope="session")
def sbx_server() -> Iterator[Server]:
    if os.geteuid() != 0:
        raise RuntimeError("the sbx server fixture needs root (runsc, netns, nftables)")
    server = Server(Path(f"/var/tmp/sbx-test-{uuid.uuid4().hex[:8]}"), subnet=free_subnet())
    try:
        server.start()
        yield server
    finally:
        tag = server.node_tag
        data_dir = server.data_dir
        server.teardown()
        assert leaks(tag) == {}, leaks(tag)
        assert mounts_of(data_dir) == []
        # Teardown removes the node's own parent cgroups and runsc root too.
        assert not list(Path("/sys/fs/cgroup").glob(f"*/sbx-{tag}"))
        assert not (Path("/run/sbx") / tag).exists()


@pytest.fixture
def org_key(sbx_server: Server) -> str:
    """A fresh organisation (its own sandbox quota) for one test."""
    return sbx_server.new_org(f"org-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def api(sbx_server: Server, org_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sbx_server.url, headers={"X-API-Key": org_key},
                      timeout=60) as client:
        yield client
        # Whatever a test left: delete it, so the leak check stays meaningful.
        for sb in client.get("/v1/sandbox/").json():
            client.delete(f"/v1/sandbox/{sb['id']}")


@pytest.fixture
def own_server() -> Iterator[Server]:
    """A server of the test's own, for tests that stop, kill or restart it;
    its reconciler runs every second."""
    with own(None) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def own_server_each_store(request: pytest.FixtureRequest) -> Iterator[Server]:
    """own_server, once on SQLite and once on a new PostgreSQL database."""
    if request.param == "sqlite":
        yield request.getfixturevalue("own_server")
        return
    pg: Postgres = request.getfixturevalue("postgres")
    with pg.database() as url, own(None, database_url=url) as server:
        yield server
