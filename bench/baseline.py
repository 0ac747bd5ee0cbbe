"""Bare gVisor baselines, measured in the same run as sbx: `runsc run` of
the same root filesystem in a fresh netns + veth, until a server inside
answers HTTP; and `runsc exec /bin/true`. No sbx code is involved."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

SERVER = (
    "import os, socket\n"
    "ballast = bytearray(int(os.environ.get('BALLAST_MIB', '0')) << 20)\n"
    "ballast[::4096] = b'x' * len(ballast[::4096])\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 49983)); s.listen(64)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.recv(4096)\n"
    "    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n')\n"
    "    c.close()\n"
)


def _sh(*argv: str, input: str | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, input=input)


def _http_ok(ip: str, port: int = 49983) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class BareRunsc:
    def __init__(self, rootfs: Path, work: Path, index: int = 0, ballast_mib: int = 0) -> None:
        self.ballast_mib = ballast_mib
        self.rootfs = rootfs
        self.work = work
        self.root = work / "runsc-root"
        self.ns = f"sbxbench{index}"
        self.hif = f"sbxbh{index}"
        self.host_ip = f"198.19.{index}.1"
        self.ip = f"198.19.{index}.2"
        self.cid = f"bench-{index:04d}"

    def _net(self) -> None:
        _sh("ip", "netns", "add", self.ns)
        _sh("ip", "link", "add", self.hif, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        _sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.hif)
        _sh("ip", "link", "set", self.hif, "up")
        _sh("ip", "-n", self.ns, "addr", "add", f"{self.ip}/30", "dev", "eth0")
        _sh("ip", "-n", self.ns, "link", "set", "eth0", "up")
        _sh("ip", "-n", self.ns, "link", "set", "lo", "up")

    def _spec(self, bundle: Path) -> None:
        bundle.mkdir(parents=True, exist_ok=True)
        subprocess.run(["runsc", "spec", "--", "/usr/bin/python3", "-c", SERVER], cwd=bundle,
                       check=True, capture_output=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["root"] = {"path": str(self.rootfs), "readonly": False}
        spec["process"]["terminal"] = False
        spec["process"]["env"].append(f"BALLAST_MIB={self.ballast_mib}")
        spec["linux"]["namespaces"] = [
            n for n in spec["linux"]["namespaces"] if n["type"] != "network"
        ] + [{"type": "network", "path": f"/var/run/netns/{self.ns}"}]
        (bundle / "config.json").write_text(json.dumps(spec))

    def boot(self, platform: str = "systrap") -> float:
        """Seconds from `runsc run` until HTTP 200 from inside."""
        self._net()
        bundle = self.work / self.cid
        self._spec(bundle)
        t0 = time.perf_counter()
        subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs none /proc/sys/net && exec "$@"', "sh",
             *self._runsc(platform), "run", "--detach", "--bundle", str(bundle), self.cid],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not _http_ok(self.ip):
            time.sleep(0.002)
        return time.perf_counter() - t0

    def _runsc(self, platform: str = "systrap") -> list[str]:
        return ["runsc", "--root", str(self.root), "--platform", platform, "--network", "sandbox",
                "--net-disconnect-ok"]

    def checkpoint(self, image: Path, compression: str = "none") -> float:
        """Seconds for `runsc checkpoint`; the container is gone after it."""
        image.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        subprocess.run([*self._runsc(), "checkpoint", "--compression", compression,
                        "--image-path", str(image), self.cid], check=True, capture_output=True)
        took = time.perf_counter() - t0
        subprocess.run([*self._runsc(), "delete", "--force", self.cid], capture_output=True)
        return took

    def restore(self, image: Path) -> float:
        """Seconds from `runsc restore` until HTTP 200 from inside, in this
        netns (its address put back first, as runsc took it)."""
        _sh("ip", "-n", self.ns, "addr", "replace", f"{self.ip}/30", "dev", "eth0")
        bundle = self.work / self.cid
        t0 = time.perf_counter()
        subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs none /proc/sys/net && exec "$@"', "sh",
             *self._runsc(), "restore", "--detach", "--image-path", str(image),
             "--bundle", str(bundle), self.cid],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not _http_ok(self.ip):
            time.sleep(0.002)
        return time.perf_counter() - t0

    def exec_true(self) -> float:
        t0 = time.perf_counter()
        subprocess.run(["runsc", "--root", str(self.root), "exec", self.cid, "/bin/true"],
                       check=True, capture_output=True)
        return time.perf_counter() - t0

    def destroy(self) -> None:
        subprocess.run(["runsc", "--root", str(self.root), "kill", self.cid, "KILL"],
                       capture_output=True)
        subprocess.run(["runsc", "--root", str(self.root), "delete", "--force", self.cid],
                       capture_output=True)
        subprocess.run(["ip", "link", "del", self.hif], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        shutil.rmtree(self.work / self.cid, ignore_errors=True)
        for ctrl in Path("/sys/fs/cgroup").iterdir():
            p = ctrl / self.cid
            if p.is_dir():
                with contextlib.suppress(OSError):
                    p.rmdir()


def _envd_ok(ip: str, port: int = 49983) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(64).startswith((b"HTTP/1.1 200", b"HTTP/1.1 204"))
    except OSError:
        return False


def restore_template_image(image: Path, rootfs: Path, work: Path, index: int,
                           created: bool = False) -> float:
    """The same sandbox sbx restores for a create: a bare `runsc restore` of
    sbx's own template snapshot (envd inside) into a fresh netns, until
    envd answers. No sbx process, disk image, policy or identity: runsc and
    iproute2 only. Seconds. created: the container is `runsc create`d
    first, untimed, as sbx's spare runtimes are (only the restore is timed)."""
    from sbx.node.agent import ENVD_ARGS
    from sbx.node.runtime.base import Launch
    from sbx.node.runtime.gvisor import GVisorRuntime

    b = BareRunsc(rootfs, work, index)
    bundle = work / b.cid
    upper = work / f"{b.cid}-upper"
    upper.mkdir(parents=True, exist_ok=True)
    launch = Launch(id=b.cid, rootfs=rootfs, bundle=bundle,
                    netns=Path(f"/var/run/netns/{b.ns}"), disk_dir=upper,
                    console_log=work / f"{b.cid}.log", vcpu=1, memory_mib=512,
                    args=ENVD_ARGS, env={"PATH": "/usr/bin:/bin"})
    spec = GVisorRuntime(b.root).spec(launch)
    spec["linux"].pop("cgroupsPath")
    spec["linux"].pop("resources")
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(spec))
    try:
        b._net()
        wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs none /proc/sys/net && exec "$@"', "sh",
                *b._runsc(), "--overlay2", f"root:dir={upper}"]
        quiet: dict[str, Any] = {"check": True, "stdin": subprocess.DEVNULL,
                                 "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if created:
            subprocess.run([*wrap, "create", "--bundle", str(bundle), b.cid], **quiet)
        t0 = time.perf_counter()
        subprocess.run([*wrap, "restore", "--detach", "--image-path", str(image),
                        "--bundle", str(bundle), b.cid], **quiet)
        while not _envd_ok(b.ip):
            time.sleep(0.002)
        return time.perf_counter() - t0
    finally:
        b.destroy()
        shutil.rmtree(upper, ignore_errors=True)
