"""The node agent: the only privileged component. It turns a sandbox
record into host resources (netns + veth, disk, runsc container) and back,
and reconciles what exists on the host with what the store says, so a crash
never leaks a resource."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbx.config import Settings
from sbx.node import disk, envd_probe
from sbx.node.network import firewall, netns
from sbx.node.network.ipam import Addressing, AddressPool
from sbx.node.runtime.base import Launch, RuntimeState
from sbx.node.runtime.gvisor import GVisorRuntime

log = logging.getLogger(__name__)

ENVD_ARGS = ["/usr/bin/python3", "-I", "/opt/sbx/envd-launch.py"]


@dataclass(frozen=True)
class SandboxPlan:
    """What the node needs to know to run one sandbox."""

    id: str
    rootfs: Path
    slot: int
    vcpu: int
    memory_mib: int
    disk_mib: int
    env: dict[str, str]
    envd_token: str
    # Given to envd's /init once it answers (e.g. {"defaultUser": "user"}).
    init: dict[str, Any] | None = None


class StartFailed(Exception):
    pass


class NodeAgent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        tag = settings.node_tag
        self.tag = tag
        self.netns_prefix = f"sbx{tag}-"
        self.if_prefix = f"s{tag}"
        self.table = f"sbx_{tag}"
        self.pool = AddressPool(settings.subnet)
        self.runtime = GVisorRuntime(
            settings.run_dir / "runsc",
            runsc=settings.runsc,
            platform=settings.platform,
            cgroup_parent=f"sbx-{tag}",
            memory_headroom_mib=settings.memory_headroom_mib,
        )
        self.host_cpus = os.cpu_count() or 1

    # -- naming -----------------------------------------------------------
    def netns_name(self, sandbox_id: str) -> str:
        return self.netns_prefix + sandbox_id.removeprefix("sbx-")

    def host_if(self, sandbox_id: str) -> str:
        return self.if_prefix + sandbox_id.removeprefix("sbx-")

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.settings.sandboxes_dir / sandbox_id

    def addressing(self, slot: int) -> Addressing:
        return self.pool.addressing(slot)

    def cpuset(self, vcpu: int, slot: int) -> str | None:
        """vcpu below the host's CPU count pins the sandbox to that many CPUs
        (so nproc inside shows vcpu), spread over the host by slot; at or
        above it, the CFS quota alone limits it and nproc shows the host's."""
        n = self.host_cpus
        if vcpu >= n:
            return None
        first = (slot * vcpu) % n
        return ",".join(str((first + i) % n) for i in range(vcpu))

    # -- lifecycle ----------------------------------------------------------
    async def setup(self) -> None:
        self.settings.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.runtime.prepare_cgroups)
        await firewall.install(self.table, self.if_prefix, self.settings.subnet)

    async def start(self, plan: SandboxPlan) -> Addressing:
        addr = self.addressing(plan.slot)
        sdir = self.sandbox_dir(plan.id)
        try:
            sdir.mkdir(parents=True, exist_ok=True)
            await asyncio.gather(
                netns.create(self.netns_name(plan.id), self.host_if(plan.id), addr),
                disk.create(sdir / "disk.img", sdir / "upper", plan.disk_mib),
            )
            env = {
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/root",
                "LANG": "C.UTF-8",
                **plan.env,
                "SBX_ENVD_ACCESS_TOKEN": plan.envd_token,
                "SBX_ENVD_MEMORY_MIB": str(plan.memory_mib),
            }
            launch = Launch(
                id=plan.id,
                rootfs=plan.rootfs,
                bundle=sdir / "bundle",
                netns=netns.NETNS_DIR / self.netns_name(plan.id),
                disk_dir=sdir / "upper",
                console_log=sdir / "console.log",
                vcpu=plan.vcpu,
                memory_mib=plan.memory_mib,
                args=ENVD_ARGS,
                env=env,
                cpuset=self.cpuset(plan.vcpu, plan.slot),
            )
            await self.runtime.start(launch)
            async def alive() -> bool:
                return await self.runtime.state(plan.id) == RuntimeState.RUNNING

            await envd_probe.wait_ready(
                addr.sandbox_ip, self.settings.envd_port, self.settings.envd_ready_timeout_s,
                alive,
            )
            if plan.init:
                await envd_probe.post_init(
                    addr.sandbox_ip, self.settings.envd_port, plan.envd_token, plan.init
                )
        except BaseException as exc:
            log.warning("sandbox %s failed to start: %s", plan.id, exc)
            await asyncio.shield(self.stop(plan.id))
            if isinstance(exc, Exception):
                raise StartFailed(str(exc)) from exc
            raise
        return addr

    async def stop(self, sandbox_id: str) -> None:
        """Remove every host resource of the sandbox; safe to repeat."""
        sdir = self.sandbox_dir(sandbox_id)
        await self.runtime.destroy(sandbox_id)
        await netns.destroy(self.netns_name(sandbox_id), self.host_if(sandbox_id))
        await disk.destroy(sdir / "disk.img", sdir / "upper")
        await asyncio.to_thread(shutil.rmtree, sdir, True)

    async def is_alive(self, sandbox_id: str, slot: int) -> bool:
        if await self.runtime.state(sandbox_id) != RuntimeState.RUNNING:
            return False
        addr = self.addressing(slot)
        return await envd_probe.health(addr.sandbox_ip, self.settings.envd_port)

    # -- reconciliation -------------------------------------------------------
    async def host_sandboxes(self) -> set[str]:
        """Sandbox IDs that have any resource on this host."""
        ids: set[str] = set()
        ids.update(await self.runtime.list())
        ids.update("sbx-" + n.removeprefix(self.netns_prefix) for n in
                   netns.list_netns(self.netns_prefix))
        ids.update("sbx-" + n.removeprefix(self.if_prefix) for n in
                   netns.list_links(self.if_prefix))
        if self.settings.sandboxes_dir.exists():
            ids.update(p.name for p in self.settings.sandboxes_dir.iterdir())
        ids.update(self.runtime.leftover_cgroups())
        return ids

    async def reconcile(self, keep: set[str]) -> set[str]:
        """Tear down every sandbox resource not in keep; answer which of keep
        no longer run (the caller marks those)."""
        present = await self.host_sandboxes()
        for sandbox_id in sorted(present - keep):
            log.info("reconcile: removing leftover sandbox %s", sandbox_id)
            await self.stop(sandbox_id)
        running = await self.runtime.list()
        return {s for s in keep if running.get(s) != RuntimeState.RUNNING}

    async def shutdown_all(self) -> None:
        for sandbox_id in sorted(await self.host_sandboxes()):
            await self.stop(sandbox_id)
        await firewall.remove(self.table)
