"""Fast start from template snapshots: a new sandbox is a restore of its
template's snapshot, with its own identity, address and writable layer."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest

from sbx import Sandbox
from tests.integration.server import TEMPLATES, Server, how_started

pytestmark = pytest.mark.integration
TOUCH = "python3 -c \"b = bytearray({mib} << 20); b[::4096] = b'x' * len(b[::4096]); print('ok')\""


def snapshots_of(server: Server) -> list[str]:
    """Sealed template snapshots (not the staging directories of images
    being written, `NAME.tmp-...`)."""
    d = TEMPLATES / "base" / "snapshots"
    return sorted(p.name for p in d.iterdir() if "." not in p.name) if d.exists() else []


def test_prewarmed_sizes_start_from_snapshot_with_their_own_identity(
    sbx_server: Server, org_key: str
) -> None:
    # Prewarming follows /health's 200 by a few seconds.
    deadline = time.monotonic() + 60
    while not any(n.startswith("c1-m512-") for n in snapshots_of(sbx_server)):
        assert time.monotonic() < deadline, snapshots_of(sbx_server)
        time.sleep(0.5)
    made: list[Sandbox] = []
    errors: list[BaseException] = []

    def create(i: int) -> None:
        try:
            made.append(Sandbox.create(api_url=sbx_server.url, api_key=org_key, vcpu=1,
                                       memory_mib=512, env_vars={"WHO": f"sandbox-{i}"}))
        except BaseException as exc:
            errors.append(exc)

    # Two concurrent restores from the same image.
    threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        a, b = made
        for sb in made:
            assert how_started(sbx_server, sb.sandbox_id) == "from template snapshot"
            assert sb.commands.run("nproc").stdout.strip() == "1"
        assert {a.commands.run("echo $WHO").stdout, b.commands.run("echo $WHO").stdout} == {
            "sandbox-0\n", "sandbox-1\n"}
        ip = "ip -4 -o addr show eth0 | awk '{print $4}'"
        assert a.commands.run(ip).stdout != b.commands.run(ip).stdout
        # Writable layers are their own.
        a.files.write("/root/only-a.txt", "a")
        assert not b.files.exists("/root/only-a.txt")
        # Tokens are their own: A's token does not open B's envd.
        r = httpx.get(f"{sbx_server.url}/files", params={"path": "/etc/hostname"},
                      headers={"E2b-Sandbox-Id": b.sandbox_id,
                               "X-Access-Token": a.envd_access_token})
        assert r.status_code == 401
        # The memory limit reached envd through /init: beyond it, killed.
        r1 = a.commands.run(TOUCH.format(mib=900))
        assert r1.exit_code != 0 and "ok" not in r1.stdout
        assert a.commands.run("echo alive").stdout == "alive\n"
    finally:
        for sb in made:
            sb.kill()


def test_unknown_size_boots_cold_then_gets_a_snapshot(sbx_server: Server, org_key: str) -> None:
    # A size no earlier run made an image of (the cache is shared by runs).
    have = {n.split("-")[1] for n in snapshots_of(sbx_server)}
    mib = next(m for m in range(514, 8192, 2) if f"m{m}" not in have)
    with Sandbox.create(api_url=sbx_server.url, api_key=org_key, vcpu=1, memory_mib=mib) as sb:
        assert how_started(sbx_server, sb.sandbox_id) == "cold boot"
        assert sb.commands.run("echo hi").stdout == "hi\n"
    deadline = time.monotonic() + 60
    while not any(n.startswith(f"c1-m{mib}-") for n in snapshots_of(sbx_server)):
        assert time.monotonic() < deadline, snapshots_of(sbx_server)
        time.sleep(0.5)
    try:
        with Sandbox.create(api_url=sbx_server.url, api_key=org_key, vcpu=1,
                            memory_mib=mib) as sb:
            assert how_started(sbx_server, sb.sandbox_id) == "from template snapshot"
            assert sb.commands.run("echo hi").stdout == "hi\n"
    finally:
        for p in (TEMPLATES / "base" / "snapshots").glob(f"c1-m{mib}-*"):
            shutil.rmtree(p, ignore_errors=True)
