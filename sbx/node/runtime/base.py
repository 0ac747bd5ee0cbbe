"""The runtime driver interface. Nothing here assumes gVisor, so a microVM
driver can take its place on hosts with usable KVM."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sbx.nodeapi.contract import RuntimeState

__all__ = ["Launch", "Runtime", "RuntimeState"]


@dataclass(frozen=True)
class Launch:
    """Everything a driver needs to boot one sandbox."""

    id: str
    rootfs: Path
    bundle: Path
    netns: Path
    disk_dir: Path
    console_log: Path
    vcpu: int
    memory_mib: int
    args: list[str]
    env: dict[str, str]
    hostname: str = "sandbox"
    cwd: str = "/"
    # CPUs the sandbox may run on ("0", "0-1"); None: all of them.
    cpuset: str | None = None
    uid: int = 0
    gid: int = 0
    extra: dict[str, str] = field(default_factory=dict)


class Runtime(Protocol):
    async def start(self, launch: Launch) -> None: ...

    async def state(self, sandbox_id: str) -> RuntimeState: ...

    async def list(self) -> dict[str, RuntimeState]: ...

    async def checkpoint(self, sandbox_id: str, image_dir: Path, compress: bool) -> None:
        """Save the running sandbox (memory, processes, writable disk) into
        image_dir, leaving it running but frozen: the caller stops it once
        the image is safely stored, so a crash never loses both."""
        ...

    async def restore(self, launch: Launch, image_dir: Path) -> None:
        """Start a sandbox from an image made by checkpoint, in launch's
        network namespace, disk and cgroup limits; into the sandbox create()
        made for launch.id when there is one (only the image is left to load)."""
        ...

    async def create(self, launch: Launch) -> None:
        """Make the sandbox (processes, limits, root filesystem) without
        running anything in it, for a later restore() to fill."""
        ...

    async def destroy(self, sandbox_id: str, bundle: Path | None = None) -> None:
        """Stop the sandbox and remove every trace of it the driver made;
        no error if it is already gone."""
        ...
