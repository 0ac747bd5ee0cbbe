"""A sbx cluster on one machine, for tests and benchmarks: `sbx api`
replicas on one database and `sbx node` agents, each with its own data
dir, subnet and listen port, and one shared snapshot dir; everything it
made is removed at the end and checked for leaks."""

from __future__ import annotations

import contextlib
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

from sbx.config import Settings
from tests.integration.server import SBX, TEMPLATES, free_port, free_subnet, leaks, mounts_of
from tests.postgres import Postgres


def wait_for(what: str, ok: object, timeout: float, step: float = 0.2) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if callable(ok) and ok():
            return
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


def healthy(url: str) -> bool:
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


def cluster_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "SBX_TEMPLATES_PATH": str(TEMPLATES), "SBX_WARM_POOL": "{}",
            "SBX_SPARE_RUNTIMES": "0", "SBX_PREWARM_SNAPSHOTS": '["1x512"]',
            "SBX_RECONCILE_INTERVAL_S": "1", "SBX_TIMEOUT_CHECK_INTERVAL_S": "0.5",
            "SBX_METER_INTERVAL_S": "2", **extra}


def _node(c: Cluster, name: str, token: str, snapshots: Path,
          env: dict[str, str] | None) -> Proc:
    data = c.root / name
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    subnet = free_subnet(22)
    # Each node on a loopback address of its own, standing in for a host.
    address = f"127.0.0.{10 + len(c.nodes)}"
    proc = Proc([SBX, "node", "--control-plane", c.url, "--join-token", token,
                 "--data-dir", str(data), "--subnet", subnet, "--listen", f"{address}:{port}",
                 "--node-id", name, "--snapshot-dir", str(snapshots), "--vcpu", "8",
                 "--memory-mib", "4096", "--disk-mib", "20000"],
                data / "node.log", cluster_env(**(env or {})))
    c.nodes[name] = (proc, data, subnet)
    return proc


@contextlib.contextmanager
def running_cluster(pg: Postgres, database_url: str, nodes: tuple[str, ...] = ("na", "nb", "nc"),
                    replicas: int = 2, env: dict[str, str] | None = None
                    ) -> Iterator[Cluster]:
    """replicas `sbx api` on database_url, then the nodes joined with a token."""
    c = Cluster(Path(f"/var/tmp/sbx-cluster-{uuid.uuid4().hex[:8]}"), pg, database_url)
    c.root.mkdir(parents=True)
    snapshots = c.root / "snapshots"
    snapshots.mkdir()
    try:
        for i in range(replicas):
            port = free_port()
            data = c.root / "api"
            data.mkdir(exist_ok=True)
            proc = Proc([SBX, "api", "--port", str(port), "--data-dir", str(data)],
                        c.root / f"api{i}.log",
                        cluster_env(SBX_DATABASE_URL=database_url, **(env or {})))
            proc.start()
            url = f"http://127.0.0.1:{port}"
            c.apis.append((url, proc))
            wait_for(f"api {i} healthy\n{proc.tail()}", lambda u=url: healthy(u), 120)
        c.key = (c.root / "api" / "api-key").read_text().strip()
        token = subprocess.run([SBX, "admin", "node", "token", "--database-url", database_url],
                               capture_output=True, text=True, check=True,
                               env=cluster_env()).stdout.strip()
        for name in nodes:
            _node(c, name, token, snapshots, env).start()
        wait_for("every node ready", lambda: {
            n: v["state"] for n, v in c.admin_nodes().items()} == dict.fromkeys(nodes, "ready"),
            180)
        # Every replica reads the nodes every second: all of them place on
        # the last one to join from then on.
        time.sleep(1.5)
        yield c
    finally:
        for _, proc in c.apis:
            proc.kill()
        for proc, data, subnet in c.nodes.values():
            proc.kill()
            subprocess.run([SBX, "admin", "teardown", "--data-dir", str(data)],
                           capture_output=True, env=cluster_env(SBX_SUBNET=subnet), timeout=300)
        # What the processes said (pytest shows it when a test failed).
        for name, proc in [*((f"api{i}", p) for i, (_, p) in enumerate(c.apis)),
                           *((n, p) for n, (p, _, _) in c.nodes.items())]:
            print(f"== {name}\n{proc.tail()}")
        tags = [Settings(data_dir=data).node_tag for _, data, _ in c.nodes.values()]
        shutil.rmtree(c.root, ignore_errors=True)
        for tag in tags:
            assert leaks(tag) == {}
        assert mounts_of(c.root) == []
