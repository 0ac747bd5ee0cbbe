"""A node in memory, behind the same interface as the real one
(sbx/nodeapi/contract.py): core's rules run against it without root, runsc
or nftables. It keeps what a node would have on its host (sandboxes and
their states, snapshots, slots, spares) and can be told to fail."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sbx.nodeapi.contract import (
    OnUp,
    Paused,
    RuntimeState,
    SandboxPlan,
    SpareClaim,
    StartFailed,
)
from sbx.shared.policy import NetworkPolicy
from sbx.shared.security import SecurityPolicy


@dataclass
class FakeNode:
    slots_total: int = 16
    # sandbox id -> runtime state of what "runs" on the host.
    runtimes: dict[str, RuntimeState] = field(default_factory=dict)
    snapshots: set[str] = field(default_factory=set)
    slots: dict[str, int] = field(default_factory=dict)
    spares: list[SpareClaim] = field(default_factory=list)
    policies: dict[str, NetworkPolicy] = field(default_factory=dict)
    plans: dict[str, SandboxPlan] = field(default_factory=dict)
    # Set to make the next start / pause / resume fail.
    fail_start: bool = False
    fail_pause: bool = False
    fail_resume: bool = False
    calls: list[str] = field(default_factory=list)

    # -- address slots ---------------------------------------------------------
    async def reserve_slot(self, holder: str) -> int:
        if holder in self.slots:
            return self.slots[holder]
        used = set(self.slots.values())
        for slot in range(1, self.slots_total):
            if slot not in used:
                self.slots[holder] = slot
                return slot
        raise StartFailed("the node's address pool is exhausted")

    async def release_slot(self, holder: str) -> None:
        self.slots.pop(holder, None)

    def address(self, slot: int) -> str:
        return f"10.0.{slot}.2"

    # -- sandboxes -------------------------------------------------------------
    async def start(self, plan: SandboxPlan, on_up: OnUp | None = None) -> bool:
        self.calls.append(f"start {plan.id}")
        if self.fail_start:
            self.slots.pop(plan.id, None)
            raise StartFailed("told to fail")
        self.runtimes[plan.id] = RuntimeState.RUNNING
        self.plans[plan.id] = plan
        self.policies[plan.id] = plan.network_policy
        if on_up is not None:
            await on_up(True)
        return True

    async def adopt(self, plan: SandboxPlan, pool_token: str) -> None:
        self.plans[plan.id] = plan
        self.policies[plan.id] = plan.network_policy

    async def pause(self, sandbox_id: str, slot: int, envd_token: str) -> Paused:
        self.calls.append(f"pause {sandbox_id}")
        if self.fail_pause:
            raise RuntimeError("checkpoint failed")
        self.snapshots.add(sandbox_id)
        self.runtimes.pop(sandbox_id, None)
        return Paused(size=1234)

    async def resume(self, plan: SandboxPlan) -> None:
        self.calls.append(f"resume {plan.id}")
        if self.fail_resume or plan.id not in self.snapshots:
            raise StartFailed("no snapshot" if plan.id not in self.snapshots else "told to fail")
        self.slots[plan.id] = plan.slot
        self.runtimes[plan.id] = RuntimeState.RUNNING
        self.plans[plan.id] = plan

    async def discard_spent(self, sandbox_id: str) -> None:
        self.snapshots.discard(sandbox_id)

    async def stop(self, sandbox_id: str) -> None:
        self.runtimes.pop(sandbox_id, None)

    async def forget(self, sandbox_id: str) -> None:
        self.calls.append(f"forget {sandbox_id}")
        self.runtimes.pop(sandbox_id, None)
        self.snapshots.discard(sandbox_id)
        self.slots.pop(sandbox_id, None)

    async def runtime_state(self, sandbox_id: str) -> RuntimeState:
        return self.runtimes.get(sandbox_id, RuntimeState.MISSING)

    async def is_alive(self, sandbox_id: str, slot: int) -> bool:
        return self.runtimes.get(sandbox_id) == RuntimeState.RUNNING

    async def unfreeze(self, sandbox_id: str) -> None:
        if self.runtimes.get(sandbox_id) == RuntimeState.PAUSED:
            self.runtimes[sandbox_id] = RuntimeState.RUNNING

    async def snapshot_sealed(self, sandbox_id: str) -> bool:
        return sandbox_id in self.snapshots

    async def drop_snapshot(self, sandbox_id: str) -> None:
        self.snapshots.discard(sandbox_id)

    async def reconcile(self, keep: Mapping[str, int | None],
                        in_flight: Collection[str] = ()) -> set[str]:
        for sandbox_id, slot in keep.items():
            if slot is not None:
                self.slots[sandbox_id] = slot
        # What the node has of a sandbox: its runtime, its snapshot, its slot
        # (spares are the node's own, as the real node's are).
        present = set(self.runtimes) | self.snapshots | set(self.slots)
        for sandbox_id in present - {c.id for c in self.spares}:
            if sandbox_id not in keep and sandbox_id not in in_flight:
                await self.forget(sandbox_id)
        return {s for s in keep if self.runtimes.get(s) != RuntimeState.RUNNING}

    # -- spares and templates --------------------------------------------------
    async def take_spare(self, rootfs: Path, vcpu: int, memory_mib: int,
                   disk_mib: int) -> SpareClaim | None:
        return self.spares.pop(0) if self.spares else None

    async def put_back(self, claim: SpareClaim) -> None:
        self.spares.append(claim)

    async def want_spares(self, rootfs: Path, vcpu: int, memory_mib: int, disk_mib: int) -> None:
        pass

    async def forget_template(self, path: Path) -> None:
        pass

    async def prepare_template(self, rootfs: Path, vcpu: int, memory_mib: int,
                               ready_s: float = 60.0, strict: bool = False) -> bool:
        return True

    # -- egress ----------------------------------------------------------------
    async def set_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        self.policies[sandbox_id] = policy

    async def sync_policy(self, sandbox_id: str, slot: int, policy: NetworkPolicy,
                          security: SecurityPolicy | None, envd_token: str,
                          rootfs: Path) -> bool:
        changed = self.policies.get(sandbox_id) != policy
        self.policies[sandbox_id] = policy
        return changed

    def make_spare(self) -> SpareClaim:
        """A spare runtime, as the real node makes them: its own id and slot."""
        sandbox_id = f"sbx-spare{len(self.spares):03d}"
        claim = SpareClaim(sandbox_id, self.slots_total - 1 - len(self.spares))
        self.slots[sandbox_id] = claim.slot
        self.spares.append(claim)
        return claim
