"""A cluster on one machine (tests/integration/cluster.py): two `sbx api`
replicas on one PostgreSQL database and three `sbx node` agents. Real
runsc, nftables and processes, SIGKILLs included; everything is removed at
the end and checked for leaks."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from sbx import Sandbox
from tests.integration.cluster import (
    Cluster,
    cluster_env,
    healthy,
    running_cluster,
    wait_for,
)
from tests.integration.server import SBX
from tests.postgres import Postgres

pytestmark = pytest.mark.integration

NODES = ("na", "nb", "nc")


@pytest.fixture(scope="module")
def cluster(sbx_server: object, postgres: Postgres) -> Iterator[Cluster]:
    # sbx_server: the session's server has built the base template into the
    # shared cache, so the nodes do not each build it.
    with postgres.database() as url, running_cluster(postgres, url, NODES) as c:
        yield c


def test_creates_spread_and_either_replica_reaches_every_sandbox(cluster: Cluster) -> None:
    made: list[Sandbox] = []
    try:
        for _ in range(3):  # the default tier allows 3
            made.append(Sandbox.create(api_url=cluster.url, api_key=cluster.key, vcpu=1,
                                       memory_mib=512, timeout=300))
        nodes = cluster.admin_nodes()
        placed = {sid: n for n, v in nodes.items() for sid in v["sandboxes"]}  # type: ignore[attr-defined]
        # Most free memory first: one on each node.
        assert {placed[sb.sandbox_id] for sb in made} == set(NODES)
        for url, _ in cluster.apis:
            for sb in made:
                # (Not `with`: leaving the block would kill the sandbox.)
                again = Sandbox.connect(sb.sandbox_id, api_url=url, api_key=cluster.key)
                try:
                    r = again.commands.run("echo hi from $(hostname)")
                    assert r.exit_code == 0 and r.stdout.startswith("hi from")
                finally:
                    again.close()
        assert nodes["na"]["memory_mib_reserved"] > 0  # type: ignore[operator]
    finally:
        for sb in made:
            sb.kill()


def test_a_paused_sandbox_resumes_on_another_node_once_its_node_drains(
        cluster: Cluster) -> None:
    sb = Sandbox.create(api_url=cluster.url, api_key=cluster.key, vcpu=1, memory_mib=512,
                        timeout=300)
    home = None
    try:
        sb.files.write("/root/kept.txt", "across nodes")
        sb.commands.run("echo 41 > /tmp/counter")
        home = next(n for n, v in cluster.admin_nodes().items()
                    if sb.sandbox_id in v["sandboxes"])  # type: ignore[operator]
        sb.pause()
        drained = httpx.post(f"{cluster.url}/admin/nodes/{home}/drain",
                             headers={"X-API-Key": cluster.key}, timeout=10)
        assert drained.status_code == 200 and drained.json()["state"] == "draining"
        sb.resume()
        other = next(n for n, v in cluster.admin_nodes().items()
                     if sb.sandbox_id in v["sandboxes"])  # type: ignore[operator]
        assert other != home
        assert sb.files.read("/root/kept.txt") == "across nodes"
        assert sb.commands.run("cat /tmp/counter").stdout.strip() == "41"
    finally:
        if home is not None:
            httpx.post(f"{cluster.url}/admin/nodes/{home}/undrain",
                       headers={"X-API-Key": cluster.key}, timeout=10)
        sb.kill()


def test_a_killed_node_is_lost_then_back_and_a_killed_replica_changes_nothing(
        cluster: Cluster) -> None:
    sb = Sandbox.create(api_url=cluster.url, api_key=cluster.key, vcpu=1, memory_mib=512,
                        timeout=300)
    try:
        home = next(n for n, v in cluster.admin_nodes().items()
                    if sb.sandbox_id in v["sandboxes"])  # type: ignore[operator]
        others = [n for n in NODES if n != home]
        proc = cluster.nodes[home][0]
        t0 = time.monotonic()
        proc.kill(signal.SIGKILL)
        wait_for("node lost", lambda: cluster.admin_nodes()[home]["state"] == "lost", 25)
        assert time.monotonic() - t0 < 20
        # Its sandbox is not deleted, and its calls say why they fail.
        info = httpx.get(f"{cluster.url}/sandboxes/{sb.sandbox_id}",
                         headers={"X-API-Key": cluster.key}, timeout=10)
        assert info.status_code == 200 and info.json()["state"] == "running"
        paused = httpx.post(f"{cluster.url}/sandboxes/{sb.sandbox_id}/pause",
                            headers={"X-API-Key": cluster.key}, timeout=10)
        assert paused.status_code == 503 and "lost" in paused.json()["message"]
        assert all(cluster.admin_nodes()[n]["state"] == "ready" for n in others)
        # Back: it adopts the sandbox it still runs.
        proc.start()
        wait_for("node back", lambda: cluster.admin_nodes()[home]["state"] == "ready", 120)
        # Its firewall was rebuilt at start: the sandbox answers once the
        # control plane's resync (every second here) gave its policy back.
        def answers() -> bool:
            try:
                return sb.commands.run("echo back").stdout.strip() == "back"
            except Exception:
                return False
        wait_for("its sandbox answers again", answers, 20, step=0.5)
        # One replica SIGKILLed: the other serves everything.
        api = cluster.apis[0][1]
        api.kill(signal.SIGKILL)
        again = Sandbox.connect(sb.sandbox_id, api_url=cluster.apis[1][0], api_key=cluster.key)
        try:
            assert again.commands.run("echo still").stdout.strip() == "still"
        finally:
            again.close()
    finally:
        httpx.delete(f"{cluster.apis[1][0]}/sandboxes/{sb.sandbox_id}",
                     headers={"X-API-Key": cluster.key}, timeout=30)
        sb.close()
        api = cluster.apis[0][1]
        if api.proc is not None and api.proc.poll() is not None:
            api.start()
            wait_for("api 0 back", lambda: healthy(cluster.url), 120)


def test_each_duty_runs_on_one_replica_and_a_timeout_fires_once(cluster: Cluster) -> None:
    duties = {"timeouts", "reconcile", "metering", "egress-resync"}
    # (Each is taken at its duty's first round.)
    wait_for("every duty leased", lambda: duties <= {
        name for name, _ in cluster.sql("SELECT name, holder FROM leases")}, 30)
    created = httpx.post(f"{cluster.url}/sandboxes", json={"template": "base", "timeout": 3},
                         headers={"X-API-Key": cluster.key}, timeout=60)
    assert created.status_code == 201, created.text
    sid = created.json()["sandboxID"]

    def killed() -> bool:
        got = httpx.get(f"{cluster.url}/sandboxes/{sid}", headers={"X-API-Key": cluster.key},
                        timeout=10)
        return got.json().get("state") == "killed"
    wait_for("timeout fired", killed, 30)
    events = cluster.sql("SELECT from_state, to_state FROM sandbox_events WHERE sandbox_id = "
                         f"'{sid}' AND detail = 'timeout' ORDER BY id")
    assert events == [["running", "deleting"], ["deleting", "killed"]]


def test_a_wrong_or_revoked_join_token_is_refused(cluster: Cluster) -> None:
    body = {"node_id": "intruder", "url": "http://127.0.0.99:1", "subnet": "10.250.0.0/24",
            "vcpu_total": 1, "memory_mib_total": 1024, "disk_mib_total": 1024}
    wrong = httpx.post(f"{cluster.url}/internal/nodes/register", json=body, timeout=10,
                       headers={"Authorization": "Bearer sbxjoin_nope.nothing"})
    assert wrong.status_code == 401
    token = subprocess.run([SBX, "admin", "node", "token", "--database-url",
                            cluster.database_url], capture_output=True, text=True,
                           check=True, env=cluster_env()).stdout.strip()
    joined = httpx.post(f"{cluster.url}/internal/nodes/register", json=body, timeout=10,
                        headers={"Authorization": f"Bearer {token}"})
    assert joined.status_code == 200, joined.text
    node_key = joined.json()["node_key"]
    beat = httpx.post(f"{cluster.url}/internal/nodes/intruder/heartbeat", json={"info": {}},
                      headers={"Authorization": f"Bearer {node_key}"}, timeout=10)
    assert beat.status_code == 200
    token_id = token.removeprefix("sbxjoin_").split(".")[0]
    subprocess.run([SBX, "admin", "node", "revoke", token_id, "--database-url",
                    cluster.database_url], check=True, capture_output=True, env=cluster_env())
    refused = httpx.post(f"{cluster.url}/internal/nodes/intruder/heartbeat",
                         json={"info": {}}, headers={"Authorization": f"Bearer {node_key}"},
                         timeout=10)
    assert refused.status_code == 403
    again = httpx.post(f"{cluster.url}/internal/nodes/register", json=body, timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 401
    # Not a client of the control plane's: its calls to a node are refused.
    some_node = cluster.admin_nodes()["na"]
    forged = httpx.post(f"{some_node['address']}/node/v1/runtime_state",
                        json={"sandbox_id": "sbx-x"}, headers={"Authorization": "Bearer " +
                                                                node_key}, timeout=10)
    assert forged.status_code == 401
    cluster.sql("DELETE FROM nodes WHERE id = 'intruder'")


def test_a_nodes_egress_audit_reaches_the_control_plane(cluster: Cluster) -> None:
    created = httpx.post(f"{cluster.url}/sandboxes", timeout=60, headers={
        "X-API-Key": cluster.key}, json={"template": "base", "network": {"mode": "deny-all"}})
    assert created.status_code == 201, created.text
    sid = created.json()["sandboxID"]
    sb = Sandbox.connect(sid, api_url=cluster.url, api_key=cluster.key)
    try:
        sb.commands.run("getent hosts example.com || true")

        def audited() -> bool:
            got = httpx.get(f"{cluster.apis[1][0]}/sandboxes/{sid}/audit",
                            headers={"X-API-Key": cluster.key}, timeout=10)
            return any(e["decision"] == "deny" for e in got.json()["entries"])
        wait_for("the node's audit event in the store", audited, 20, step=0.5)
    finally:
        sb.kill()
