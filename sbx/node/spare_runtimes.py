"""Spare runtimes: gVisor sandboxes created ahead, not yet restored, for the
shapes creates have been asking for.

`runsc restore` of a template snapshot spends about half its time before
it reads the image: three Go processes start (runsc, the sandbox, the
gofer), join their cgroups, build their seccomp filters, and the gofer
mounts the root filesystem. `runsc create` does all of that, and a later
`runsc restore` of the created container only loads the image into it
(measured here: ready 151-220 ms against 264-310 ms for a bare restore of
the same image). A spare is such a created container, with its own netns,
address and disk; a create of its shape takes it, and its id becomes the
new sandbox's id. It has run nothing yet, so it carries nothing of anyone:
the kernel, memory and processes it will hold all come from the image.

Which shapes to keep is learnt: the last `count` creates from a snapshot
name them (two creates of one shape in a row keep two of it). A spare
costs ~25 MiB of host memory (the idle sandbox and gofer processes), a
netns, an address and a disk; `count` bounds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpareKey:
    """What a spare is bound to when it is created: its root filesystem,
    the template snapshot it will restore, its cgroup limits and disk."""

    rootfs: Path
    image: Path
    vcpu: int
    memory_mib: int
    disk_mib: int


@dataclass(frozen=True)
class Spare:
    id: str
    slot: int
    key: SpareKey


Make = Callable[[SpareKey], Awaitable[Spare | None]]
Drop = Callable[[Spare], Awaitable[None]]


class SpareRuntimes:
    def __init__(self, count: int, make: Make, drop: Drop) -> None:
        self.count = count
        self._make = make
        self._drop = drop
        self._wanted: deque[SpareKey] = deque(maxlen=max(count, 1))
        self._ready: list[Spare] = []
        self._filling: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def ready(self) -> list[Spare]:
        return list(self._ready)

    def want(self, key: SpareKey) -> None:
        """A create of key's shape happened (or is expected): keep one
        ready. Call refill() once that create is up."""
        if self.count > 0:
            self._wanted.append(key)

    def take(self, key: SpareKey) -> Spare | None:
        for spare in self._ready:
            if spare.key == key:
                self._ready.remove(spare)
                return spare
        return None

    def put_back(self, spare: Spare) -> None:
        """A spare taken by a create that then never used it (refused by a
        limit, or served by the warm pool): still untouched. (After
        remove_all, the reconciler removes it: it is in no store.)"""
        self._ready.append(spare)

    async def forget_under(self, root: Path) -> None:
        """No spares of root filesystems under root any more (a template
        version or template about to be removed): wanted no longer, and
        those ready are removed."""
        def under(key: SpareKey) -> bool:
            return key.rootfs == root or root in key.rootfs.parents

        self._unwant(under)
        for spare in [s for s in self._ready if under(s.key)]:
            self._ready.remove(spare)
            await self._drop_quietly(spare)

    def _unwant(self, pred: Callable[[SpareKey], bool]) -> None:
        self._wanted = deque((k for k in self._wanted if not pred(k)),
                             maxlen=self._wanted.maxlen)

    def refill(self) -> None:
        """Make what is missing, in the background. Called once a create is
        up, not while it restores: on two cores a runsc create alongside
        would slow the restore down."""
        if self._closing or self.count <= 0 or (
            self._filling is not None and not self._filling.done()
        ):
            return
        self._filling = asyncio.create_task(self._fill(), name="spare-runtimes")

    def _target(self) -> Counter[SpareKey]:
        return Counter(self._wanted)

    async def _fill(self) -> None:
        # Spares of shapes no longer asked for go first: they hold memory,
        # an address and a disk for nothing.
        target = self._target()
        have: Counter[SpareKey] = Counter()
        for spare in list(self._ready):
            have[spare.key] += 1
            if have[spare.key] > target[spare.key]:
                self._ready.remove(spare)
                await self._drop_quietly(spare)
        while not self._closing:
            target = self._target()
            have = Counter(spare.key for spare in self._ready)
            missing = [key for key in reversed(self._wanted) if have[key] < target[key]]
            if not missing:
                return
            key = missing[0]
            if not key.image.exists():
                # Its template snapshot is gone (a rebuild, a new envd):
                # nothing to restore into a spare of it.
                self._unwant(key.__eq__)
                continue
            try:
                made = await self._make(key)
            except Exception:
                log.exception("making a spare runtime failed")
                return
            if made is None:
                return
            if self._closing:
                await self._drop_quietly(made)
                return
            self._ready.append(made)

    async def _drop_quietly(self, spare: Spare) -> None:
        try:
            await self._drop(spare)
        except Exception:
            log.exception("removing spare runtime %s failed", spare.id)

    async def remove_all(self) -> None:
        """Every spare removed (server stop); the one being made is
        finished first, not cancelled, so nothing of it is left behind."""
        self._closing = True
        if self._filling is not None:
            with contextlib.suppress(Exception):
                await self._filling
            self._filling = None
        spares, self._ready = self._ready, []
        for spare in spares:
            await self._drop_quietly(spare)
