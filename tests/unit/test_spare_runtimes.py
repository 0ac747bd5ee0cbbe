"""Which spare runtimes are kept: the policy of SpareRuntimes, with the
agent's make and drop replaced by recorders (the real ones are covered by
tests/integration/test_spare_runtimes.py)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from sbx.node.spare_runtimes import Spare, SpareKey, SpareRuntimes


class Recorder:
    def __init__(self, fail_after: int | None = None, delay: float = 0.0) -> None:
        self.made: list[Spare] = []
        self.dropped: list[Spare] = []
        self.fail_after = fail_after
        self.delay = delay
        self._ids = itertools.count(1)

    async def make(self, key: SpareKey) -> Spare | None:
        if self.fail_after is not None and len(self.made) >= self.fail_after:
            raise RuntimeError("runsc create failed")
        await asyncio.sleep(self.delay)
        n = next(self._ids)
        spare = Spare(f"sbx-{n:08d}", n, key)
        self.made.append(spare)
        return spare

    async def drop(self, spare: Spare) -> None:
        self.dropped.append(spare)


def key(tmp_path: Path, memory: int = 512, exists: bool = True) -> SpareKey:
    image = tmp_path / f"c1-m{memory}"
    if exists:
        image.mkdir(exist_ok=True)
    return SpareKey(tmp_path / "rootfs", image, 1, memory, 2048)


async def settle(spares: SpareRuntimes) -> None:
    spares.refill()
    for _ in range(100):
        task = spares._filling
        if task is None or task.done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("fill did not end")


def test_keeps_the_shapes_of_the_last_creates(tmp_path: Path) -> None:
    async def go() -> None:
        rec = Recorder()
        spares = SpareRuntimes(2, rec.make, rec.drop)
        small, big = key(tmp_path), key(tmp_path, 1024)
        spares.want(small)
        await settle(spares)
        assert [s.key for s in spares.ready] == [small]
        # Two creates of one shape in a row keep two of it.
        spares.want(small)
        await settle(spares)
        assert [s.key for s in spares.ready] == [small, small]
        # Another shape: one of each; the surplus one is removed.
        spares.want(big)
        await settle(spares)
        assert sorted(s.key.memory_mib for s in spares.ready) == [512, 1024]
        assert len(rec.dropped) == 1 and rec.dropped[0].key == small
        await spares.remove_all()
        assert spares.ready == []
        assert len(rec.dropped) == len(rec.made)

    asyncio.run(go())


def test_take_and_put_back(tmp_path: Path) -> None:
    async def go() -> None:
        rec = Recorder()
        spares = SpareRuntimes(1, rec.make, rec.drop)
        small = key(tmp_path)
        spares.want(small)
        await settle(spares)
        assert spares.take(key(tmp_path, 1024)) is None
        taken = spares.take(small)
        assert taken is not None and spares.ready == []
        assert spares.take(small) is None
        spares.put_back(taken)
        assert spares.ready == [taken]
        # Refilled behind a take.
        assert spares.take(small) is taken
        await settle(spares)
        assert len(spares.ready) == 1 and spares.ready[0] is not taken
        await spares.remove_all()

    asyncio.run(go())


def test_off_makes_nothing(tmp_path: Path) -> None:
    async def go() -> None:
        rec = Recorder()
        spares = SpareRuntimes(0, rec.make, rec.drop)
        spares.want(key(tmp_path))
        await settle(spares)
        assert rec.made == [] and spares.ready == []

    asyncio.run(go())


def test_shape_without_image_is_forgotten(tmp_path: Path) -> None:
    async def go() -> None:
        rec = Recorder()
        spares = SpareRuntimes(2, rec.make, rec.drop)
        gone, small = key(tmp_path, 2048, exists=False), key(tmp_path)
        spares.want(gone)
        spares.want(small)
        await settle(spares)
        assert [s.key for s in spares.ready] == [small]
        assert gone not in spares._wanted
        await spares.remove_all()

    asyncio.run(go())


@pytest.mark.parametrize("fail_after", [0, 1])
def test_a_failing_make_stops_the_fill_quietly(tmp_path: Path, fail_after: int) -> None:
    async def go() -> None:
        rec = Recorder(fail_after=fail_after)
        spares = SpareRuntimes(2, rec.make, rec.drop)
        small = key(tmp_path)
        spares.want(small)
        spares.want(small)
        await settle(spares)
        assert len(spares.ready) == fail_after
        await spares.remove_all()

    asyncio.run(go())


def test_remove_all_waits_for_the_one_being_made(tmp_path: Path) -> None:
    async def go() -> None:
        rec = Recorder(delay=0.05)
        spares = SpareRuntimes(2, rec.make, rec.drop)
        spares.want(key(tmp_path))
        spares.refill()
        await asyncio.sleep(0.01)
        await spares.remove_all()
        # The one in the making was finished and removed, not left behind.
        assert len(rec.made) == 1 and rec.dropped == rec.made
        assert spares.ready == []

    asyncio.run(go())


def test_forget_under_removes_a_retired_versions_spares(tmp_path: Path) -> None:
    async def go() -> None:
        rec = Recorder()
        spares = SpareRuntimes(2, rec.make, rec.drop)
        old = SpareKey(tmp_path / "tpl" / "v1" / "rootfs", key(tmp_path).image, 1, 512, 2048)
        other = key(tmp_path, 1024)
        spares.want(old)
        spares.want(other)
        await settle(spares)
        assert len(spares.ready) == 2
        await spares.forget_under(tmp_path / "tpl" / "v1")
        assert [s.key for s in spares.ready] == [other]
        assert [s.key for s in rec.dropped] == [old]
        # Not made again: nobody wants it any more.
        await settle(spares)
        assert [s.key for s in spares.ready] == [other]
        await spares.remove_all()

    asyncio.run(go())
