"""The data dir (issue 15): one server per data dir, and nothing secret in
it readable by another local user."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from sbx import Sandbox
from sbx.config import Settings
from tests.integration.egress import inet as n
from tests.integration.server import (
    SBX,
    Server,
    free_port,
    free_subnet,
    leaks,
    mounts_of,
    own_server,
)

pytestmark = pytest.mark.integration

SECRET = "Bearer sk-live-" + uuid.uuid4().hex
ONE_SIZE = {"SBX_PREWARM_SNAPSHOTS": '["1x512"]'}


def _spares(server: Server) -> list[str]:
    root = server.settings.run_dir / "runsc"
    out = subprocess.run(["runsc", "--root", str(root), "list", "--format", "json"],
                         capture_output=True, text=True).stdout
    return sorted(c["id"] for c in json.loads(out or "null") or [] if c["status"] == "created")


def _table(tag: str) -> str:
    res = subprocess.run(["nft", "list", "table", "inet", f"sbx_{tag}"],
                         capture_output=True, text=True)
    # Counters move with traffic; everything else must stay as it was.
    return re.sub(r"counter packets \d+ bytes \d+", "counter", res.stdout)


def _reaches(sb: Sandbox) -> None:
    """DNS through the node's resolver, ports 80 and 443 through its proxy."""
    r = sb.commands.run("getent hosts allowed.test && curl -sS -m 5 http://allowed.test/a "
                        "&& curl -sS -m 5 -k https://allowed.test/b", timeout=60)
    assert r.exit_code == 0, (r.stdout, r.stderr)


def _start(data_dir: Path, port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SBX, "server", "--data-dir", str(data_dir), "--port", str(port)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_second_server_leaves_the_live_one_alone() -> None:
    work = Path(tempfile.mkdtemp(prefix="sbx-lock-", dir="/var/tmp"))
    other = Path(f"/var/tmp/sbx-test-{uuid.uuid4().hex[:8]}")
    try:
        with n.fake_internet(work) as net:
            live = Server(work / "data", subnet=free_subnet(22), extra_env={
                **ONE_SIZE, "SBX_SPARE_RUNTIMES": "1", "SBX_EGRESS_UPSTREAM_DNS": net.dns,
                "SBX_EGRESS_UPSTREAM_CA": str(net.ca_path)})
            try:
                live.start()
                assert live.proc is not None
                sb = Sandbox.create(api_url=live.url, api_key=live.api_key, network_policy={
                    "mode": "custom", "allow_domains": ["allowed.test"]})
                _reaches(sb)
                end = time.monotonic() + 120
                while not _spares(live) and time.monotonic() < end:
                    time.sleep(0.5)
                spares, table = _spares(live), _table(live.node_tag)
                assert spares and "sbx" in table

                # The same data dir on a free port: refused before it does anything.
                t0 = time.monotonic()
                res = _start(live.data_dir, free_port(), live.env())
                assert res.returncode == 1, res.stderr
                assert f"in use by another sbx server (PID {live.proc.pid})" in res.stderr
                assert time.monotonic() - t0 < 15
                # Another data dir on the live server's port: refused before
                # it makes its nft table or anything else on the host.
                env = {**live.env(), "SBX_SUBNET": free_subnet(22)}
                res = _start(other, live.port, env)
                assert res.returncode == 1 and "cannot listen on" in res.stderr, res.stderr
                other_tag = Settings(data_dir=other).node_tag
                assert _table(other_tag) == ""
                assert not (Path("/run/sbx") / other_tag).exists()

                # Teardown takes the same lock: it cannot pull the live
                # server's sandboxes from under it.
                res = subprocess.run([SBX, "admin", "teardown", "--data-dir", str(live.data_dir)],
                                     capture_output=True, text=True, env=live.env(), timeout=60)
                assert res.returncode == 1 and f"(PID {live.proc.pid})" in res.stderr, res.stderr

                assert _spares(live) == spares
                assert _table(live.node_tag) == table
                _reaches(sb)
                assert httpx.get(live.url + "/health", timeout=5).status_code == 200
                sb.kill()
            finally:
                tag = live.node_tag
                live.teardown()
                assert leaks(tag) == {}
                assert mounts_of(live.data_dir) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)


def _as_nobody_readable(paths: list[Path]) -> list[str]:
    """Which of paths the user nobody can read."""
    script = 'for f in "$@"; do cat -- "$f" >/dev/null 2>&1 && echo "$f"; done; true'
    res = subprocess.run(["runuser", "-u", "nobody", "--", "sh", "-c", script, "sh",
                          *map(str, paths)], capture_output=True, text=True, check=True)
    return res.stdout.split()


def _files(root: Path) -> list[Path]:
    """Every file under root, not inside a mounted sandbox disk."""
    found = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(parent, d))]
        found += [Path(parent, f) for f in files]
    return found


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_nothing_secret_in_the_data_dir_is_readable_by_other_users() -> None:
    with own_server(ONE_SIZE) as server:
        data = server.data_dir
        api = httpx.Client(base_url=server.url, headers={"X-API-Key": server.api_key},
                           timeout=120)
        policy = {"mode": "custom", "allow_domains": ["echo.test"],
                  "transforms": [{"domain": "echo.test",
                                  "inject_headers": {"Authorization": SECRET}}]}
        body = {"template_name": "base", "vcpu": 1, "memory_mib": 512, "network_policy": policy}
        running = api.post("/v1/sandbox/", json=body).json()
        paused = api.post("/v1/sandbox/", json=body).json()
        assert api.post(f"/v1/sandbox/{paused['id']}/pause").status_code == 200
        token = running["envd_access_token"]
        # The secrets are on disk in plain text, for root: what is checked
        # below is that nobody else gets at them.
        store = b"".join(p.read_bytes() for p in data.glob("sbx.db*"))
        assert SECRET.encode() in store and token.encode() in store
        snapshot = data / "snapshots" / paused["id"]
        disk = data / "sandboxes" / running["id"] / "disk.img"
        assert any(snapshot.glob("*.img")) and disk.exists()

        # As an older sbx left them: everything readable by everyone
        # (but template layers, whose modes are those of their files).
        server.stop()
        mine = [p for p in _files(data) if p.relative_to(data).parts[0] != "layers"]
        for path in [data, *(p.parent for p in mine)]:
            path.chmod(0o755)
        for path in mine:
            path.chmod(0o644)
        server.start()

        assert _mode(data) == 0o700
        for name in ("sbx.db", "sbx.db-wal", "sbx.db-shm", "api-key", "lock"):
            assert _mode(data / name) == 0o600, name
        for path in [*snapshot.glob("*.img"), disk]:
            assert _mode(path) == 0o600, path
        files = _files(data)
        assert len(files) > 10
        assert _as_nobody_readable(files) == []
        # Not even by name: the data dir cannot be listed or entered.
        res = subprocess.run(["runuser", "-u", "nobody", "--", "ls", str(data / "snapshots")],
                             capture_output=True, text=True)
        assert res.returncode != 0
        # A sandbox paused and resumed under the new modes still works.
        assert api.post(f"/v1/sandbox/{paused['id']}/resume").status_code == 200
        new_snapshot = api.post(f"/v1/sandbox/{running['id']}/pause")
        assert new_snapshot.status_code == 200
        for path in (data / "snapshots" / running["id"]).glob("*.img"):
            assert _mode(path) == 0o600, path
        for sid in (running["id"], paused["id"]):
            api.delete(f"/v1/sandbox/{sid}")
        api.close()
