"""Templates: the built-in `base`, built on first start."""

from __future__ import annotations

from pathlib import Path

from sbx.config import Settings
from sbx.node import rootfs
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Template

BASE = "base"


def template_id(name: str) -> str:
    return f"tpl-{name}"


async def ensure_base(db: Database, settings: Settings, progress: rootfs.Progress,
                      build: bool = True) -> Template:
    """The base template's record, its rootfs built (or brought up to date)
    first when build is set. A cluster's control plane only records it:
    each node builds the same path on its own host (`sbx node`)."""
    path: Path = settings.templates_dir / BASE / "rootfs"
    if build:
        await rootfs.ensure_base(path, progress)
    async with db.transaction() as s:
        tpl = await repo.template_by_id(s, template_id(BASE))
        if tpl is None:
            tpl = Template(
                id=template_id(BASE), name=BASE, org_id=None, vcpu=2, memory_mib=1024,
                disk_mib=settings.default_disk_mib, rootfs=str(path), status="ready",
                created_at=repo.now(),
            )
            s.add(tpl)
        else:
            tpl.rootfs = str(path)
            tpl.status = "ready"
    return tpl
