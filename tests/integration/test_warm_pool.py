"""The warm pool: creates of a pooled size take a sandbox that is already
restored and idle, with their own identity, and the pool refills."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from sbx import Sandbox
from tests.integration.server import Server, how_started, own_server

pytestmark = pytest.mark.integration


@pytest.fixture
def pool_server() -> Iterator[Server]:
    with own_server({"SBX_WARM_POOL": '{"1x512": 1}', "SBX_PREWARM_SNAPSHOTS": '["1x512"]',
                     "SBX_RECONCILE_INTERVAL_S": "2"}) as server:
        yield server


def pooled(server: Server) -> list[str]:
    with sqlite3.connect(server.data_dir / "sbx.db") as db:
        return [r[0] for r in db.execute("SELECT id FROM sandboxes WHERE state = 'pooled'")]


def wait_pooled(server: Server, timeout: float = 180) -> list[str]:
    deadline = time.monotonic() + timeout
    while not (ids := pooled(server)):
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.25)
    return ids


def test_create_claims_a_pooled_sandbox_with_its_own_identity(pool_server: Server) -> None:
    key = pool_server.api_key
    member = wait_pooled(pool_server)[0]
    with sqlite3.connect(pool_server.data_dir / "sbx.db") as db:
        pool_token = db.execute("SELECT envd_token FROM sandboxes WHERE id = ?",
                                (member,)).fetchone()[0]
    # Its cost is reported: what it reserves, what it uses on the host.
    report = pool_server.admin("pool")
    assert "1x512: target=1 ready=1 reserved_mib=768" in report, report
    used = float(report.split(f"{member} host_memory_mib=")[1].split()[0])
    assert 1 < used < 768, report
    # Nobody sees the pool: not in the list, not as an id.
    h = {"X-API-Key": key}
    assert httpx.get(f"{pool_server.url}/v1/sandbox/", headers=h).json() == []
    assert httpx.get(f"{pool_server.url}/v1/sandbox/{member}", headers=h).status_code == 404

    t0 = time.perf_counter()
    sb = Sandbox.create(api_url=pool_server.url, api_key=key, vcpu=1, memory_mib=512,
                        env_vars={"WHO": "first"}, network_policy={"mode": "deny-all"})
    took = time.perf_counter() - t0
    try:
        assert sb.sandbox_id == member
        assert how_started(pool_server, sb.sandbox_id) == "from warm pool"
        # Far below a restore (hundreds of ms); loose for a shared machine.
        assert took < 2.0, took
        assert sb.commands.run("echo $WHO").stdout == "first\n"
        assert sb.commands.run("nproc").stdout.strip() == "1"
        # The pool's token no longer opens its envd; the caller's does.
        r = httpx.get(f"{pool_server.url}/files", params={"path": "/etc/hostname"},
                      headers={"E2b-Sandbox-Id": sb.sandbox_id, "X-Access-Token": pool_token})
        assert r.status_code == 401
        # Its network policy is the caller's (deny-all), not the pool's.
        assert sb.commands.run("curl -s -m 3 http://10.99.99.99/ || echo refused"
                               ).stdout.strip().endswith("refused")
        # The pool refills with a new member.
        deadline = time.monotonic() + 120
        while not [m for m in pooled(pool_server) if m != member]:
            assert time.monotonic() < deadline, pool_server.tail()
            time.sleep(0.25)
        # A size that is not pooled takes the ordinary path.
        other = Sandbox.create(api_url=pool_server.url, api_key=key, vcpu=2, memory_mib=1024)
        try:
            assert how_started(pool_server, other.sandbox_id) != "from warm pool"
        finally:
            other.kill()
        # A second claim never meets what the first user left behind.
        sb.files.write("/root/secret.txt", "first user's")
        second = Sandbox.create(api_url=pool_server.url, api_key=key, vcpu=1, memory_mib=512)
        try:
            assert how_started(pool_server, second.sandbox_id) == "from warm pool"
            assert not second.files.exists("/root/secret.txt")
            assert second.commands.run("echo ${WHO:-none}").stdout == "none\n"
        finally:
            second.kill()
    finally:
        sb.kill()


def test_pool_survives_a_restart_and_lost_members_are_replaced(pool_server: Server) -> None:
    member = wait_pooled(pool_server)[0]
    pool_server.stop(signal.SIGKILL)
    pool_server.start()
    # Still there after the restart, and claimable.
    assert member in pooled(pool_server)
    sb = Sandbox.create(api_url=pool_server.url, api_key=pool_server.api_key, vcpu=1,
                        memory_mib=512)
    try:
        assert sb.sandbox_id == member
        assert sb.commands.run("echo ok").stdout == "ok\n"
    finally:
        sb.kill()
