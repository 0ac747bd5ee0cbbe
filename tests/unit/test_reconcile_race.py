"""The reconciler's delete of a "lost" sandbox is decided again under the
sandbox's lock: a pause that ended between the reconciler reading the store
and listing the host (the sandbox is rightly gone from the host then) must
not turn into deleting the paused sandbox and its snapshot. CI caught that
race once during twenty pause/resume cycles."""

from __future__ import annotations

from pathlib import Path

from sbx.config import Settings
from sbx.core.sandboxes import SandboxService
from sbx.node.agent import NodeAgent
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Sandbox, Template


async def test_a_paused_sandbox_is_never_deleted_as_lost(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, subnet="10.254.0.0/24")
    db = Database(settings.db_url)
    await db.migrate()
    try:
        async with db.transaction() as s:
            from sbx.core import accounts

            org = await accounts.create_org(s, "race")
            s.add(Template(id="tpl-base", name="base", org_id=None, vcpu=1, memory_mib=512,
                           disk_mib=512, rootfs="/nonexistent", status="ready",
                           created_at=repo.now()))
            await s.flush()
            s.add(Sandbox(id="sbx-paused00", org_id=org.id, template_id="tpl-base",
                          state="paused", vcpu=1, memory_mib=512, disk_mib=512,
                          network_policy={}, env_vars={}, extra={}, envd_token="t",
                          proxy_token="p", created_at=repo.now()))
        snapshot = settings.data_dir / "snapshots" / "sbx-paused00"
        snapshot.mkdir(parents=True)
        (snapshot / "pages.img").write_bytes(b"memory")
        service = SandboxService(db, NodeAgent(settings), settings)
        # What the reconciler does with a row it read as running a moment ago.
        row = await service.delete(None, "sbx-paused00", reason="lost: runtime not running",
                                   only_if_lost=True)
        assert row.state == "paused"
        async with db.session() as s:
            fresh = await repo.sandbox(s, "sbx-paused00")
        assert fresh is not None and fresh.state == "paused"
        assert (snapshot / "pages.img").read_bytes() == b"memory"
    finally:
        await db.close()
