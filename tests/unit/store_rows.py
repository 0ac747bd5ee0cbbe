"""A real store (SQLite or PostgreSQL) with an organisation, the base
template and some sandboxes in it, for unit tests of what reads and writes
those rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sbx.core import accounts
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Sandbox, Template


async def seeded(url: str, org_name: str, sandbox_ids: Sequence[str], state: str = "running",
                 vcpu: int = 1, memory_mib: int = 512, created_at: datetime | None = None
                 ) -> tuple[Database, str]:
    """The migrated store at url with those rows; answers it and the org id."""
    db = Database(url)
    await db.migrate()
    async with db.transaction() as s:
        org = await accounts.create_org(s, org_name)
        s.add(Template(id="tpl-base", name="base", org_id=None, vcpu=1, memory_mib=512,
                       disk_mib=512, rootfs="/nonexistent", status="ready",
                       created_at=repo.now()))
        await s.flush()
        for sid in sandbox_ids:
            s.add(Sandbox(id=sid, org_id=org.id, template_id="tpl-base", state=state,
                          vcpu=vcpu, memory_mib=memory_mib, disk_mib=512, network_policy={},
                          env_vars={}, extra={}, envd_token="t", proxy_token="p",
                          created_at=created_at or repo.now()))
    return db, org.id
