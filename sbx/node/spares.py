"""Spare sandbox disks, made ahead of the creates that need them.

A sandbox's disk (a sparse ext4 image, loop-mounted) costs a mkfs and a
mount, ~22 ms on the create path. A spare is the same directory layout
(`disk.img`, `upper/` mounted) under DATA_DIR/spares; a create renames it
into the sandbox's directory in one step (the mount moves with it) and a
new spare is made behind it. Only the usual size is kept spare; other sizes
are made on demand as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path

from sbx.node import disk

log = logging.getLogger(__name__)

class SpareDisks:
    def __init__(self, root: Path, size_mib: int, count: int) -> None:
        self.root = root
        self.size_mib = size_mib
        self.count = count
        self._ready: list[Path] = []
        self._serial = 0
        self._filling: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Spares of an earlier run are discarded (their size may be stale),
        then the first ones are made in the background."""
        await self.remove_all()
        self._closing = False
        self.refill()

    def take(self, size_mib: int, dest: Path) -> bool:
        """Move a spare of size_mib to dest (which must not exist or be an
        empty directory); False when there is none. The caller calls
        refill() once the sandbox that took it is up: not while it restores,
        since on two cores the mkfs would slow the restore down, and not
        later, since the next create may come right after."""
        if size_mib != self.size_mib or not self._ready:
            return False
        spare = self._ready.pop()
        try:
            spare.rename(dest)
        except OSError as exc:
            # dest is in the way (not the spare's fault): keep the spare.
            log.warning("spare disk %s not moved to %s (%s)", spare, dest, exc)
            self._ready.append(spare)
            return False
        return True

    def refill(self) -> None:
        if self._closing or self.count <= 0 or (
            self._filling is not None and not self._filling.done()
        ):
            return
        self._filling = asyncio.create_task(self._fill(), name="spare-disks")

    async def _fill(self) -> None:
        while len(self._ready) < self.count and not self._closing:
            self._serial += 1
            path = self.root / f"{os.getpid()}-{self._serial}"
            try:
                path.mkdir(parents=True)
                await disk.create(path / "disk.img", path / "upper", self.size_mib)
            except Exception:
                log.exception("making a spare disk failed")
                await self._remove(path)
                return
            self._ready.append(path)

    async def _remove(self, path: Path) -> None:
        await disk.destroy(path / "disk.img", path / "upper")
        await asyncio.to_thread(shutil.rmtree, path, True)

    async def remove_all(self) -> None:
        # The one being made is finished, not cancelled: its mkfs and mount
        # run on in their thread either way, and must not outlive this.
        self._closing = True
        if self._filling is not None:
            with contextlib.suppress(Exception):
                await self._filling
            self._filling = None
        self._ready.clear()
        if self.root.exists():
            for path in sorted(self.root.iterdir()):
                await self._remove(path)
