"""An enforced sandbox wallet at zero pauses the organisation's running
sandboxes (nothing is lost: they are snapshotted); once it has a balance
again, the ones paused for it are resumed. Runs after each metering pass."""

from __future__ import annotations

import logging

from sqlalchemy import select

from sbx.core import billing
from sbx.core.sandboxes import SandboxService
from sbx.shared.lifecycle import SandboxState as S
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Org

log = logging.getLogger(__name__)

PAUSED_FOR = "paused_for"
WALLET = "wallet"


async def enforce(db: Database, service: SandboxService) -> None:
    to_pause: list[str] = []
    to_resume: list[str] = []
    async with db.session() as s:
        orgs = (await s.execute(select(Org).where(Org.sandbox_wallet.is_(True)))).scalars()
        for org in orgs:
            empty = await billing.balance(s, org.id, "sandbox") <= 0
            if empty:
                to_pause += [r.id for r in await repo.sandboxes(s, org.id, [S.RUNNING])]
            else:
                to_resume += [r.id for r in await repo.sandboxes(s, org.id, [S.PAUSED])
                              if (r.extra or {}).get(PAUSED_FOR) == WALLET]
    for sandbox_id in to_pause:
        try:
            await service.pause(None, sandbox_id, reason="sandbox wallet empty")
        except Exception as exc:  # it may have ended meanwhile
            log.warning("pausing %s for its empty wallet failed: %s", sandbox_id, exc)
            continue
        async with db.transaction() as s:
            row = await repo.sandbox(s, sandbox_id)
            if row is not None:
                row.extra = {**(row.extra or {}), PAUSED_FOR: WALLET}
        log.info("sandbox %s paused: its organisation's sandbox wallet is empty", sandbox_id)
    for sandbox_id in to_resume:
        try:
            await service.resume(None, sandbox_id)
        except Exception as exc:
            log.warning("resuming %s after a top-up failed: %s", sandbox_id, exc)
            continue
        log.info("sandbox %s resumed: its organisation's sandbox wallet has a balance", sandbox_id)
