"""A real `sbx server` in a subprocess, and the leak check every test of
host resources ends with. Kept out of conftest so that benchmarks reuse it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sbx.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SBX = str(Path(sys.executable).parent / "sbx")
# One template cache for every test server, so `base` is built once per machine.
TEMPLATES = Path(os.environ.get("SBX_TEST_TEMPLATES", "/var/cache/sbx-test/templates"))


_SUBNET_LOCKS = Path("/run/sbx-test-subnets")
_held: list[object] = []


def free_subnet(size: int = 20) -> str:
    """A /size in 10.240.0.0/12 that no route of this host touches, locked
    (flock, for this process's life) against other test runs choosing it too."""
    import fcntl
    import ipaddress

    routes = subprocess.run(["ip", "-4", "-o", "route", "show"], capture_output=True,
                            text=True).stdout.split()
    used = []
    for word in routes:
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(word, strict=False))
    _SUBNET_LOCKS.mkdir(parents=True, exist_ok=True)
    for net in ipaddress.ip_network("10.240.0.0/12").subnets(new_prefix=size):
        if any(net.overlaps(u) for u in used if u.prefixlen > 0):
            continue
        # Locked by its /20, whatever its size: runs that take subnets of
        # other sizes at the same time (a /22 and a /20) never overlap.
        block = net.supernet(new_prefix=20) if net.prefixlen > 20 else net
        f = open(_SUBNET_LOCKS / str(block).replace("/", "_"), "w")  # noqa: SIM115
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _held.append(f)
        return str(net)
    raise RuntimeError("no free test subnet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    data_dir: Path
    subnet: str
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    # None: the data dir's SQLite file.
    database_url: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, subnet=self.subnet,
                        database_url=self.database_url)

    @property
    def node_tag(self) -> str:
        return self.settings.node_tag

    @property
    def api_key(self) -> str:
        return (self.data_dir / "api-key").read_text().strip()

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SBX_SUBNET": self.subnet,
            "SBX_TEMPLATES_PATH": str(TEMPLATES),
            "SBX_TIMEOUT_CHECK_INTERVAL_S": "0.5",
            # No warm pool and no spare runtimes unless a test asks: creates
            # take the paths they test, and the leak checks see only them.
            "SBX_WARM_POOL": "{}",
            "SBX_SPARE_RUNTIMES": "0",
            # The server and `sbx admin` alike.
            **({"SBX_DATABASE_URL": self.database_url} if self.database_url else {}),
            # Built only for the code interpreter's tests (shared template cache).
            "SBX_CODE_INTERPRETER": "0",
            **self.extra_env,
        }

    def start(self, wait_s: float = 900, healthy: bool = True) -> None:
        """Start, and wait until /health says ok (or, without healthy, until
        the API answers at all)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        TEMPLATES.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "server.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [SBX, "server", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True,
        )
        log.close()
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sbx server exited {self.proc.returncode}:\n{self.tail()}")
            try:
                code = httpx.get(self.url + "/health", timeout=2).status_code
                if code == 200 or not healthy:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"sbx server not healthy in {wait_s}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def admin(self, *args: str) -> str:
        res = subprocess.run(
            [SBX, "admin", *args, "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, env=self.env(), timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"sbx admin {args} failed: {res.stderr or res.stdout}")
        return res.stdout

    def new_org(self, name: str) -> str:
        """Create an organisation; answer its API key (last line)."""
        return self.admin("org", "create", name).strip().splitlines()[-1]

    def teardown(self) -> None:
        """Stop the server and remove everything it left on the host."""
        self.stop()
        if self.data_dir.exists():
            self.admin("teardown")
            shutil.rmtree(self.data_dir, ignore_errors=True)


def leaks(node_tag: str) -> dict[str, list[str]]:
    """Host resources of a node that outlive their sandboxes."""
    found: dict[str, list[str]] = {}
    netns = Path("/var/run/netns")
    ns = [n for n in os.listdir(netns) if n.startswith(f"sbx{node_tag}-")] if netns.exists() else []
    if ns:
        found["netns"] = ns
    links = [n for n in os.listdir("/sys/class/net") if n.startswith(f"s{node_tag}")]
    if links:
        found["links"] = links
    runsc_root = Path("/run/sbx") / node_tag / "runsc"
    if runsc_root.exists():
        out = subprocess.run(["runsc", "--root", str(runsc_root), "list", "-quiet"],
                             capture_output=True, text=True).stdout.split()
        if out:
            found["runsc"] = out
    cg = []
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        parent = ctrl / f"sbx-{node_tag}"
        if parent.is_dir():
            cg += [f"{ctrl.name}/{p.name}" for p in parent.iterdir() if p.is_dir()]
    if cg:
        found["cgroups"] = cg
    # Per-sandbox chains of the node's nft table (the table itself belongs
    # to the running server; teardown removes it).
    res = subprocess.run(["nft", "list", "table", "inet", f"sbx_{node_tag}"],
                         capture_output=True, text=True)
    chains = re.findall(r"chain ([gfn]_[a-z0-9]+) \{", res.stdout) if res.returncode == 0 else []
    if chains:
        found["nft"] = chains
    return found


def mounts_of(data_dir: Path) -> list[str]:
    prefix = str(data_dir) + "/"
    with open("/proc/self/mounts") as f:
        return [p for p in (line.split()[1] for line in f) if p.startswith(prefix)]


@contextlib.contextmanager
def own_server(extra_env: dict[str, str] | None = None,
               database_url: str | None = None) -> Iterator[Server]:
    """A server of a test's own (reconciler every second), removed with
    everything it made, checked for leaks; its store is the data dir's
    SQLite file, or the database at database_url."""
    server = Server(Path(f"/var/tmp/sbx-test-{uuid.uuid4().hex[:8]}"), subnet=free_subnet(22),
                    extra_env={"SBX_RECONCILE_INTERVAL_S": "1", **(extra_env or {})},
                    database_url=database_url)
    try:
        server.start()
        yield server
    finally:
        tag, data_dir = server.node_tag, server.data_dir
        server.teardown()
        assert leaks(tag) == {}
        assert mounts_of(data_dir) == []


def how_started(server: Server, sandbox_id: str) -> str:
    """How the sandbox last became running (its event's detail)."""
    with sqlite3.connect(server.data_dir / "sbx.db") as db:
        row = db.execute(
            "SELECT detail FROM sandbox_events WHERE sandbox_id = ? AND to_state = 'running' "
            "ORDER BY id DESC LIMIT 1", (sandbox_id,)).fetchone()
    return str(row[0]) if row else "?"


def seed002_error(r: httpx.Response, status: int) -> str:
    """Seed 002's error shape (`{"code", "message"}`, which /sandboxes,
    /usage and /admin answer in); answers the message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == status, body
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])
