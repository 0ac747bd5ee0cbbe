"""A sandbox's writable disk: a sparse ext4 image of disk_mib, loop-mounted
on the host. runsc keeps the sandbox's root overlay (its filestore) in it,
so writing past disk_mib fails with ENOSPC inside the sandbox while the
host's own filesystem is untouched."""

from __future__ import annotations

import os
from pathlib import Path

from sbx.node.proc import CommandError, run


async def create(image: Path, mountpoint: Path, size_mib: int) -> None:
    # Slack for ext4's own metadata, so the sandbox gets about disk_mib.
    slack = max(16, size_mib // 32)
    # 0600: the image holds the sandbox's files.
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, (size_mib + slack) * 1024 * 1024)
    finally:
        os.close(fd)
    # No journal (scratch space; the snapshot is what must be durable),
    # no reserved blocks (all of it is the sandbox's).
    await run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image))
    mountpoint.mkdir(parents=True, exist_ok=True)
    await run("mount", "-o", "loop,noatime", str(image), str(mountpoint))


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


async def destroy(image: Path, mountpoint: Path) -> None:
    if is_mounted(mountpoint):
        try:
            await run("umount", str(mountpoint))
        except CommandError:
            # Something still holds it (a runsc gofer being torn down):
            # detach lazily so the loop device goes when it is released.
            await run("umount", "-l", str(mountpoint), check=False)
    if mountpoint.exists():
        os.rmdir(mountpoint)
    image.unlink(missing_ok=True)


def mounts_under(root: Path) -> list[Path]:
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mounts") as f:
        return [Path(p) for p in (line.split()[1] for line in f) if p.startswith(prefix)]
