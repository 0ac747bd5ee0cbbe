"""Templates: the built-in `base`, built on first start, and
`code-interpreter-v1` (E2B's Code Interpreter), registered once the
platform has built it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sbx.config import Settings
from sbx.node import rootfs
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Template

BASE = "base"
# E2B's Code Interpreter SDKs' default; built by the platform with
# sbx.node.interpreter_rootfs, registered here.
CODE_INTERPRETER = "code-interpreter-v1"
BUILT_IN = frozenset({BASE, CODE_INTERPRETER})


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
    return await register_built_in(db, BASE, path, settings.default_disk_mib)


async def register_built_in(db: Database, name: str, path: Path, disk_mib: int,
                            config: dict[str, Any] | None = None) -> Template:
    """A built-in template's row: public, 2 vCPU and 1 GiB by default. The
    run-time config is what a template built FROM it starts from."""
    async with db.transaction() as s:
        tpl = await repo.template_by_id(s, template_id(name))
        if tpl is None:
            tpl = Template(
                id=template_id(name), name=name, org_id=None, vcpu=2, memory_mib=1024,
                disk_mib=disk_mib, rootfs=str(path), status="ready", created_at=repo.now(),
                config=config,
            )
            s.add(tpl)
        else:
            tpl.rootfs = str(path)
            tpl.status = "ready"
            tpl.config = config
    return tpl
