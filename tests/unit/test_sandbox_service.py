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
from sbx.core.fleet import NodeGone, NoRoom, OneNode, Shape
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
        yield Core(SandboxService(db, OneNode(node), settings), node, db, org_id)
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


class TwoNodes:
    """A fleet of two nodes in memory: placement takes the one with fewer
    sandboxes (ties: "a"); "b" can be made lost."""

    def __init__(self) -> None:
        self.nodes = {"a": FakeNode(), "b": FakeNode()}
        self.lost: set[str] = set()
        self.draining: set[str] = set()
        self.full = False

    def node(self, node_id: str | None) -> FakeNode:
        if node_id is None or node_id in self.lost:
            raise NodeGone(f"node {node_id} is lost")
        return self.nodes[node_id]

    async def place(self, shape: Shape) -> str | None:
        ready = [n for n in self.nodes if self.accepts(n)]
        if self.full or not ready:
            raise NoRoom()
        return min(ready, key=lambda n: (len(self.nodes[n].runtimes), n))

    def accepts(self, node_id: str | None) -> bool:
        return node_id not in self.lost and node_id not in self.draining

    def address(self, node_id: str | None, slot: int) -> str:
        return self.nodes[node_id or ""].address(slot)

    def via(self, node_id: str | None) -> tuple[str, str] | None:
        return None

    async def members(self) -> dict[str | None, FakeNode]:
        return {n: node for n, node in self.nodes.items() if n not in self.lost}


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[SandboxService, TwoNodes, str]]:
    settings = Settings(data_dir=tmp_path, subnet="10.254.0.0/24")
    db, org_id = await seeded(settings.db_url, "fleet-test", [])
    fleet = TwoNodes()
    try:
        yield SandboxService(db, fleet, settings), fleet, org_id
    finally:
        await db.close()


async def test_sandboxes_go_where_placed_and_calls_follow_them(
        two: tuple[SandboxService, TwoNodes, str]) -> None:
    service, fleet, org = two
    a = await service.create(org, CreateSpec(template="base"))
    b = await service.create(org, CreateSpec(template="base"))
    assert (a.node_id, b.node_id) == ("a", "b")
    assert a.id in fleet.nodes["a"].runtimes and b.id in fleet.nodes["b"].runtimes
    # Each node's slots are its own: both may hand out the same one.
    assert a.ip_slot == b.ip_slot == 1
    await service.pause(org, b.id)
    assert b.id in fleet.nodes["b"].snapshots and "pause " + b.id not in fleet.nodes["a"].calls
    await service.delete(org, a.id)
    assert "forget " + a.id in fleet.nodes["a"].calls
    assert "forget " + a.id not in fleet.nodes["b"].calls


async def test_no_room_anywhere_changes_nothing(two: tuple[SandboxService, TwoNodes, str]) -> None:
    service, fleet, org = two
    fleet.full = True
    with pytest.raises(NoRoom):
        await service.create(org, CreateSpec(template="base"))
    assert await service.list(org) == []


async def test_a_lost_node_keeps_its_sandboxes(two: tuple[SandboxService, TwoNodes, str]) -> None:
    service, fleet, org = two
    a = await service.create(org, CreateSpec(template="base"))
    b = await service.create(org, CreateSpec(template="base"))
    fleet.lost.add("b")
    await service.reconcile()
    # b's sandbox is not marked: its node did not answer, which is not "gone".
    assert (await service.get(org, b.id)).state == "running"
    assert (await service.get(org, a.id)).state == "running"
    with pytest.raises(NodeGone):
        await service.pause(org, b.id)
    assert (await service.get(org, b.id)).state == "running"
    # A new sandbox goes to the node that is there.
    c = await service.create(org, CreateSpec(template="base"))
    assert c.node_id == "a"
    fleet.lost.clear()
    paused = await service.pause(org, b.id)
    assert paused.state == "paused"
    # A sandbox of a lost node can still be deleted; the node, back, drops it.
    fleet.lost.add("b")
    assert (await service.delete(org, b.id)).state == "deleted"
    fleet.lost.clear()
    await service.reconcile()
    assert b.id not in fleet.nodes["b"].snapshots and b.id not in fleet.nodes["b"].slots


async def test_a_paused_sandbox_resumes_on_another_node_once_its_own_drains(
        two: tuple[SandboxService, TwoNodes, str]) -> None:
    service, fleet, org = two
    a = await service.create(org, CreateSpec(template="base"))
    await service.pause(org, a.id)
    # The snapshot is on storage both nodes read.
    fleet.nodes["b"].snapshots.add(a.id)
    fleet.draining.add("a")
    resumed, did = await service.resume(org, a.id)
    assert did and resumed.node_id == "b" and resumed.state == "running"
    assert resumed.ip_slot == fleet.nodes["b"].slots[a.id]
    assert a.id not in fleet.nodes["a"].slots
    assert fleet.nodes["b"].plans[a.id].envd_token == a.envd_token


async def test_the_store_refuses_a_transition_the_lifecycle_does_not_allow(core: Core) -> None:
    row = await core.service.create(core.org_id, CreateSpec(template="base"))
    with pytest.raises(repo.IllegalTransition):
        async with core.db.transaction() as s:
            await repo.set_state(s, row.id, "running", "paused")
    assert (await core.service.get(None, row.id)).state == "running"
    assert await _events(core.db, row.id) == [(None, "starting"), ("starting", "running")]
