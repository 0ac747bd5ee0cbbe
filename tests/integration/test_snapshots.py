"""Memory snapshots on real gVisor: pause, resume, auto-pause, repeated
cycles, and a server killed while it snapshots."""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import httpx
import pytest

from sbx import Sandbox
from tests.integration.checks import (
    COUNTER,
    counter,
    host_traces,
    runsc_ids,
    state_in_db,
    wait_for,
)
from tests.integration.server import Server

pytestmark = pytest.mark.integration
BASE = {"template_name": "base", "vcpu": 1, "memory_mib": 512}


def test_pause_resume_keeps_everything(sbx_server: Server, org_key: str) -> None:
    h = {"X-API-Key": org_key}
    api = f"{sbx_server.url}/v1/sandbox"
    r = httpx.post(api + "/", json={**BASE, "env_vars": {"KEEP": "me"}}, headers=h, timeout=60)
    sid, token = r.json()["id"], r.json()["envd_access_token"]
    ip_before = httpx.get(f"{sbx_server.url}/sandboxes/{sid}", headers=h).json()["internal_ip"]
    with Sandbox.connect(sid, api_url=sbx_server.url, api_key=org_key) as sb:
        sb.files.write("/root/file.txt", "before pause")
        sb.commands.run(COUNTER)
        time.sleep(0.3)
        n0 = counter(sb)
        t0 = time.monotonic()
        r = httpx.post(f"{api}/{sid}/pause", headers=h, timeout=60)
        pause_s = time.monotonic() - t0
        assert r.status_code == 200 and r.json()["state"] == "paused", r.text
        assert r.json()["timeout_at"] is None
        # Nothing of it runs on the host any more; its snapshot is on disk.
        assert host_traces(sbx_server, sid) == {}
        assert sid not in runsc_ids(sbx_server)
        assert (sbx_server.data_dir / "snapshots" / sid / "manifest.json").exists()
        # Pausing a paused sandbox is a clear 409.
        r = httpx.post(f"{api}/{sid}/pause", headers=h, timeout=60)
        assert r.status_code == 409 and "already paused" in r.json()["message"]
        time.sleep(0.5)
        t0 = time.monotonic()
        r = httpx.post(f"{api}/{sid}/resume", headers=h, timeout=60)
        resume_s = time.monotonic() - t0
        assert r.status_code == 200 and r.json()["state"] == "running", r.text
        assert r.json()["envd_access_token"] == token
        after = httpx.get(f"{sbx_server.url}/sandboxes/{sid}", headers=h).json()
        assert after["internal_ip"] == ip_before
        assert sb.files.read("/root/file.txt") == "before pause"
        assert sb.commands.run("echo $KEEP").stdout == "me\n"
        n1 = counter(sb)
        time.sleep(0.3)
        n2 = counter(sb)
        # The loop went on from where it was frozen, not from zero.
        assert n0 <= n1 < n2, (n0, n1, n2)
        print(f"pause {pause_s:.3f}s resume {resume_s:.3f}s")
    # A deleted paused sandbox leaves no snapshot behind.
    r = httpx.post(f"{api}/", json=BASE, headers=h, timeout=60)
    sid2 = r.json()["id"]
    httpx.post(f"{api}/{sid2}/pause", headers=h, timeout=60)
    assert (sbx_server.data_dir / "snapshots" / sid2).exists()
    assert httpx.delete(f"{api}/{sid2}", headers=h, timeout=60).json()["state"] == "deleted"
    assert not (sbx_server.data_dir / "snapshots" / sid2).exists()


def test_twenty_cycles_lose_nothing(sbx_server: Server, org_key: str) -> None:
    with Sandbox.create(api_url=sbx_server.url, api_key=org_key, vcpu=1,
                        memory_mib=512) as sb:
        sb.commands.run(COUNTER)
        pid = sb.commands.run("pgrep -f 'while true' | head -1").stdout.strip()
        last = 0
        for i in range(20):
            sb.files.write(f"/root/cycle-{i}.txt", f"cycle {i}")
            sb.pause()
            sb.resume()
            names = sorted(e.name for e in sb.files.list("/root") if e.name.startswith("cycle-"))
            assert len(names) == i + 1, names
            n = counter(sb)
            assert n >= last
            last = n
        for i in range(20):
            assert sb.files.read(f"/root/cycle-{i}.txt") == f"cycle {i}"
        assert sb.commands.run("pgrep -f 'while true' | head -1").stdout.strip() == pid


def test_auto_pause_on_timeout(sbx_server: Server, org_key: str) -> None:
    h = {"X-API-Key": org_key}
    r = httpx.post(f"{sbx_server.url}/sandboxes", headers=h, timeout=60,
                   json={"timeout": 2, "on_timeout": "pause"})
    sid = r.json()["id"]
    url = f"{sbx_server.url}/sandboxes/{sid}"
    assert wait_for(lambda: httpx.get(url, headers=h).json()["state"] == "paused", 15)
    assert sid not in runsc_ids(sbx_server)
    # A paused sandbox has no timeout running: it stays paused.
    time.sleep(3)
    assert httpx.get(url, headers=h).json()["state"] == "paused"
    r = httpx.post(f"{url}/resume", headers=h, json={"timeout": 60}, timeout=60)
    assert r.status_code == 201 and r.json()["state"] == "running"
    httpx.delete(url, headers=h)


@pytest.mark.parametrize("kill_after_s", [0.0, 0.15])
def test_sigkill_while_snapshotting_never_loses_the_sandbox(
    own_server: Server, kill_after_s: float
) -> None:
    key = own_server.api_key
    h = {"X-API-Key": key}
    with Sandbox.create(api_url=own_server.url, api_key=key, vcpu=1, memory_mib=1024) as sb:
        sid = sb.sandbox_id
        sb.files.write("/root/precious.txt", "do not lose me")
        # 200 MiB of touched memory: the checkpoint takes a while.
        sb.commands.run("nohup python3 -c \"b = bytearray(200 << 20); b[::4096] = b'x' * "
                        "len(b[::4096]); import time; time.sleep(10**6)\" >/dev/null 2>&1 &")
        sb.commands.run(COUNTER)
        time.sleep(1.5)

        def pause() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{own_server.url}/v1/sandbox/{sid}/pause", headers=h, timeout=60)

        t = threading.Thread(target=pause)
        t.start()
        assert wait_for(lambda: state_in_db(own_server, sid) == "snapshotting", 10, step=0.01)
        time.sleep(kill_after_s)
        own_server.stop(signal.SIGKILL)
        t.join()
        own_server.start()
        state = state_in_db(own_server, sid)
        assert state in ("paused", "running"), state
        if state == "paused":
            r = httpx.post(f"{own_server.url}/v1/sandbox/{sid}/resume", headers=h, timeout=60)
            assert r.status_code == 200, r.text
        assert sb.files.read("/root/precious.txt") == "do not lose me"
        n1 = counter(sb)
        time.sleep(0.3)
        assert counter(sb) > n1
