"""Spare runtimes on real gVisor: sandboxes created ahead (`runsc create`)
that a create or a resume restores its image into. A create takes a spare's
id and address; a resume keeps its own id and address and runs under the
spare's runtime id, which a restarted server finds again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sbx import Sandbox
from tests.integration.checks import COUNTER, counter, host_traces, state_in_db, wait_for
from tests.integration.server import Server, how_started, own_server

pytestmark = pytest.mark.integration
BASE = {"template_name": "base", "vcpu": 1, "memory_mib": 512}
SPARES = {"SBX_SPARE_RUNTIMES": "2"}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with own_server(SPARES) as s:
        yield s


def runtimes(server: Server) -> dict[str, str]:
    """runsc containers of the node: id -> status."""
    root = Path("/run/sbx") / server.node_tag / "runsc"
    out = subprocess.run(["runsc", "--root", str(root), "list", "--format", "json"],
                         capture_output=True, text=True).stdout
    return {c["id"]: c["status"] for c in json.loads(out or "null") or []}


def spares(server: Server) -> set[str]:
    return {cid for cid, status in runtimes(server).items() if status == "created"}


def bound_runtime(server: Server, sandbox_id: str) -> str | None:
    """The runtime id a resumed sandbox runs under (None: its own)."""
    for path in (server.data_dir / "sandboxes").glob("*/sandbox-id"):
        if path.read_text().strip() == sandbox_id:
            return path.parent.name
    return None


def test_create_takes_a_spare_and_another_is_made(server: Server) -> None:
    key = server.new_org("spare-create")
    h = {"X-API-Key": key}
    assert wait_for(lambda: len(spares(server)) >= 1, 60), server.tail()
    before = spares(server)
    r = httpx.post(f"{server.url}/v1/sandbox/", json={**BASE, "env_vars": {"MINE": "a"}},
                   headers=h, timeout=60)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    # The sandbox is a spare of before, now restored and running.
    assert sid in before
    assert runtimes(server)[sid] == "running"
    assert how_started(server, sid) == "from template snapshot"
    with Sandbox.connect(sid, api_url=server.url, api_key=key) as sb:
        assert sb.commands.run("echo $MINE").stdout == "a\n"
        sb.files.write("/root/mine.txt", "first")
    # Another one is made behind it; two creates in a row keep two.
    assert wait_for(lambda: len(spares(server) - before) >= 1, 30), server.tail()
    r2 = httpx.post(f"{server.url}/v1/sandbox/", json={**BASE, "env_vars": {"MINE": "b"}},
                    headers=h, timeout=60)
    assert r2.status_code == 201, r2.text
    sid2 = r2.json()["id"]
    assert sid2 != sid
    assert r2.json()["envd_access_token"] != r.json()["envd_access_token"]
    with Sandbox.connect(sid2, api_url=server.url, api_key=key) as sb2:
        # Nothing of the other sandbox (a spare has run nothing of anyone).
        assert sb2.commands.run("echo $MINE").stdout == "b\n"
        assert not sb2.files.exists("/root/mine.txt")
    assert wait_for(lambda: len(spares(server)) == 2, 30), spares(server)
    # The operator sees them and what they hold.
    report = server.admin("pool")
    assert "spare runtimes: 2 (SBX_SPARE_RUNTIMES=2)" in report, report
    for spare in spares(server):
        used = float(report.split(f"{spare} host_memory_mib=")[1].split()[0])
        assert 1 < used < 200, report
    for s in (sid, sid2):
        assert httpx.delete(f"{server.url}/v1/sandbox/{s}", headers=h,
                            timeout=60).status_code == 200
        assert wait_for(lambda s=s: host_traces(server, s) == {}, 10), host_traces(server, s)


def test_refused_create_leaves_the_spares_untouched(server: Server) -> None:
    name = "spare-refused"
    key = server.new_org(name)
    server.admin("tier", "set", name, "--max-sandboxes", "0")
    server.admin("org", "set", name, "--tier", name)
    assert wait_for(lambda: len(spares(server)) >= 1, 60)
    before = spares(server)
    r = httpx.post(f"{server.url}/v1/sandbox/", json=BASE, headers={"X-API-Key": key},
                   timeout=60)
    # (Seed 000's answer to the concurrency limit.)
    assert r.status_code == 409 and "limit reached" in r.text, r.text
    # The spare the create took went back unused, and still serves.
    assert spares(server) == before
    server.admin("tier", "set", name, "--max-sandboxes", "5")
    r = httpx.post(f"{server.url}/v1/sandbox/", json=BASE, headers={"X-API-Key": key},
                   timeout=60)
    assert r.status_code == 201, r.text
    assert r.json()["id"] in before
    httpx.delete(f"{server.url}/v1/sandbox/{r.json()['id']}", headers={"X-API-Key": key},
                 timeout=60)


def test_resume_into_spares_keeps_everything(server: Server) -> None:
    key = server.new_org("spare-resume")
    h = {"X-API-Key": key}
    with Sandbox.create(api_url=server.url, api_key=key, vcpu=1, memory_mib=512,
                        env_vars={"KEEP": "me"}) as sb:
        sid = sb.sandbox_id
        ip = httpx.get(f"{server.url}/sandboxes/{sid}", headers=h).json()["internal_ip"]
        sb.commands.run(COUNTER)
        pid = sb.commands.run("pgrep -f 'while true' | head -1").stdout.strip()
        last, used = 0, set()
        for i in range(6):
            sb.files.write(f"/root/cycle-{i}.txt", f"cycle {i}")
            previous = bound_runtime(server, sid) or sid
            assert wait_for(lambda: len(spares(server)) >= 1, 30), server.tail()
            offered = spares(server)
            sb.pause()
            # Nothing of it is left on the host, under either name.
            assert host_traces(server, sid) == {} and host_traces(server, previous) == {}
            sb.resume()
            rid = bound_runtime(server, sid)
            assert rid is not None and rid in offered, (rid, offered)
            assert runtimes(server)[rid] == "running"
            used.add(rid)
            # Its own address, not the spare's.
            got = httpx.get(f"{server.url}/sandboxes/{sid}", headers=h).json()
            assert got["internal_ip"] == ip and got["state"] == "running"
            n = counter(sb)
            assert n >= last
            last = n
        assert len(used) == 6
        for i in range(6):
            assert sb.files.read(f"/root/cycle-{i}.txt") == f"cycle {i}"
        assert sb.commands.run("echo $KEEP").stdout == "me\n"
        assert sb.commands.run("pgrep -f 'while true' | head -1").stdout.strip() == pid
        time.sleep(0.3)
        assert counter(sb) > last
        rid = bound_runtime(server, sid)
        assert rid is not None
    # Deleted: nothing under its runtime id either.
    assert wait_for(lambda: host_traces(server, rid) == {} and host_traces(server, sid) == {}, 10)
    assert bound_runtime(server, sid) is None


def test_a_broken_spare_costs_a_restore_not_the_create(server: Server) -> None:
    # Last of the tests on this module's server: it leaves a broken spare.
    key = server.new_org("spare-broken")
    h = {"X-API-Key": key}
    assert wait_for(lambda: len(spares(server)) == 2, 60), spares(server)
    broken = spares(server)
    # The spares' sandbox processes die (the host's OOM killer, an admin):
    # the agent does not know.
    root = Path("/run/sbx") / server.node_tag / "runsc"
    for spare in broken:
        state = subprocess.run(["runsc", "--root", str(root), "state", spare],
                               capture_output=True, text=True, check=True).stdout
        os.kill(json.loads(state)["pid"], signal.SIGKILL)
    r = httpx.post(f"{server.url}/v1/sandbox/", json={**BASE, "env_vars": {"MINE": "c"}},
                   headers=h, timeout=60)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    # It kept the spare's id, and restored into a new sandbox, not cold.
    assert sid in broken
    assert how_started(server, sid) == "from template snapshot"
    assert "restore into its spare runtime failed" in server.tail(20000)
    with Sandbox.connect(sid, api_url=server.url, api_key=key) as sb:
        assert sb.commands.run("echo $MINE").stdout == "c\n"
    assert httpx.delete(f"{server.url}/v1/sandbox/{sid}", headers=h,
                        timeout=60).status_code == 200
    assert wait_for(lambda: host_traces(server, sid) == {}, 10), host_traces(server, sid)


def test_server_killed_after_a_resume_into_a_spare_finds_it_again() -> None:
    with own_server(SPARES) as server:
        key = server.api_key
        h = {"X-API-Key": key}
        with Sandbox.create(api_url=server.url, api_key=key, vcpu=1, memory_mib=512) as sb:
            sid = sb.sandbox_id
            sb.files.write("/root/precious.txt", "keep")
            sb.commands.run(COUNTER)
            assert wait_for(lambda: len(spares(server)) >= 1, 60), server.tail()
            sb.pause()
            sb.resume()
            rid = bound_runtime(server, sid)
            assert rid is not None and rid != sid
            server.stop(signal.SIGKILL)
            server.start()
            # Running on, under the same runtime: the reconciler kept it.
            assert state_in_db(server, sid) == "running"
            time.sleep(2.5)  # two reconciler passes (every second here)
            assert state_in_db(server, sid) == "running"
            assert runtimes(server).get(rid) == "running"
            assert sb.files.read("/root/precious.txt") == "keep"
            n = counter(sb)
            time.sleep(0.3)
            assert counter(sb) > n
            # And it pauses and resumes as any other.
            r = httpx.post(f"{server.url}/v1/sandbox/{sid}/pause", headers=h, timeout=60)
            assert r.status_code == 200, r.text
            assert host_traces(server, rid) == {}
            r = httpx.post(f"{server.url}/v1/sandbox/{sid}/resume", headers=h, timeout=60)
            assert r.status_code == 200, r.text
            assert sb.files.read("/root/precious.txt") == "keep"
