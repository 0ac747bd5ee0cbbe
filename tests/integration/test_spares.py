"""Spare disks: one is made and mounted ahead; a create takes it (its mount
moves with it into the sandbox's directory) and another is made behind."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.integration.server import Server, mounts_of

pytestmark = pytest.mark.integration


def spares(server: Server) -> list[Path]:
    root = server.data_dir / "spares"
    return sorted(root.iterdir()) if root.exists() else []


def wait_one_spare(server: Server) -> Path:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        found = spares(server)
        mounted = {str(p) for p in mounts_of(server.data_dir)}
        if len(found) == 1 and str(found[0] / "upper") in mounted:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no mounted spare: {spares(server)}")


def test_create_takes_the_spare_and_one_is_made_behind(sbx_server: Server,
                                                       api: httpx.Client) -> None:
    spare = wait_one_spare(sbx_server)
    # A fresh filesystem: nothing of anybody's.
    assert [p.name for p in (spare / "upper").iterdir()] == ["lost+found"]
    r = api.post("/v1/sandbox/", json={"template_name": "base", "vcpu": 1, "memory_mib": 512})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    upper = sbx_server.data_dir / "sandboxes" / sid / "upper"
    mounted = [str(p) for p in mounts_of(sbx_server.data_dir)]
    assert str(upper) in mounted
    assert not spare.exists()
    assert wait_one_spare(sbx_server) != spare
    # The sandbox writes to that disk; deleting the sandbox unmounts it.
    from sbx import Sandbox

    with Sandbox.connect(sid, api_url=sbx_server.url,
                         api_key=api.headers["X-API-Key"]) as sb:
        assert sb.commands.run("echo x > /root/y && cat /root/y").stdout == "x\n"
    assert str(upper) not in [str(p) for p in mounts_of(sbx_server.data_dir)]
