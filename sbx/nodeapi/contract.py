"""The node interface: everything the control plane asks of a node, and
nothing of how a node does it.

`Node` is implemented in process by `sbx.node.agent.NodeAgent` (the
all-in-one `sbx server`); core, the pool, template builds and the
platform see a node only through it, which is what lets core's rules run
against a fake node in unit tests and a node run on another host.

Who owns what:
- The store owns a sandbox's record (state, tokens, policy, which node,
  which address slot). A node owns what exists on its host.
- A node owns its address slots (one /30 of its subnet per sandbox): a
  create reserves one with `reserve_slot`, the slot is written into the
  record, and `reconcile` tells the node again which slots its live
  sandboxes hold (so a restarted node learns the reservations of paused
  sandboxes, which have nothing on the host but a snapshot).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from sbx.shared.policy import NetworkPolicy, default_policy
from sbx.shared.security import SecurityPolicy


class RuntimeState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    MISSING = "missing"


@dataclass(frozen=True)
class SandboxPlan:
    """What a node needs to know to run one sandbox."""

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
    # Enforced on the host from before the sandbox boots.
    network_policy: NetworkPolicy = field(default_factory=default_policy)
    # The seed-002 security policy (guardrails, audit), if the create had one.
    security: SecurityPolicy | None = None
    # Start from the template's snapshot when one exists (else cold boot).
    from_snapshot: bool = True


@dataclass(frozen=True)
class SpareClaim:
    """A sandbox created ahead on the node for a create of its shape: the
    create's sandbox takes its id and address slot, or gives it back."""

    id: str
    slot: int


@dataclass(frozen=True)
class Paused:
    """A sealed snapshot of a paused sandbox."""

    size: int


class StartFailed(Exception):
    """The node could not bring the sandbox up; nothing of it is left."""


# Told that a sandbox's runtime is up (True: restored from a snapshot).
OnUp = Callable[[bool], Awaitable[None]]


class Node(Protocol):
    # -- address slots -----------------------------------------------------
    async def reserve_slot(self, holder: str) -> int:
        """A free address slot, held for holder until release_slot (or a
        forget of the sandbox holder names)."""
        ...

    async def release_slot(self, holder: str) -> None: ...

    def address(self, slot: int) -> str:
        """The sandbox address of a slot (where its envd and ports answer)."""
        ...

    # -- sandboxes ---------------------------------------------------------
    async def start(self, plan: SandboxPlan, on_up: OnUp | None = None) -> bool:
        """A new sandbox, restored from its template's snapshot when there is
        one (True) or booted cold (False). on_up runs once the runtime is
        up, alongside the wait for envd. Raises StartFailed, leaving nothing."""
        ...

    async def adopt(self, plan: SandboxPlan, pool_token: str) -> None:
        """A warm-pool sandbox becomes plan's (identity and policy)."""
        ...

    async def pause(self, sandbox_id: str, slot: int, envd_token: str) -> Paused:
        """Checkpoint into a sealed snapshot, then free the host resources
        (the address slot stays reserved)."""
        ...

    async def resume(self, plan: SandboxPlan) -> None:
        """Restore a paused sandbox from its snapshot, at plan's slot."""
        ...

    async def discard_spent(self, sandbox_id: str) -> None:
        """The snapshot a now-running sandbox resumed from is of no use."""
        ...

    async def stop(self, sandbox_id: str) -> None:
        """Remove the sandbox's host resources but its snapshot and slot."""
        ...

    async def forget(self, sandbox_id: str) -> None:
        """Remove everything of the sandbox: resources, snapshot, slot."""
        ...

    async def runtime_state(self, sandbox_id: str) -> RuntimeState: ...

    async def is_alive(self, sandbox_id: str, slot: int) -> bool:
        """Running, and its envd answers."""
        ...

    async def unfreeze(self, sandbox_id: str) -> None:
        """A sandbox a checkpoint left frozen runs on."""
        ...

    async def snapshot_sealed(self, sandbox_id: str) -> bool:
        """Whether the sandbox's pause snapshot is complete and verified."""
        ...

    async def drop_snapshot(self, sandbox_id: str) -> None: ...

    async def reconcile(self, keep: Mapping[str, int | None],
                        in_flight: Collection[str] = ()) -> set[str]:
        """keep: the live sandboxes of this node and their slots. Removes
        every host resource of no kept sandbox (those in in_flight are
        starting), re-learns the kept slots, and answers which kept
        sandboxes do not run."""
        ...

    # -- spare runtimes and template snapshots -------------------------------
    async def take_spare(self, rootfs: Path, vcpu: int, memory_mib: int,
                   disk_mib: int) -> SpareClaim | None:
        """A spare runtime of that shape for a create (and a wish for more
        of it); the create calls start() with the claim's id, or put_back()."""
        ...

    async def put_back(self, claim: SpareClaim) -> None: ...

    async def want_spares(self, rootfs: Path, vcpu: int, memory_mib: int, disk_mib: int) -> None:
        """Keep spare runtimes of this shape ready (a server's prewarm)."""
        ...

    async def forget_template(self, path: Path) -> None:
        """A template version under path is going: its spares go first."""
        ...

    async def prepare_template(self, rootfs: Path, vcpu: int, memory_mib: int,
                               ready_s: float = 60.0, strict: bool = False) -> bool:
        """The template snapshot sandboxes of that size restore from."""
        ...

    # -- egress --------------------------------------------------------------
    async def set_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """A running sandbox's network policy changes now."""
        ...

    async def sync_policy(self, sandbox_id: str, slot: int, policy: NetworkPolicy,
                          security: SecurityPolicy | None, envd_token: str,
                          rootfs: Path) -> bool:
        """Make a running sandbox's enforcement match the store's policy
        (after a node restart, or drift); True if anything was re-applied."""
        ...
