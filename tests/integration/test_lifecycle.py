"""Timeouts enforced by the server, and restart/crash safety with no leaks."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from sbx import Sandbox
from tests.integration.checks import runsc_ids, wait_for
from tests.integration.server import Server, leaks

pytestmark = pytest.mark.integration
BASE = {"template_name": "base", "vcpu": 1, "memory_mib": 512}


def test_timeout_deletes_and_reset_extends(api: httpx.Client) -> None:
    a = api.post("/v1/sandbox/", json={**BASE, "timeout_min": 1}).json()
    b = api.post("/v1/sandbox/", json={**BASE, "timeout_min": 1}).json()
    t0 = time.monotonic()
    time.sleep(40)
    r = api.post(f"/v1/sandbox/{b['id']}/timeout", json={"timeout_min": 1})
    assert r.status_code == 200
    assert wait_for(lambda: api.get(f"/v1/sandbox/{a['id']}").json()["state"] == "deleted", 40)
    elapsed = time.monotonic() - t0
    assert 55 < elapsed < 70, elapsed
    assert api.get(f"/v1/sandbox/{b['id']}").json()["state"] == "running"
    assert api.delete(f"/v1/sandbox/{b['id']}").status_code == 200


def test_restart_keeps_sandboxes_and_crash_leaks_nothing(own_server_each_store: Server) -> None:
    """On SQLite and on PostgreSQL."""
    server = own_server_each_store
    key = server.api_key
    sb = Sandbox.create(api_url=server.url, api_key=key, vcpu=1, memory_mib=512)
    sb.files.write("/root/keep.txt", "still here")
    # Written aside and renamed: a read never sees the file empty (it did,
    # between `>` truncating it and echo writing, on a loaded host).
    sb.commands.run("nohup bash -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n.new; "
                    "mv /tmp/n.new /tmp/n; sleep 0.1; done' >/dev/null 2>&1 &", timeout=10)
    sb.close()
    for how in (signal.SIGTERM, signal.SIGKILL):
        server.stop(how)
        assert sb.sandbox_id in runsc_ids(server)
        server.start()
        again = Sandbox.connect(sb.sandbox_id, api_url=server.url, api_key=key)
        try:
            assert again.files.read("/root/keep.txt") == "still here"
            n1 = int(again.commands.run("cat /tmp/n").stdout)
            time.sleep(0.5)
            assert int(again.commands.run("cat /tmp/n").stdout) > n1
        finally:
            again.close()
    # A sandbox whose runtime vanished behind the server's back is marked.
    root = Path("/run/sbx") / server.node_tag / "runsc"
    subprocess.run(["runsc", "--root", str(root), "kill", sb.sandbox_id, "KILL"], check=True)
    h = {"X-API-Key": key}
    url = f"{server.url}/v1/sandbox/{sb.sandbox_id}"
    assert wait_for(lambda: httpx.get(url, headers=h).json()["state"] == "deleted", 10)
    assert wait_for(lambda: leaks(server.node_tag) == {}, 10), leaks(server.node_tag)


def test_crash_during_create_leaks_nothing(own_server: Server) -> None:
    key = own_server.api_key
    h = {"X-API-Key": key}
    results: list[object] = []

    def create() -> None:
        try:
            results.append(httpx.post(own_server.url + "/v1/sandbox/", json=BASE, headers=h,
                                      timeout=30))
        except httpx.HTTPError as exc:
            results.append(exc)

    t = threading.Thread(target=create)
    t.start()
    # Kill the server while the sandbox is being set up.
    assert wait_for(lambda: bool(leaks(own_server.node_tag)), 10, step=0.01)
    own_server.stop(signal.SIGKILL)
    t.join()
    assert isinstance(results[0], httpx.HTTPError)
    own_server.start()
    assert wait_for(lambda: leaks(own_server.node_tag) == {}, 10), leaks(own_server.node_tag)
    assert httpx.get(own_server.url + "/v1/sandbox/", headers=h).json() == []
