"""Core's sandbox rules against a node in memory (tests/unit/fake_node.py)
and a real store (SQLite and PostgreSQL): what a create, pause, resume, delete, timeout and
reconcile write, what they ask of the node, and what they leave when the
node fails. No root, runsc or nftables: the node interface is the seam."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sbx.config import Settings
from sbx.core.errors import Conflict, InvalidRequest, Unavailable
from sbx.core.limits import LimitReached
from sbx.core.sandboxes import CreateSpec, SandboxService
from sbx.nodeapi.contract import RuntimeState
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import SandboxEvent
from tests.unit.fake_node import FakeNode
from tests.unit.store_rows import seeded


@dataclass
class Core:
    service: SandboxService
    node: FakeNode
    db: Database
    org_id: str


@pytest.fixture
async def core(tmp_path: Path, db_url: str) -> AsyncIterator[Core]:
    settings = Settings(data_dir=tmp_path, subnet="10.254.0.0/24", database_url=db_url)
    db, org_id = await seeded(db_url, "core-test", [])
    node = FakeNode()
    try:
        yield Core(SandboxService(db, node, settings), node, db, org_id)
    finally:
        await db.close()


async def _events(db: Database, sandbox_id: str) -> list[tuple[str | None, str]]:
    async with db.session() as s:
        from sqlalchemy import select
        rows = (await s.execute(select(SandboxEvent).where(
            SandboxEvent.sandbox_id == sandbox_id).order_by(SandboxEvent.id))).scalars().all()
    return [(e.from_state, e.to_state) for e in rows]


async def test_create_runs_it_on_the_node_with_a_reserved_slot(core: Core) -> None:
    row = await core.service.create(core.org_id, CreateSpec(template="base", env_vars={"A": "1"}))
    assert row.state == "running" and row.timeout_at is not None
    assert core.node.runtimes[row.id] == RuntimeState.RUNNING
    assert row.ip_slot == core.node.slots[row.id]
    plan = core.node.plans[row.id]
    assert plan.env == {"A": "1"} and plan.envd_token == row.envd_token
    assert plan.slot == row.ip_slot
    assert core.service.address(row) == core.node.address(row.ip_slot)
    assert await _events(core.db, row.id) == [(None, "starting"), ("starting", "running")]


async def test_two_sandboxes_never_share_a_slot(core: Core) -> None:
    a = await core.service.create(core.org_id, CreateSpec(template="base"))
    b = await core.service.create(core.org_id, CreateSpec(template="base"))
    assert a.ip_slot != b.ip_slot


async def test_an_unknown_template_changes_nothing(core: Core) -> None:
    with pytest.raises(InvalidRequest):
        await core.service.create(core.org_id, CreateSpec(template="nope"))
    assert core.node.calls == [] and core.node.slots == {}


async def test_a_failed_start_leaves_no_row_and_no_slot(core: Core) -> None:
    core.node.fail_start = True
    with pytest.raises(Unavailable):
        await core.service.create(core.org_id, CreateSpec(template="base"))
    assert await core.service.list(core.org_id) == []
    assert core.node.slots == {}


async def test_the_limit_refuses_the_fourth_and_gives_its_slot_back(core: Core) -> None:
    # The default tier allows 3 sandboxes (seed 000).
    made = await asyncio.gather(*(core.service.create(core.org_id, CreateSpec(template="base"))
                                  for _ in range(3)))
    with pytest.raises(LimitReached):
        await core.service.create(core.org_id, CreateSpec(template="base"))
    assert set(core.node.slots) == {r.id for r in made}
    assert len(await core.service.list(core.org_id)) == 3


async def test_concurrent_creates_never_pass_the_limit_together(core: Core) -> None:
    outcomes = await asyncio.gather(
        *(core.service.create(core.org_id, CreateSpec(template="base")) for _ in range(8)),
        return_exceptions=True)
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 3
    assert all(isinstance(o, LimitReached) for o in outcomes if isinstance(o, BaseException))
    assert len(core.node.slots) == 3


async def test_a_create_takes_a_spare_and_a_refused_one_puts_it_back(core: Core) -> None:
    spare = core.node.make_spare()
    row = await core.service.create(core.org_id, CreateSpec(template="base"))
    assert row.id == spare.id and row.ip_slot == spare.slot and core.node.spares == []
    for _ in range(2):
        await core.service.create(core.org_id, CreateSpec(template="base"))
    again = core.node.make_spare()
    with pytest.raises(LimitReached):
        await core.service.create(core.org_id, CreateSpec(template="base"))
    assert core.node.spares == [again] and core.node.slots[again.id] == again.slot


async def test_pause_then_resume_keeps_id_slot_and_tokens(core: Core) -> None:
    row = await core.service.create(core.org_id, CreateSpec(template="base"))
    paused = await core.service.pause(core.org_id, row.id)
    assert paused.state == "paused" and paused.timeout_at is None
    assert row.id in core.node.snapshots and row.id not in core.node.runtimes
    # The slot stays the paused sandbox's.
    assert core.node.slots[row.id] == row.ip_slot
    with pytest.raises(Conflict):
        await core.service.pause(core.org_id, row.id)
    resumed, did = await core.service.resume(core.org_id, row.id)
    assert did and resumed.state == "running" and resumed.ip_slot == row.ip_slot
    assert resumed.envd_token == row.envd_token
    assert core.node.plans[row.id].slot == row.ip_slot
    # The spent snapshot goes once the store says running.
    assert row.id not in core.node.snapshots
    again, did = await core.service.resume(core.org_id, row.id)
    assert not did and again.state == "running"
    assert await _events(core.db, row.id) == [
        (None, "starting"), ("starting", "running"), ("running", "snapshotting"),
        ("snapshotting", "paused"), ("paused", "unpausing"), ("unpausing", "running")]


async def test_a_failed_pause_leaves_it_running_and_a_failed_resume_paused(core: Core) -> None:
    row = await core.service.create(core.org_id, CreateSpec(template="base"))
    core.node.fail_pause = True
    with pytest.raises(Unavailable):
        await core.service.pause(core.org_id, row.id)
    assert (await core.service.get(core.org_id, row.id)).state == "running"
    core.node.fail_pause = False
    await core.service.pause(core.org_id, row.id)
    core.node.fail_resume = True
    with pytest.raises(Unavailable):
        await core.service.resume(core.org_id, row.id)
    assert (await core.service.get(core.org_id, row.id)).state == "paused"
    assert row.id in core.node.snapshots


async def test_delete_forgets_everything_on_the_node(core: Core) -> None:
    row = await core.service.create(core.org_id, CreateSpec(template="base"))
    await core.service.pause(core.org_id, row.id)
    gone = await core.service.delete(core.org_id, row.id)
    assert gone.state == "deleted" and gone.ended_at is not None
    assert row.id not in core.node.snapshots and row.id not in core.node.slots
    # Another organisation's key sees nothing.
    with pytest.raises(Exception, match="not found"):
        await core.service.get("org-other", row.id)


async def test_a_timeout_kills_or_pauses_as_asked(core: Core) -> None:
    kill = await core.service.create(core.org_id, CreateSpec(template="base", surface="sandboxes"))
    pause = await core.service.create(core.org_id, CreateSpec(template="base", auto_pause=True))
    async with core.db.transaction() as s:
        for sid in (kill.id, pause.id):
            fresh = await repo.sandbox(s, sid)
            assert fresh is not None
            fresh.timeout_at = repo.now()
    await core.service.expire_due()
    for _ in range(100):
        if not core.service._expiring:
            break
        await asyncio.sleep(0.01)
    assert (await core.service.get(None, kill.id)).state == "killed"
    assert (await core.service.get(None, pause.id)).state == "paused"


async def test_reconcile_marks_a_sandbox_whose_runtime_vanished(core: Core) -> None:
    row = await core.service.create(core.org_id, CreateSpec(template="base"))
    paused = await core.service.create(core.org_id, CreateSpec(template="base"))
    await core.service.pause(core.org_id, paused.id)
    core.node.runtimes.pop(row.id)
    await core.service.reconcile()
    assert (await core.service.get(None, row.id)).state == "deleted"
    # Paused is not lost: it has nothing on the host but its snapshot.
    assert (await core.service.get(None, paused.id)).state == "paused"


async def test_a_restarted_node_learns_the_slots_of_paused_sandboxes(core: Core) -> None:
    paused = await core.service.create(core.org_id, CreateSpec(template="base"))
    await core.service.pause(core.org_id, paused.id)
    core.node.slots.clear()  # what a restarted node knows
    await core.service.reconcile()
    assert core.node.slots[paused.id] == paused.ip_slot
    fresh = await core.service.create(core.org_id, CreateSpec(template="base"))
    assert fresh.ip_slot != paused.ip_slot


@pytest.mark.parametrize("sealed", [True, False])
async def test_a_pause_cut_short_by_a_crash_ends_paused_or_running(core: Core,
                                                                    sealed: bool) -> None:
    row = await core.service.create(core.org_id, CreateSpec(template="base"))
    async with core.db.transaction() as s:
        assert await repo.set_state(s, row.id, "running", "snapshotting")
    core.node.runtimes[row.id] = RuntimeState.PAUSED  # frozen by the checkpoint
    if sealed:
        core.node.snapshots.add(row.id)
    await core.service.reconcile()
    state = (await core.service.get(None, row.id)).state
    if sealed:
        assert state == "paused" and row.id not in core.node.runtimes
    else:
        assert state == "running" and core.node.runtimes[row.id] == RuntimeState.RUNNING
        assert row.id not in core.node.snapshots


async def test_a_reconcile_keeps_a_paused_sandbox_it_read_as_running(core: Core) -> None:
    # What the reconciler does with a row it read as running a moment ago,
    # when a pause ended in between: the paused sandbox stays.
    row = await core.service.create(core.org_id, CreateSpec(template="base"))
    await core.service.pause(core.org_id, row.id)
    kept = await core.service.delete(None, row.id, reason="lost: runtime not running",
                                     only_if_lost=True)
    assert kept.state == "paused" and row.id in core.node.snapshots
