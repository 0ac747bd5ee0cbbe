"""The node interface's contract, held against both implementations: the
agent in process (`sbx server`'s) and the same agent over the wire
(sbx/node/service.py served on loopback, reached through
sbx/nodeapi/client.py). Real runsc sandboxes, netns and nftables; each
test ends with nothing of its node left on the host."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from sbx.config import Settings
from sbx.node.agent import NodeAgent
from sbx.node.service import SandboxForwarder, node_app
from sbx.nodeapi.client import NodeError, RemoteNode
from sbx.nodeapi.contract import Node, RuntimeState, SandboxPlan, StartFailed
from sbx.shared.audit import AuditEvent
from sbx.shared.policy import NetworkPolicy, PolicyMode
from tests.integration.server import TEMPLATES, Server, free_port, free_subnet, leaks

pytestmark = pytest.mark.integration


@dataclass
class Under:
    node: Node
    agent: NodeAgent
    rootfs: Path
    control_key: str = ""


@contextlib.asynccontextmanager
async def _served(agent: NodeAgent, key: str) -> AsyncIterator[str]:
    port = free_port()
    def locate(sandbox_id: str) -> str | None:
        slot = agent.slots.of(sandbox_id)
        return agent.address(slot) if slot is not None else None

    app = node_app(agent, key, locate)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        if isinstance(app, SandboxForwarder):
            await app.aclose()


@contextlib.asynccontextmanager
async def _node(kind: str) -> AsyncIterator[Under]:
    rootfs = TEMPLATES / "base" / "rootfs"
    data = Path(f"/var/tmp/sbx-node-{uuid.uuid4().hex[:8]}")
    settings = Settings(data_dir=data, subnet=free_subnet(22), templates_path=TEMPLATES,
                        spare_runtimes=1, spare_disks=0)
    events: list[AuditEvent] = []
    agent = NodeAgent(settings, audit=events.append, reap_orphans=False)
    try:
        await agent.setup()
        if kind == "in-process":
            yield Under(agent, agent, rootfs)
        else:
            key = secrets.token_urlsafe(24)
            async with _served(agent, key) as url:
                remote = RemoteNode(url, key, settings.subnet)
                try:
                    yield Under(remote, agent, rootfs, key)
                finally:
                    await remote.close()
    finally:
        await agent.shutdown_all()
        await agent.close()
        shutil.rmtree(data, ignore_errors=True)
        assert leaks(settings.node_tag) == {}


@pytest.fixture(params=["in-process", "remote"])
async def under(request: pytest.FixtureRequest, sbx_server: Server) -> AsyncIterator[Under]:
    # sbx_server: the session's server has built the base template into
    # the shared cache (and its template snapshots).
    async with _node(request.param) as u:
        yield u


def _plan(u: Under, sandbox_id: str, slot: int, **kw: object) -> SandboxPlan:
    return SandboxPlan(id=sandbox_id, rootfs=kw.pop("rootfs", u.rootfs),  # type: ignore[arg-type]
                       slot=slot, vcpu=1, memory_mib=512, disk_mib=512, env={"WHO": "contract"},
                       envd_token="tok-" + sandbox_id, **kw)  # type: ignore[arg-type]


async def test_slots_are_the_nodes_own(under: Under) -> None:
    node = under.node
    a = await node.reserve_slot("sbx-slota000")
    b = await node.reserve_slot("sbx-slotb000")
    assert a != b and await node.reserve_slot("sbx-slota000") == a
    assert node.address(a) == under.agent.addressing(a).sandbox_ip
    await node.release_slot("sbx-slota000")
    assert await node.reserve_slot("sbx-slotc000") == a
    for holder in ("sbx-slotb000", "sbx-slotc000"):
        await node.release_slot(holder)


async def test_a_sandbox_lives_pauses_resumes_and_goes(under: Under) -> None:
    node = under.node
    sid = "sbx-" + uuid.uuid4().hex[:8]
    slot = await node.reserve_slot(sid)
    ups: list[bool] = []

    async def on_up(from_snapshot: bool) -> None:
        ups.append(from_snapshot)

    assert await node.prepare_template(under.rootfs, 1, 512) is True
    assert await node.start(_plan(under, sid, slot), on_up) is True
    assert ups == [True]
    assert await node.runtime_state(sid) == RuntimeState.RUNNING
    assert await node.is_alive(sid, slot)
    await node.set_policy(sid, NetworkPolicy(mode=PolicyMode.DENY_ALL))
    assert under.agent.egress.policy_of(sid) == NetworkPolicy(mode=PolicyMode.DENY_ALL)
    # The store's policy again (what a restarted control plane does).
    changed = await node.sync_policy(sid, slot, NetworkPolicy(mode=PolicyMode.ALLOW_ALL), None,
                                     "tok-" + sid, under.rootfs)
    assert changed and not await node.sync_policy(
        sid, slot, NetworkPolicy(mode=PolicyMode.ALLOW_ALL), None, "tok-" + sid, under.rootfs)

    paused = await node.pause(sid, slot, "tok-" + sid)
    assert paused.size > 0 and await node.snapshot_sealed(sid)
    assert await node.runtime_state(sid) == RuntimeState.MISSING
    await node.resume(_plan(under, sid, slot))
    assert await node.is_alive(sid, slot)
    await node.discard_spent(sid)
    assert not await node.snapshot_sealed(sid)
    await node.forget(sid)
    assert await node.runtime_state(sid) == RuntimeState.MISSING
    # Its slot is free again.
    assert await node.reserve_slot("sbx-after000") == slot
    await node.release_slot("sbx-after000")


async def test_a_failed_start_leaves_nothing_and_says_so(under: Under) -> None:
    node = under.node
    sid = "sbx-" + uuid.uuid4().hex[:8]
    slot = await node.reserve_slot(sid)
    with pytest.raises(StartFailed):
        await node.start(_plan(under, sid, slot, rootfs=Path("/nonexistent/rootfs"),
                               from_snapshot=False))
    assert await node.runtime_state(sid) == RuntimeState.MISSING
    # The slot went with it.
    assert await node.reserve_slot("sbx-next0000") == slot
    await node.release_slot("sbx-next0000")


async def test_reconcile_removes_leftovers_and_names_the_dead(under: Under) -> None:
    node = under.node
    sid = "sbx-" + uuid.uuid4().hex[:8]
    slot = await node.reserve_slot(sid)
    await node.start(_plan(under, sid, slot))
    dead = await node.reconcile({sid: slot, "sbx-gone0000": 9})
    assert dead == {"sbx-gone0000"}
    # The kept slot of a sandbox with nothing on the host is the node's now.
    assert await node.reserve_slot("sbx-other000") not in (slot, 9)
    await node.release_slot("sbx-other000")
    # No record keeps it, but its slot was reserved moments ago: a create
    # under way (another replica's, perhaps) is left alone...
    assert await node.reconcile({}) == set()
    assert await node.runtime_state(sid) == RuntimeState.RUNNING
    # ...and removed once its slot is let go.
    await node.release_slot(sid)
    assert await node.reconcile({}) == set()
    assert await node.runtime_state(sid) == RuntimeState.MISSING


async def test_a_spare_is_claimed_put_back_and_started_into(under: Under) -> None:
    node = under.node
    await node.want_spares(under.rootfs, 1, 512, 512)
    claim = None
    for _ in range(300):
        claim = await node.take_spare(under.rootfs, 1, 512, 512)
        if claim is not None:
            break
        await asyncio.sleep(0.1)
    assert claim is not None
    await node.put_back(claim)
    again = await node.take_spare(under.rootfs, 1, 512, 512)
    assert again == claim
    assert await node.start(_plan(under, claim.id, claim.slot)) is True
    assert await node.is_alive(claim.id, claim.slot)
    await node.forget(claim.id)


async def test_the_node_forwards_the_gateways_requests_to_its_sandboxes(
        sbx_server: Server) -> None:
    async with _node("remote") as under:
        assert isinstance(under.node, RemoteNode)
        node = under.node
        sid = "sbx-" + uuid.uuid4().hex[:8]
        slot = await node.reserve_slot(sid)
        await node.start(_plan(under, sid, slot))
        try:
            url = f"{node.url}/health"
            async with httpx.AsyncClient(timeout=10) as client:
                ok = await client.get(url, headers={
                    "E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983",
                    "X-Sbx-Node-Key": under.control_key})
                assert ok.status_code == 204, ok.text
                refused = await client.get(url, headers={
                    "E2b-Sandbox-Id": sid, "X-Sbx-Node-Key": "not-the-key"})
                assert refused.status_code == 401
                elsewhere = await client.get(url, headers={
                    "E2b-Sandbox-Id": "sbx-nothere0", "X-Sbx-Node-Key": under.control_key})
                assert elsewhere.status_code == 404
        finally:
            await node.forget(sid)


async def test_the_wire_refuses_a_caller_without_the_control_key(sbx_server: Server) -> None:
    async with _node("remote") as under:
        assert isinstance(under.node, RemoteNode)
        wrong = RemoteNode(under.node.url, "not-the-key", under.agent.settings.subnet)
        try:
            with pytest.raises(NodeError, match="control key"):
                await wrong.reserve_slot("sbx-intruder")
            async with httpx.AsyncClient() as client:
                resp = await client.post(f"{under.node.url}/node/v1/forget",
                                         json={"sandbox_id": "sbx-x"})
            assert resp.status_code == 401
            # Nothing was reserved by the refused call.
            assert under.agent.slots.holders() == set()
        finally:
            await wrong.close()
