"""The warm pool: sandboxes of the base template restored from its snapshot
and left idle, so that a create of their size only has to hand one over.

A member belongs to the pool's own organisation, has a token only sbx
knows, and has never run anybody's code: it was restored
for whoever claims it, and is never given back. Claiming (in
SandboxService) rewrites its row for the caller and gives envd the
caller's identity; the pool refills behind it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sbx.config import Settings
from sbx.core import accounts
from sbx.core.fleet import Shape
from sbx.core.sandboxes import CreateSpec, SandboxService
from sbx.core.templates import BASE, template_id
from sbx.nodeapi.contract import StartFailed
from sbx.shared import ids
from sbx.shared.lifecycle import SandboxState
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Template

log = logging.getLogger(__name__)
S = SandboxState

POOL_ORG = "__warm_pool__"
REFILL_DELAY_S = 0.5


@dataclass(frozen=True)
class PoolSize:
    vcpu: int
    memory_mib: int
    count: int


def sizes(settings: Settings) -> list[PoolSize]:
    """The configured sizes, cut to the pool's memory bound (members of the
    first sizes first)."""
    out: list[PoolSize] = []
    budget = settings.warm_pool_max_mib
    for key, count in settings.warm_pool.items():
        vcpu, _, memory = key.partition("x")
        size = PoolSize(int(vcpu), int(memory), 0)
        each = size.memory_mib + settings.memory_headroom_mib
        fit = max(0, min(count, budget // each))
        if fit < count:
            log.warning("warm pool: %s cut from %d to %d by SBX_WARM_POOL_MAX_MIB=%d",
                        key, count, fit, settings.warm_pool_max_mib)
        budget -= fit * each
        out.append(PoolSize(size.vcpu, size.memory_mib, fit))
    return out


class WarmPool:
    def __init__(self, db: Database, service: SandboxService, settings: Settings) -> None:
        self.db = db
        self.service = service
        self.settings = settings
        self.sizes = sizes(settings)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        service.on_claimed.append(self._claimed)

    def _claimed(self) -> None:
        # A moment later: the claim's answer goes out before the refill's
        # restore takes the CPUs.
        asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._wake.set)

    @property
    def enabled(self) -> bool:
        return any(size.count for size in self.sizes)

    async def ensure_org(self) -> None:
        async with self.db.transaction() as s:
            org = await repo.org_by_name(s, POOL_ORG)
            if org is None:
                org = await accounts.create_org(s, POOL_ORG)
        self.service.pool_org = org.id

    async def run(self) -> None:
        """Fill now, then whenever a member is claimed (or every reconcile
        interval, to replace members lost to a crash)."""
        while True:
            try:
                await self.fill()
            except Exception:
                log.exception("warm pool: filling failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval_s)
            self._wake.clear()

    async def fill(self) -> None:
        if not self.enabled or self.service.pool_org is None:
            return
        async with self._lock:
            async with self.db.session() as s:
                tpl = await repo.template_by_id(s, template_id(BASE))
            if tpl is None or tpl.status != "ready":
                return
            for size in self.sizes:
                while await self._count(tpl, size) < size.count:
                    if not await self._add(tpl, size):
                        break

    async def _count(self, tpl: Template, size: PoolSize) -> int:
        assert self.service.pool_org is not None
        async with self.db.session() as s:
            rows = await repo.pooled(s, self.service.pool_org, tpl.id, size.vcpu,
                                     size.memory_mib, [S.POOLED, S.STARTING])
        return len(rows)

    async def _add(self, tpl: Template, size: PoolSize) -> bool:
        """One new member; False when it failed (tried again later)."""
        svc = self.service
        assert svc.pool_org is not None
        sandbox_id = ids.sandbox_id()
        svc._starting.add(sandbox_id)
        # The default policy: a claim keeping it (most do) then needs no
        # firewall change. Nothing in a member sends.
        spec = CreateSpec(template=BASE, vcpu=size.vcpu, memory_mib=size.memory_mib,
                          timeout_s=None, surface="pool")
        try:
            node_id = await svc.fleet.place(Shape(size.vcpu, size.memory_mib, tpl.disk_mib,
                                                  tpl.rootfs))
            try:
                async with self.db.transaction() as s:
                    row = await svc._insert(s, svc.pool_org, sandbox_id, tpl, spec, node_id,
                                            "warm pool")
            except BaseException:
                await asyncio.shield(svc.fleet.node(node_id).release_slot(sandbox_id))
                raise
            how: list[str] = []

            async def up(from_snapshot: bool) -> None:
                # Pooled only once envd answers: a claim goes straight to it.
                how[:] = ["from template snapshot" if from_snapshot else "cold boot"]

            try:
                await svc._boot(row, tpl, up)
            except StartFailed as exc:
                log.warning("warm pool: a member failed to start: %s", exc)
                return False
            async with self.db.transaction() as s:
                await repo.set_state(s, sandbox_id, S.STARTING, S.POOLED, how[0])
            log.info("warm pool: %s ready (%dx%d)", sandbox_id, size.vcpu, size.memory_mib)
            return True
        finally:
            svc._starting.discard(sandbox_id)

    async def report(self) -> list[dict[str, int]]:
        """Members per size, and the memory the pool holds (reserved: each
        member's memory_mib plus the runtime's headroom)."""
        out = []
        async with self.db.session() as s:
            tpl = await repo.template_by_id(s, template_id(BASE))
        for size in self.sizes:
            ready = 0
            if tpl is not None and self.service.pool_org is not None:
                async with self.db.session() as s:
                    ready = len(await repo.pooled(s, self.service.pool_org, tpl.id, size.vcpu,
                                                  size.memory_mib, [S.POOLED]))
            out.append({"vcpu": size.vcpu, "memory_mib": size.memory_mib, "target": size.count,
                        "ready": ready, "reserved_mib": ready * (
                            size.memory_mib + self.settings.memory_headroom_mib)})
        return out
