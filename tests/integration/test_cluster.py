"""A cluster on one machine: two `sbx api` replicas on one PostgreSQL
database and three `sbx node` agents, each with its own data dir, subnet
and listen port, and one shared snapshot dir. Real runsc, nftables and processes, SIGKILLs
included; everything is removed at the end and checked for leaks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sbx import Sandbox
from sbx.config import Settings
from tests.integration.server import SBX, TEMPLATES, free_port, free_subnet, leaks, mounts_of
from tests.postgres import Postgres

pytestmark = pytest.mark.integration

NODES = ("na", "nb", "nc")


def _wait(what: str, ok: object, timeout: float, step: float = 0.2) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if callable(ok) and ok():
            return
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Proc:
    args: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-20000:] if self.log.exists() else ""


@dataclass
class Cluster:
    root: Path
    pg: Postgres
    database_url: str
    apis: list[tuple[str, Proc]] = field(default_factory=list)
    nodes: dict[str, tuple[Proc, Path, str]] = field(default_factory=dict)
    key: str = ""

    @property
    def url(self) -> str:
        return self.apis[0][0]

    def sql(self, statement: str) -> list[list[str]]:
        out = self.pg.sql(statement, self.database_url.rsplit("/", 1)[1])
        return [line.split("|") for line in out.splitlines() if line]

    def admin_nodes(self, url: str | None = None) -> dict[str, dict[str, object]]:
        resp = httpx.get((url or self.url) + "/admin/nodes",
                         headers={"X-API-Key": self.key}, timeout=10)
        resp.raise_for_status()
        return {n["id"]: n for n in resp.json()}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "SBX_TEMPLATES_PATH": str(TEMPLATES), "SBX_WARM_POOL": "{}",
            "SBX_SPARE_RUNTIMES": "0", "SBX_PREWARM_SNAPSHOTS": '["1x512"]',
            "SBX_RECONCILE_INTERVAL_S": "1", "SBX_TIMEOUT_CHECK_INTERVAL_S": "0.5",
            "SBX_METER_INTERVAL_S": "2", **extra}


def _node(c: Cluster, name: str, token: str, snapshots: Path) -> Proc:
    data = c.root / name
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    subnet = free_subnet(22)
    proc = Proc([SBX, "node", "--control-plane", c.url, "--join-token", token,
                 "--data-dir", str(data), "--subnet", subnet, "--listen", f"127.0.0.1:{port}",
                 "--node-id", name, "--snapshot-dir", str(snapshots), "--vcpu", "2",
                 "--memory-mib", "4096", "--disk-mib", "20000"],
                data / "node.log", _env())
    c.nodes[name] = (proc, data, subnet)
    return proc


@pytest.fixture(scope="module")
def cluster(sbx_server: object, postgres: Postgres) -> Iterator[Cluster]:
    # sbx_server: the session's server has built the base template into the
    # shared cache, so the nodes do not each build it.
    with postgres.database() as url:
        yield from _cluster(postgres, url)


def _cluster(pg: Postgres, database_url: str) -> Iterator[Cluster]:
    c = Cluster(Path(f"/var/tmp/sbx-cluster-{uuid.uuid4().hex[:8]}"), pg, database_url)
    c.root.mkdir(parents=True)
    snapshots = c.root / "snapshots"
    snapshots.mkdir()
    try:
        for i in range(2):
            port = free_port()
            data = c.root / "api"
            data.mkdir(exist_ok=True)
            proc = Proc([SBX, "api", "--port", str(port), "--data-dir", str(data)],
                        c.root / f"api{i}.log", _env(SBX_DATABASE_URL=database_url))
            proc.start()
            url = f"http://127.0.0.1:{port}"
            c.apis.append((url, proc))

            _wait(f"api {i} healthy\n{proc.tail()}", lambda u=url: _healthy(u), 120)
        c.key = (c.root / "api" / "api-key").read_text().strip()
        token = subprocess.run([SBX, "admin", "node", "token", "--database-url", database_url],
                               capture_output=True, text=True, check=True,
                               env=_env()).stdout.strip()
        for name in NODES:
            _node(c, name, token, snapshots).start()
        _wait("every node ready", lambda: {
            n: v["state"] for n, v in c.admin_nodes().items()} == dict.fromkeys(NODES, "ready"),
            180)
        yield c
    finally:
        for _, proc in c.apis:
            proc.kill()
        for proc, data, subnet in c.nodes.values():
            proc.kill()
            subprocess.run([SBX, "admin", "teardown", "--data-dir", str(data)],
                           capture_output=True, env=_env(SBX_SUBNET=subnet), timeout=300)
        # What the processes said (pytest shows it when a test failed).
        for name, proc in [*((f"api{i}", p) for i, (_, p) in enumerate(c.apis)),
                           *((n, p) for n, (p, _, _) in c.nodes.items())]:
            print(f"== {name}\n{proc.tail()}")
        tags = [Settings(data_dir=data).node_tag for _, data, _ in c.nodes.values()]
        shutil.rmtree(c.root, ignore_errors=True)
        for tag in tags:
            assert leaks(tag) == {}
        assert mounts_of(c.root) == []


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
        _wait("node lost", lambda: cluster.admin_nodes()[home]["state"] == "lost", 25)
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
        _wait("node back", lambda: cluster.admin_nodes()[home]["state"] == "ready", 120)
        assert sb.commands.run("echo back").stdout.strip() == "back"
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
            _wait("api 0 back", lambda: _healthy(cluster.url), 120)


def test_each_duty_runs_on_one_replica_and_a_timeout_fires_once(cluster: Cluster) -> None:
    duties = {"timeouts", "reconcile", "metering", "egress-resync"}
    # (Each is taken at its duty's first round.)
    _wait("every duty leased", lambda: duties <= {
        name for name, _ in cluster.sql("SELECT name, holder FROM leases")}, 30)
    created = httpx.post(f"{cluster.url}/sandboxes", json={"template": "base", "timeout": 3},
                         headers={"X-API-Key": cluster.key}, timeout=60)
    assert created.status_code == 201, created.text
    sid = created.json()["sandboxID"]

    def killed() -> bool:
        got = httpx.get(f"{cluster.url}/sandboxes/{sid}", headers={"X-API-Key": cluster.key},
                        timeout=10)
        return got.json().get("state") == "killed"
    _wait("timeout fired", killed, 30)
    events = cluster.sql("SELECT from_state, to_state FROM sandbox_events WHERE sandbox_id = "
                         f"'{sid}' AND detail = 'timeout' ORDER BY id")
    assert events == [["running", "deleting"], ["deleting", "killed"]]
