"""GVisorRuntime: sandboxes as gVisor `runsc` containers with their own
netstack (--network=sandbox) in a network namespace prepared by the node.

Workarounds from docs/runtime-notes (measured on these hosts):
- runsc refuses to start networking when it believes it is in the root
  netns, because /proc/sys/net/core/rmem_default now exists in every
  netns. It runs in a private mount namespace with a tmpfs over
  /proc/sys/net.
- --net-disconnect-ok on every command so checkpoints reset open TCP
  connections instead of failing.
- the init process (envd) gets a log file as stdio, which a restore can
  supply again; user processes come from envd, never `runsc exec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sbx.node.orphans import OrphanReaper
from sbx.node.proc import CommandError, run, stream
from sbx.node.runtime.base import Launch, RuntimeState

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CFS_PERIOD = 100_000
_DELETE_ATTEMPTS = 5


class GVisorRuntime:
    def __init__(
        self,
        root_dir: Path,
        *,
        runsc: str = "runsc",
        platform: str = "systrap",
        cgroup_parent: str = "sbx",
        memory_headroom_mib: int = 256,
        reaper: OrphanReaper | None = None,
    ) -> None:
        self.reaper = reaper
        self.root_dir = root_dir
        self.runsc = runsc
        self.platform = platform
        self.cgroup_parent = cgroup_parent
        self.memory_headroom_mib = memory_headroom_mib

    def _flags(self) -> list[str]:
        return [
            self.runsc,
            "--root", str(self.root_dir),
            "--platform", self.platform,
            "--network", "sandbox",
            "--net-disconnect-ok",
        ]

    def spec(self, launch: Launch) -> dict[str, Any]:
        memory = (launch.memory_mib + self.memory_headroom_mib) * 1024 * 1024
        cpu: dict[str, Any] = {"quota": launch.vcpu * _CFS_PERIOD, "period": _CFS_PERIOD}
        if launch.cpuset is not None:
            cpu["cpus"] = launch.cpuset
        caps = [
            "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
            "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
            "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE", "CAP_SETFCAP",
            "CAP_SYS_PTRACE",
        ]
        return {
            "ociVersion": "1.0.0",
            "process": {
                "terminal": False,
                "user": {"uid": launch.uid, "gid": launch.gid},
                "args": launch.args,
                "env": [f"{k}={v}" for k, v in launch.env.items()],
                "cwd": launch.cwd,
                "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
            },
            "root": {"path": str(launch.rootfs), "readonly": False},
            "hostname": launch.hostname,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
            ],
            "linux": {
                "cgroupsPath": f"/{self.cgroup_parent}/{launch.id}",
                "resources": {"memory": {"limit": memory}, "cpu": cpu},
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc"},
                    {"type": "uts"},
                    {"type": "mount"},
                    {"type": "network", "path": str(launch.netns)},
                ],
            },
        }

    def _launch_argv(self, launch: Launch, *command: str, overlay: bool = True,
                     detach: bool = True) -> list[str]:
        launch.bundle.mkdir(parents=True, exist_ok=True)
        (launch.bundle / "config.json").write_text(json.dumps(self.spec(launch)))
        return [
            "unshare", "-m", "--propagation", "private",
            "sh", "-c", 'mount -t tmpfs none /proc/sys/net && exec "$@"', "sh",
            *self._flags(),
            "--overlay2", f"root:dir={launch.disk_dir}" if overlay else "none",
            *command, *(["--detach"] if detach else []), "--bundle", str(launch.bundle),
            launch.id,
        ]

    async def run_attached(self, launch: Launch, on_output: Callable[[bytes], None],
                           timeout: float) -> int:
        """Run launch's command to its end with no overlay: its writes go to
        launch.rootfs itself (a template build's overlay mount). Output is
        streamed; answers the exit code (-9 when killed)."""
        argv = self._launch_argv(launch, "run", overlay=False, detach=False)
        return await stream(*argv, on_output=on_output, timeout=timeout)

    async def start(self, launch: Launch) -> None:
        argv = self._launch_argv(launch, "run")
        await run(*argv, stdout_path=str(launch.console_log), timeout=60)

    async def create(self, launch: Launch) -> None:
        """The sandbox made and left waiting, nothing run in it yet (see
        spare_runtimes): processes, cgroups, seccomp, the root mount."""
        argv = self._launch_argv(launch, "create", detach=False)
        await run(*argv, stdout_path=str(launch.console_log), timeout=60)

    async def checkpoint(self, sandbox_id: str, image_dir: Path, compress: bool) -> None:
        # Frozen first, and left frozen: nothing the sandbox does after the
        # image is taken can be lost, and if sbx dies before the image is
        # stored, `runsc resume` gives the sandbox back untouched.
        await run(*self._flags(), "pause", sandbox_id)
        try:
            await run(
                *self._flags(), "checkpoint", "--leave-running",
                "--compression", "flate-best-speed" if compress else "none",
                "--image-path", str(image_dir), sandbox_id, timeout=600,
            )
        except BaseException:
            await self.resume(sandbox_id)
            raise

    async def kill(self, sandbox_id: str) -> None:
        """SIGKILL the sandbox's init: the container ends (no error if it
        already has)."""
        await run(*self._flags(), "kill", sandbox_id, "KILL", check=False)

    async def resume(self, sandbox_id: str) -> None:
        """Unfreeze a sandbox that checkpoint left frozen."""
        await run(*self._flags(), "resume", sandbox_id, check=False)

    async def restore(self, launch: Launch, image_dir: Path) -> None:
        # runsc restores into the container create() made under launch.id
        # when there is one, else makes it first.
        argv = self._launch_argv(launch, "restore", "--image-path", str(image_dir))
        await run(*argv, stdout_path=str(launch.console_log), timeout=120)

    async def state(self, sandbox_id: str) -> RuntimeState:
        res = await run(*self._flags(), "state", sandbox_id, check=False)
        if res.code != 0:
            return RuntimeState.MISSING
        return _state(json.loads(res.stdout).get("status", ""))

    async def list(self) -> dict[str, RuntimeState]:
        if not self.root_dir.exists():
            return {}
        res = await run(*self._flags(), "list", "--format", "json")
        items = json.loads(res.stdout or "null") or []
        return {c["id"]: _state(c.get("status", "")) for c in items}

    async def destroy(self, sandbox_id: str, bundle: Path | None = None) -> None:
        # Killed and reaped here first (when this server adopted them), the
        # sandbox and gofer are gone before `runsc delete` looks: it then
        # skips its 100 ms polls for them to exit.
        if bundle is not None and self.reaper is not None:
            await self.reaper.kill(bundle)
        for attempt in range(_DELETE_ATTEMPTS):
            try:
                await run(*self._flags(), "delete", "--force", sandbox_id)
                break
            except CommandError as exc:
                if "does not exist" in exc.stderr or "not found" in exc.stderr:
                    break
                # Processes of a sandbox this server did not adopt (a build
                # step's, after a crash) are PID 1's to reap, late on these
                # hosts: runsc gives up waiting for them; ask again.
                if "deadline exceeded" not in exc.stderr or attempt == _DELETE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(1.0)
        self.remove_cgroups(sandbox_id)

    def prepare_cgroups(self) -> None:
        """Create the parent cgroups. In cgroup v1 a new cpuset cgroup starts
        with no CPUs and no memory nodes, and then refuses children with any:
        the parent copies them from the root first."""
        for controller in _cgroup_controllers():
            parent = _CGROUP_ROOT / controller / self.cgroup_parent
            parent.mkdir(exist_ok=True)
            if controller == "cpuset":
                for name in ("cpuset.cpus", "cpuset.mems"):
                    value = (_CGROUP_ROOT / controller / name).read_text().strip()
                    if (parent / name).read_text().strip() != value:
                        (parent / name).write_text(value)

    def remove_cgroup_parents(self) -> None:
        """The node's parent cgroups (once no sandbox is left in them)."""
        for controller in _cgroup_controllers():
            parent = _CGROUP_ROOT / controller / self.cgroup_parent
            if parent.is_dir():
                with contextlib.suppress(OSError):
                    os.rmdir(parent)

    def remove_cgroups(self, sandbox_id: str) -> None:
        for controller in _cgroup_controllers():
            path = _CGROUP_ROOT / controller / self.cgroup_parent / sandbox_id
            if path.is_dir():
                with contextlib.suppress(OSError):
                    os.rmdir(path)

    def leftover_cgroups(self) -> set[str]:
        found: set[str] = set()
        for controller in _cgroup_controllers():
            parent = _CGROUP_ROOT / controller / self.cgroup_parent
            if parent.is_dir():
                found.update(p.name for p in parent.iterdir() if p.is_dir())
        return found


def _cgroup_controllers() -> list[str]:
    # cgroup v1 only (what these hosts run); "unified" is the v2 mount beside it.
    try:
        return [
            p.name for p in _CGROUP_ROOT.iterdir()
            if p.is_dir() and not p.is_symlink() and p.name != "unified"
        ]
    except OSError:
        return []


def _state(status: str) -> RuntimeState:
    return {
        "running": RuntimeState.RUNNING,
        "created": RuntimeState.STOPPED,
        "stopped": RuntimeState.STOPPED,
        "paused": RuntimeState.PAUSED,
    }.get(status, RuntimeState.STOPPED)
