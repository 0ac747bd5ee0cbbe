"""Root filesystems of templates: the Debian 12 `base` built once with
mmdebstrap, and envd installed into every one."""

from __future__ import annotations

import asyncio
import compileall
import fcntl
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sbx.node.network.firewall import DNS_VIP
from sbx.node.proc import CommandError

log = logging.getLogger(__name__)

BASE_PACKAGES = [
    "bash", "coreutils", "python3", "python3-pip", "python3-venv", "curl", "git",
    "ca-certificates", "procps", "less", "iproute2", "sudo",
]
ENVD_SRC = Path(__file__).resolve().parent.parent / "envd"
LAUNCHER = """\
import runpy
import sys

sys.path.insert(0, "/opt/sbx")
sys.argv = ["envd", "--port", "49983"]
runpy.run_module("envd", run_name="__main__", alter_sys=True)
"""

Progress = Callable[[str], None]


async def build_base(dest: Path, progress: Progress) -> None:
    """Build the base rootfs into dest (atomically: a crash leaves no half
    tree at dest)."""
    progress("building the base template (Debian 12) with mmdebstrap")
    await build_debian(dest, BASE_PACKAGES, [], progress)
    progress("base template ready")


async def build_debian(dest: Path, packages: list[str], hooks: list[str],
                       progress: Progress) -> None:
    """A Debian 12 rootfs of packages with the user `user`, then hooks (shell,
    "$1" the tree), configured for sbx, into dest (atomically)."""
    tmp = dest.with_name(dest.name + ".building")
    if tmp.exists():
        await asyncio.to_thread(shutil.rmtree, tmp)
    hooks = [
        'chroot "$1" useradd -m -s /bin/bash -u 1000 user',
        'echo "user ALL=(ALL:ALL) NOPASSWD: ALL" > "$1/etc/sudoers.d/user"',
        *hooks,
        'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*',
    ]
    argv = [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
        "--include=" + ",".join(packages),
        *[f"--customize-hook={h}" for h in hooks],
        "bookworm", str(tmp),
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    tail: list[str] = []
    try:
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail = [*tail[-20:], line]
                progress(line)
        code = await proc.wait()
    except BaseException:
        # The server is stopping: the build must not run on without it
        # (mmdebstrap cleans up its own children on SIGTERM).
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        raise
    if code != 0:
        raise CommandError(tuple(argv), code, "\n".join(tail))
    await asyncio.to_thread(configure, tmp)
    if dest.exists():
        await asyncio.to_thread(shutil.rmtree, dest)
    tmp.rename(dest)


async def ensure_base(path: Path, progress: Progress) -> None:
    """The base rootfs at path: built on the first start, brought up to date
    after (an upgraded sbx brings a new envd and tuning into it). Several
    processes may share path (a cluster's nodes on one templates dir): one
    at a time, under a lock file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = await asyncio.to_thread(locked, path.parent / ".base.lock")
    try:
        if not (path / "usr/bin/python3").exists():
            await build_base(path, progress)
        else:
            await asyncio.to_thread(tune_profile, path)
            await asyncio.to_thread(install_envd, path)
    finally:
        lock.close()


def locked(path: Path) -> IO[bytes]:
    """path opened and exclusively locked (blocking: call it in a thread);
    closing it lets go."""
    f = open(path, "ab")  # noqa: SIM115 - the caller closes it
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def configure(rootfs: Path) -> None:
    """Files every sandbox needs to find itself and its resolver without
    stalling (a lookup of its own name must not wait for a timeout)."""
    (rootfs / "etc/hostname").write_text("sandbox\n")
    (rootfs / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    resolv = rootfs / "etc/resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    resolv.write_text(f"nameserver {DNS_VIP}\noptions timeout:2 attempts:2\n")
    tune_profile(rootfs)
    install_envd(rootfs)


# Login shells fork for nothing in Debian's defaults, each fork and exec
# ~40 ms under gVisor: /etc/profile asks `id -u` (bash knows its EUID) and
# root's ~/.profile runs `mesg n`, which only means something on a terminal.
PROFILE_EDITS = {
    "etc/profile": ('"$(id -u)"', '"${EUID:-$(id -u)}"'),
    "root/.profile": ("mesg n 2> /dev/null || true",
                      "{ [ -t 0 ] && mesg n; } 2> /dev/null || true"),
}


def tune_profile(rootfs: Path) -> None:
    """Same results, fewer processes per login shell (sh, which has no EUID,
    still asks `id`). Idempotent; files are replaced by rename."""
    for rel, (slow, fast) in PROFILE_EDITS.items():
        path = rootfs / rel
        try:
            text = path.read_text()
        except OSError:
            continue
        if slow not in text:
            continue
        tmp = path.with_name(path.name + ".sbx-new")
        tmp.write_text(text.replace(slow, fast))
        shutil.copymode(path, tmp)
        tmp.rename(path)


def install_tree(src: Path, live: Path) -> None:
    """The Python package at src as live (a directory of the rootfs's
    /opt/sbx), compiled and swapped in by rename: an existing tree is
    replaced whole, never left half copied."""
    live.parent.mkdir(parents=True, exist_ok=True)
    staging = live.with_name(live.name + ".new")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(src, staging, ignore=shutil.ignore_patterns("__pycache__"))
    # Bytecode made once here: otherwise every sandbox compiles it at boot
    # (slow under gVisor) into its own writable layer.
    compileall.compile_dir(str(staging), quiet=1, workers=1)
    old = live.with_name(live.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if live.exists():
        live.rename(old)
    staging.rename(live)
    if old.exists():
        shutil.rmtree(old)


def install_envd(rootfs: Path) -> None:
    """Copy envd into the rootfs (each server start, so an upgrade of sbx
    upgrades envd); new files are swapped in by rename."""
    target = rootfs / "opt/sbx"
    install_tree(ENVD_SRC, target / "envd")
    launcher = target / "envd-launch.py"
    tmp = target / "envd-launch.py.new"
    tmp.write_text(LAUNCHER)
    tmp.rename(launcher)
