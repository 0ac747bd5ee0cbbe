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
from tests.unit.store_rows import seeded


async def test_a_paused_sandbox_is_never_deleted_as_lost(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, subnet="10.254.0.0/24")
    db, _ = await seeded(settings.db_url, "race", ["sbx-paused00"], state="paused")
    try:
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
