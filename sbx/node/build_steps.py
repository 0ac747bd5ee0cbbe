"""One RUN of a template build: a gVisor sandbox of the node's own whose
root is the build's overlay mount (its writes land in the step's layer),
with its own netns and the build's egress policy, run to its end with its
output streamed. Nothing of it outlives the step: the sandbox, its netns,
firewall entries and files go whether it succeeds, fails, runs out of
time or disk, or the build is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sbx.node.agent import NodeAgent
from sbx.node.network import netns
from sbx.node.runtime.base import Launch
from sbx.shared.policy import NetworkPolicy

log = logging.getLogger(__name__)

# How often the step's layer is measured against the disk budget.
DISK_POLL_S = 0.5
# How long a killed step's runsc may take to return.
KILL_GRACE_S = 30.0


@dataclass(frozen=True)
class BuildStep:
    root: Path  # the merged overlay: the step's root filesystem
    upper: Path  # the step's layer, measured against max_layer_bytes
    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    vcpu: int
    memory_mib: int
    network_policy: NetworkPolicy
    timeout_s: float
    max_layer_bytes: int


class StepKilled(Exception):
    """The step ran out of time or of disk."""


async def run_step(agent: NodeAgent, step: BuildStep, on_output: Callable[[bytes], None]
                   ) -> int:
    """Run step; answers its exit code. StepKilled when it ran past its
    time or its layer grew past its budget."""
    sandbox_id = agent.hold()
    slot: int | None = None
    sdir = agent.sandbox_dir(sandbox_id)
    over: list[str] = []
    try:
        slot = agent.take_own_slot(sandbox_id)
        sdir.mkdir(parents=True)
        await netns.create(agent.netns_name(sandbox_id), agent.host_if(sandbox_id),
                           agent.addressing(slot))
        await agent.egress.attach(agent.egress_net(sandbox_id, slot), step.network_policy, None)
        launch = Launch(
            id=sandbox_id, rootfs=step.root, bundle=sdir / "bundle",
            netns=netns.NETNS_DIR / agent.netns_name(sandbox_id), disk_dir=sdir,
            console_log=sdir / "console.log", vcpu=step.vcpu, memory_mib=step.memory_mib,
            args=step.argv, env=step.env, cwd=step.cwd, uid=step.uid, gid=step.gid,
            hostname="build",
        )

        async def watch_disk() -> None:
            while True:
                await asyncio.sleep(DISK_POLL_S)
                used = await asyncio.to_thread(disk_usage, step.upper)
                if used > step.max_layer_bytes:
                    over.append(f"the step wrote {used >> 20} MiB, more than the build's "
                                f"disk budget of {step.max_layer_bytes >> 20} MiB")
                    await agent.runtime.kill(sandbox_id)
                    return

        # Stopped by killing the sandbox's init: the attached runsc then
        # returns and reaps its sandbox and gofer itself (killing runsc
        # instead would leave them to this server, unwatched). Its own
        # deadline, later, is only the last resort.
        run = asyncio.ensure_future(agent.runtime.run_attached(
            launch, on_output, step.timeout_s + KILL_GRACE_S))

        async def end_run() -> int:
            await agent.runtime.kill(sandbox_id)
            return await asyncio.wait_for(asyncio.shield(run), KILL_GRACE_S)

        watcher = asyncio.create_task(watch_disk())
        try:
            code = await asyncio.wait_for(asyncio.shield(run), step.timeout_s)
        except TimeoutError:
            await end_run()
            raise StepKilled(f"the step ran past the build's time budget "
                             f"({step.timeout_s:.0f} s left when it started)") from None
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(end_run())
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if over:
            raise StepKilled(over[0])
        return code
    finally:
        await asyncio.shield(agent.stop(sandbox_id))
        agent.release(sandbox_id)


def disk_usage(path: Path) -> int:
    """Bytes allocated under path (hard links counted once), not following
    links; what is removed while it is walked is skipped."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(top, name))
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total
