"""Real isolation of real gVisor sandboxes: CPU, memory, disk, env, and
what a sandbox can reach on the network."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from sbx import Sandbox
from tests.integration.netfixtures import host_ipv4, host_listener, internet_peer
from tests.integration.server import Server, leaks

pytestmark = pytest.mark.integration


@pytest.fixture
def make(sbx_server: Server, org_key: str) -> Iterator[object]:
    made: list[Sandbox] = []

    def _make(**kw: object) -> Sandbox:
        kw.setdefault("vcpu", 1)
        kw.setdefault("memory_mib", 512)
        sb = Sandbox.create(api_url=sbx_server.url, api_key=org_key, **kw)  # type: ignore[arg-type]
        made.append(sb)
        return sb

    yield _make
    for sb in made:
        sb.kill()


def sh(sb: Sandbox, cmd: str, timeout: float = 60) -> tuple[int, str, str]:
    r = sb.commands.run(cmd, timeout=timeout)
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.parametrize("vcpu", [1, 2, 8])
def test_vcpu_is_visible_and_enforced(make, vcpu: int) -> None:  # type: ignore[no-untyped-def]
    sb = make(vcpu=vcpu)
    code, out, _ = sh(sb, "nproc")
    assert code == 0
    assert int(out) == min(vcpu, os.cpu_count() or 1)


# Allocates and touches every page of `mib` MiB, then says ok.
TOUCH = "python3 -c \"b = bytearray({mib} << 20); b[::4096] = b'x' * len(b[::4096]); print('ok')\""


def test_memory_limit(make) -> None:  # type: ignore[no-untyped-def]
    sb = make(memory_mib=512)
    # Within the limit: fine.
    code, out, err = sh(sb, TOUCH.format(mib=300))
    assert code == 0 and out.strip() == "ok", err
    # Beyond it: the process fails inside; the sandbox lives on.
    code, out, err = sh(sb, TOUCH.format(mib=900))
    assert code != 0 and "ok" not in out
    code, out, _ = sh(sb, "echo alive")
    assert (code, out.strip()) == (0, "alive")


def test_disk_limit(make, sbx_server: Server) -> None:  # type: ignore[no-untyped-def]
    sb = make()
    disk_mib = sb.get_info().disk_mib
    code, out, err = sh(sb, "dd if=/dev/zero of=/data bs=1M count=64 status=none && echo wrote")
    assert code == 0 and "wrote" in out, err
    code, out, err = sh(sb, f"fallocate -l {disk_mib + 100}M /big")
    assert code != 0 and "No space left" in err
    # Past the cap a plain write fails too, and the host's disk is untouched.
    before = os.statvfs("/").f_bfree
    code, out, err = sh(sb, f"head -c {(disk_mib + 64) << 20} /dev/zero > /fill", timeout=120)
    assert code != 0 and "No space left" in err
    after = os.statvfs("/").f_bfree
    assert (before - after) * os.statvfs("/").f_frsize < (disk_mib + 256) << 20


def test_env_vars_in_every_process(make) -> None:  # type: ignore[no-untyped-def]
    sb = make(env_vars={"GREETING": "hello world", "EMPTY": ""})
    assert sh(sb, "echo \"$GREETING\"")[1].strip() == "hello world"
    assert sh(sb, "bash -lc 'echo $GREETING'")[1].strip() == "hello world"
    assert sh(sb, "python3 -c \"import os; print(os.environ['EMPTY'] == '')\"")[1].strip() == "True"
    # envd's own secrets are not in the environment.
    assert "SBX_ENVD" not in sh(sb, "cat /proc/self/environ | tr '\\0' '\\n'")[1]


def connect(sb: Sandbox, ip: str, port: int) -> tuple[float, str]:
    cmd = (
        "python3 - <<'EOF'\n"
        "import socket, time\n"
        "t = time.time()\n"
        "try:\n"
        f"    s = socket.create_connection(('{ip}', {port}), timeout=5)\n"
        "    print('OPEN', s.recv(100).decode(errors='replace'))\n"
        "except OSError as e:\n"
        "    print('FAIL', type(e).__name__)\n"
        "print(round(time.time() - t, 3))\n"
        "EOF"
    )
    _, out, _ = sh(sb, cmd)
    verdict, elapsed = out.strip().splitlines()
    return float(elapsed), verdict


def test_network_egress_and_host_protection(make, sbx_server: Server) -> None:  # type: ignore[no-untyped-def]
    a = make()
    b = make()
    with internet_peer() as peer, host_listener() as port:
        # Egress through NAT reaches the "internet".
        code, out, _ = sh(a, f"curl -s -m 5 http://{peer.ip}:{peer.port}/")
        assert code == 0 and out.startswith("peer saw "), out
        # The host itself, on every address, fails fast.
        gw = _gateway_of(sbx_server, a.sandbox_id)
        for ip in (gw, host_ipv4()):
            elapsed, verdict = connect(a, ip, port)
            assert verdict.startswith("FAIL") and elapsed < 2, (ip, verdict, elapsed)
            elapsed, verdict = connect(a, ip, sbx_server.port)
            assert verdict.startswith("FAIL") and elapsed < 2
        # The link-local/metadata range.
        elapsed, verdict = connect(a, "169.254.169.254", 80)
        assert verdict.startswith("FAIL") and elapsed < 2
        # A neighbour sandbox.
        b_ip = _sandbox_ip_of(sbx_server, b.sandbox_id)
        elapsed, verdict = connect(a, b_ip, 49983)
        assert verdict.startswith("FAIL") and elapsed < 2
        # ...while the host reaches the neighbour's envd (the gateway path).
        assert httpx.get(f"http://{b_ip}:49983/health", timeout=5).status_code in (200, 204)
        # No IPv6 beyond the sandbox's own loopback: no link-local path to the host.
        code, out, _ = sh(a, "ip -6 -o addr show")
        assert code == 0 and "::1" in out
        assert [line for line in out.splitlines() if " lo " not in line] == [], out


def _gateway_of(server: Server, sandbox_id: str) -> str:
    link = f"s{server.node_tag}{sandbox_id[4:]}"
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", link],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[3].split("/")[0]


def _sandbox_ip_of(server: Server, sandbox_id: str) -> str:
    gw = _gateway_of(server, sandbox_id).split(".")
    gw[-1] = str(int(gw[-1]) + 1)
    return ".".join(gw)


def test_kill_frees_every_resource(make, sbx_server: Server) -> None:  # type: ignore[no-untyped-def]
    sb = make()
    sid = sb.sandbox_id
    tag = sbx_server.node_tag

    def mine() -> dict[str, list[str]]:
        return {k: [v for v in vs if sid[4:] in v] for k, vs in leaks(tag).items()
                if any(sid[4:] in v for v in vs)}

    assert set(mine()) >= {"netns", "links", "runsc", "cgroups"}
    assert (sbx_server.data_dir / "sandboxes" / sid / "upper").is_mount()
    sb.kill()
    deadline = time.monotonic() + 5
    while mine() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mine() == {}
    assert not (sbx_server.data_dir / "sandboxes" / sid).exists()
