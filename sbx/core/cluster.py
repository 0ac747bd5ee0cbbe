"""A cluster's membership and placement: nodes join with a token, heartbeat,
drain; the control plane reaches each one over the wire (RemoteNode) and
places new sandboxes on a ready node with room.

Trust, both ways: a node proves itself with its node key (given at
registration; only its hash is stored), and presents nothing else; the
control plane proves itself to a node with that node's control key (the
node refuses any other caller). A join token admits nodes until it is
revoked; revoking it refuses the nodes it admitted at their next call.
Lost is not a stored state: a node silent for `LOST_AFTER_S` is lost when
read, by any replica."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sbx.config import Settings
from sbx.core.errors import Forbidden, NotFound, Unauthorized
from sbx.core.fleet import NodeGone, NoRoom, Shape
from sbx.nodeapi.client import RemoteNode
from sbx.nodeapi.contract import Node
from sbx.shared import ids
from sbx.shared.lifecycle import LIVE, SandboxState
from sbx.store import nodes as node_repo
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import NodeRow

log = logging.getLogger(__name__)
S = SandboxState

LOST_AFTER_S = 15.0
# How long this replica adds its own placements to the loads it last read.
PLACED_FOR_S = 5.0
# Sandboxes that hold a node's memory and CPUs (a paused one holds neither).
ON_HOST = (S.STARTING, S.RUNNING, S.SNAPSHOTTING, S.UNPAUSING, S.POOLED, S.DELETING)


def issue_join_token() -> tuple[str, str, str]:
    """(token id, secret hash, the token as printed: `sbxjoin_<id>.<secret>`)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    return token_id, ids.hash_key(secret), f"sbxjoin_{token_id}.{secret}"


def split_join_token(token: str) -> tuple[str, str]:
    body = token.removeprefix("sbxjoin_")
    token_id, _, secret = body.partition(".")
    if not token.startswith("sbxjoin_") or not token_id or not secret:
        raise Unauthorized("a join token looks like sbxjoin_<id>.<secret>")
    return token_id, secret


@dataclass(frozen=True)
class Registration:
    node_id: str
    url: str
    subnet: str
    vcpu_total: int
    memory_mib_total: int
    disk_mib_total: int


@dataclass(frozen=True)
class Credentials:
    node_id: str
    node_key: str
    control_key: str


@dataclass(frozen=True)
class NodeView:
    id: str
    url: str
    subnet: str
    state: str  # ready, draining, lost
    vcpu_total: int
    memory_mib_total: int
    disk_mib_total: int
    memory_mib_reserved: int
    vcpu_reserved: int
    sandboxes: list[str]


