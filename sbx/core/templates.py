"""Templates: the built-in `base`, built on first start."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sbx.config import Settings
from sbx.node import rootfs
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Template

BASE = "base"


def template_id(name: str) -> str:
    return f"tpl-{name}"


async def ensure_base(db: Database, settings: Settings, progress: rootfs.Progress) -> Template:
    path: Path = settings.templates_dir / BASE / "rootfs"
    if not (path / "usr/bin/python3").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        await rootfs.build_base(path, progress)
    else:
        # An upgraded sbx brings a new envd (and tuning) into the existing template.
        await asyncio.to_thread(rootfs.tune_profile, path)
        await asyncio.to_thread(rootfs.install_envd, path)
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
