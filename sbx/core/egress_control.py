"""Network policy changes at runtime, and keeping the node's enforcement in
step with the store.

The store is the source of truth: a change is written to the sandbox's
row, then applied on its node (nft transaction + the proxy's and
resolver's view, well under a second). `resync()` runs at server start
(the nft table was rebuilt, so running sandboxes get their rules back) and
with the reconciler (anything that drifted is applied again). One lock per
sandbox orders a change and a resync, so neither applies a stale policy."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from pathlib import Path

from sbx.core.errors import Conflict
from sbx.core.fleet import NodeGone
from sbx.core.sandboxes import SandboxService
from sbx.nodeapi.contract import StartFailed
from sbx.shared.lifecycle import SandboxState
from sbx.shared.policy import NetworkPolicy
from sbx.shared.security import stored_security
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Sandbox

log = logging.getLogger(__name__)
S = SandboxState

# A stored change reaches a paused sandbox when it resumes.
CHANGEABLE = (S.RUNNING, S.PAUSED)


class EgressControl:
    def __init__(self, db: Database, sandboxes: SandboxService) -> None:
        self.db = db
        self.sandboxes = sandboxes
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def set_policy(self, org_id: str | None, sandbox_id: str,
                         policy: NetworkPolicy) -> Sandbox:
        row = await self.sandboxes.get(org_id, sandbox_id)
        async with self._locks[sandbox_id]:
            async with self.db.transaction() as s:
                if not await repo.set_network_policy(s, sandbox_id, CHANGEABLE,
                                                     policy.model_dump(mode="json")):
                    raise Conflict(
                        f"Sandbox {sandbox_id} is {row.state}: its network policy can be "
                        "changed while it is running or paused"
                    )
                repo.add_event(s, sandbox_id, row.state, row.state, "network policy changed")
                fresh = await repo.sandbox(s, sandbox_id)
            assert fresh is not None
            if fresh.state == S.RUNNING:
                await self.sandboxes.node_of(fresh).set_policy(sandbox_id, policy)
            return fresh

    async def resync(self) -> None:
        """Give every running sandbox of the store the policy it has there."""
        async with self.db.session() as s:
            rows = await repo.sandboxes(s, None, [S.RUNNING])
        # A lost node's sandboxes get theirs when it is back.
        members = await self.sandboxes.fleet.members()
        for row in rows:
            if row.ip_slot is None or row.node_id not in members:
                continue
            try:
                await self._resync_one(row.id)
            except (StartFailed, NodeGone) as exc:
                # Its node did not answer (lost, or restarting): next round.
                log.warning("re-applying the network policy of %s failed: %s", row.id, exc)
            except Exception:
                log.exception("re-applying the network policy of %s failed", row.id)

    async def _resync_one(self, sandbox_id: str) -> None:
        async with self._locks[sandbox_id]:
            async with self.db.session() as s:
                row = await repo.sandbox(s, sandbox_id)
                tpl = await repo.template_by_id(s, row.template_id) if row else None
            if row is None or row.state != S.RUNNING or row.ip_slot is None:
                return
            policy = NetworkPolicy.model_validate(row.network_policy, strict=False)
            rootfs = row.rootfs or (tpl.rootfs if tpl is not None else None)
            if rootfs is None:
                return
            if await self.sandboxes.node_of(row).sync_policy(
                    sandbox_id, row.ip_slot, policy,
                    stored_security((row.extra or {}).get("security")), row.envd_token,
                    Path(rootfs)):
                log.info("egress: re-applied the network policy of %s", sandbox_id)