class Cluster:
    """Membership (register, heartbeat, drain, list) and the fleet core
    places sandboxes with (the `Fleet` protocol)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._remotes: dict[str, tuple[str, RemoteNode]] = {}
        self._rows: dict[str, NodeRow] = {}
        self._loads: dict[str, node_repo.Load] = {}
        # Placements this replica made lately (monotonic time, node, load).
        self._placed: list[tuple[float, str, node_repo.Load]] = []
        # One placement at a time in this replica: each sees the last one's.
        self._place_lock = asyncio.Lock()

    # -- membership ---------------------------------------------------------------
    async def register(self, token: str, reg: Registration) -> Credentials:
        token_id, secret = split_join_token(token)
        node_key, control_key = "sbxnode_" + secrets.token_urlsafe(30), secrets.token_urlsafe(30)
        async with self.db.transaction() as s:
            row = await node_repo.join_token(s, token_id)
            if row is None or row.revoked_at is not None or not hmac.compare_digest(
                    row.secret_hash, ids.hash_key(secret)):
                raise Unauthorized("unknown or revoked join token")
            now = repo.now()
            old = await node_repo.node(s, reg.node_id)
            await node_repo.upsert_node(s, NodeRow(
                id=reg.node_id, url=reg.url, subnet=reg.subnet, control_key=control_key,
                node_key_hash=ids.hash_key(node_key), join_token_id=token_id,
                draining=old.draining if old is not None else False,
                vcpu_total=reg.vcpu_total, memory_mib_total=reg.memory_mib_total,
                disk_mib_total=reg.disk_mib_total,
                registered_at=old.registered_at if old is not None else now, last_seen=now,
                info=None))
        log.info("node %s registered at %s (%s)", reg.node_id, reg.url, reg.subnet)
        await self.refresh()
        return Credentials(reg.node_id, node_key, control_key)

    async def authenticate_node(self, node_id: str, key: str | None) -> NodeRow:
        """The node's own call (heartbeat, audit): its key, and its join
        token not revoked."""
        async with self.db.session() as s:
            row = await node_repo.node(s, node_id)
            token = await node_repo.join_token(s, row.join_token_id) if row else None
        if row is None or key is None or not hmac.compare_digest(
                row.node_key_hash, ids.hash_key(key)):
            raise Unauthorized("unknown node or wrong node key")
        if token is None or token.revoked_at is not None:
            raise Forbidden("the join token that admitted this node is revoked")
        return row

    async def heartbeat(self, node_id: str, info: dict[str, Any] | None) -> None:
        async with self.db.transaction() as s:
            await node_repo.heartbeat(s, node_id, repo.now(), info)

    async def drain(self, node_id: str, draining: bool = True) -> NodeView:
        async with self.db.transaction() as s:
            if not await node_repo.set_draining(s, node_id, draining):
                raise NotFound(f"Node {node_id} not found")
        await self.refresh()
        return next(v for v in await self.views() if v.id == node_id)

    async def views(self) -> list[NodeView]:
        async with self.db.session() as s:
            rows = await node_repo.nodes(s)
            loads = await node_repo.loads(s, self.settings.memory_headroom_mib, ON_HOST, LIVE)
            held = await node_repo.sandbox_ids_by_node(s, LIVE)
        out = []
        for row in rows:
            load = loads.get(row.id)
            out.append(NodeView(
                id=row.id, url=row.url, subnet=row.subnet, state=self._state(row),
                vcpu_total=row.vcpu_total, memory_mib_total=row.memory_mib_total,
                disk_mib_total=row.disk_mib_total,
                memory_mib_reserved=load.memory_mib if load else 0,
                vcpu_reserved=load.vcpu if load else 0,
                sandboxes=sorted(held.get(row.id, []))))
        return out

    def _state(self, row: NodeRow) -> str:
        if repo.now() - row.last_seen > timedelta(seconds=LOST_AFTER_S):
            return "lost"
        return "draining" if row.draining else "ready"

    async def refresh(self) -> None:
        """The nodes as the store has them now (any replica may have
        registered one): clients for new ones and new keys."""
        async with self.db.session() as s:
            rows = await node_repo.nodes(s)
            loads = await node_repo.loads(s, self.settings.memory_headroom_mib, ON_HOST, LIVE)
        self._rows = {r.id: r for r in rows}
        self._loads = loads
        # A placement's row is written within moments of it: one a few
        # seconds old is in the loads just read. Until then it counts twice
        # at worst (a node looks fuller than it is, never emptier).
        cut = time.monotonic() - PLACED_FOR_S
        self._placed = [p for p in self._placed if p[0] > cut]
        for row in rows:
            known = self._remotes.get(row.id)
            if known is None or known[0] != row.control_key + row.url:
                if known is not None:
                    await known[1].close()
                self._remotes[row.id] = (row.control_key + row.url,
                                         RemoteNode(row.url, row.control_key, row.subnet))

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("reading the cluster's nodes failed")
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        for _, remote in self._remotes.values():
            await remote.close()
        self._remotes.clear()

    # -- the fleet --------------------------------------------------------------------
    def node(self, node_id: str | None) -> Node:
        row = self._rows.get(node_id or "")
        remote = self._remotes.get(node_id or "")
        if row is None or remote is None:
            raise NodeGone(f"node {node_id} is unknown to this control plane")
        if self._state(row) == "lost":
            raise NodeGone(f"node {node_id} is lost (no heartbeat for {LOST_AFTER_S:.0f} s); "
                           "its sandboxes answer again when it is back")
        return remote[1]

    def address(self, node_id: str | None, slot: int) -> str:
        remote = self._remotes.get(node_id or "")
        if remote is None:
            raise NodeGone(f"node {node_id} is unknown to this control plane")
        return remote[1].address(slot)

    def via(self, node_id: str | None) -> tuple[str, str] | None:
        row = self._rows.get(node_id or "")
        if row is None:
            raise NodeGone(f"node {node_id} is unknown to this control plane")
        return row.url, row.control_key

    def accepts(self, node_id: str | None) -> bool:
        row = self._rows.get(node_id or "")
        return row is not None and self._state(row) == "ready"

    async def members(self) -> dict[str | None, Node]:
        return {node_id: remote for node_id, (_, remote) in self._remotes.items()
                if node_id in self._rows and self._state(self._rows[node_id]) != "lost"}

    async def place(self, shape: Shape) -> str | None:
        """A ready node with room (memory with headroom, vCPUs, disk, times
        the overcommit ratio), preferring one that has the template's
        snapshot and a spare runtime of the shape, then the most free memory."""
        over = self.settings.overcommit
        want_mem = shape.memory_mib + self.settings.memory_headroom_mib
        async with self._place_lock:
            # The nodes and what they hold as last read (every second), plus
            # what this replica placed since: no query on a create's path.
            loads = self._loads_now()
            best: tuple[tuple[int, int, int], str] | None = None
            for row in self._rows.values():
                if self._state(row) != "ready":
                    continue
                load = loads.get(row.id) or node_repo.Load(0, 0, 0, 0)
                free_mem = row.memory_mib_total * over - load.memory_mib
                if free_mem < want_mem or \
                        load.vcpu + shape.vcpu > row.vcpu_total * over or \
                        load.disk_mib + shape.disk_mib > row.disk_mib_total:
                    continue
                info = row.info or {}
                warm = int(shape.rootfs in info.get("template_snapshots", []))
                spare = int(any(sp == [shape.rootfs, shape.vcpu, shape.memory_mib]
                                for sp in info.get("spares", [])))
                score = (spare + warm, warm, int(free_mem))
                if best is None or score > best[0]:
                    best = (score, row.id)
            if best is None:
                raise NoRoom()
            self._placed.append((time.monotonic(), best[1],
                                 node_repo.Load(want_mem, shape.vcpu, shape.disk_mib, 1)))
            return best[1]

    def _loads_now(self) -> dict[str, node_repo.Load]:
        loads = dict(self._loads)
        for _, node_id, add in self._placed:
            was = loads.get(node_id) or node_repo.Load(0, 0, 0, 0)
            loads[node_id] = node_repo.Load(was.memory_mib + add.memory_mib, was.vcpu + add.vcpu,
                                            was.disk_mib + add.disk_mib,
                                            was.sandboxes + add.sandboxes)
        return loads
