"""Nodes and join tokens: the queries of a cluster's membership and of
placement (what each node holds against its capacity)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.store.models import JoinToken, NodeRow, Sandbox


async def add_join_token(s: AsyncSession, token_id: str, secret_hash: str, at: datetime) -> None:
    s.add(JoinToken(id=token_id, secret_hash=secret_hash, created_at=at))


async def join_token(s: AsyncSession, token_id: str) -> JoinToken | None:
    return await s.get(JoinToken, token_id)


async def revoke_join_token(s: AsyncSession, token_id: str, at: datetime) -> bool:
    res = await s.execute(update(JoinToken).where(JoinToken.id == token_id,
                                                  JoinToken.revoked_at.is_(None))
                          .values(revoked_at=at))
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


async def join_tokens(s: AsyncSession) -> Sequence[JoinToken]:
    return (await s.execute(select(JoinToken).order_by(JoinToken.created_at))).scalars().all()


async def node(s: AsyncSession, node_id: str) -> NodeRow | None:
    return await s.get(NodeRow, node_id)


async def nodes(s: AsyncSession) -> Sequence[NodeRow]:
    return (await s.execute(select(NodeRow).order_by(NodeRow.id))).scalars().all()


async def upsert_node(s: AsyncSession, row: NodeRow) -> None:
    """A node registering (again: same id, new keys and capacity)."""
    await s.merge(row)


async def heartbeat(s: AsyncSession, node_id: str, at: datetime,
                    info: dict[str, Any] | None) -> bool:
    res = await s.execute(update(NodeRow).where(NodeRow.id == node_id)
                          .values(last_seen=at, info=info))
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


async def set_draining(s: AsyncSession, node_id: str, draining: bool) -> bool:
    res = await s.execute(update(NodeRow).where(NodeRow.id == node_id)
                          .values(draining=draining))
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Load:
    """What a node holds: memory (with the runtime's headroom) and vCPUs of
    the sandboxes running or starting there, disk of every live one."""

    memory_mib: int
    vcpu: int
    disk_mib: int
    sandboxes: int


async def loads(s: AsyncSession, headroom_mib: int, running: Collection[str],
                live: Collection[str]) -> dict[str, Load]:
    """Per node: one aggregate query (placement runs it on every create)."""
    on_host = Sandbox.state.in_(list(running))
    q = (select(
        Sandbox.node_id,
        func.coalesce(func.sum(case((on_host, Sandbox.memory_mib + headroom_mib), else_=0)), 0),
        func.coalesce(func.sum(case((on_host, Sandbox.vcpu), else_=0)), 0),
        func.coalesce(func.sum(Sandbox.disk_mib), 0),
        func.count(),
    ).where(Sandbox.state.in_(list(live)), Sandbox.node_id.is_not(None))
        .group_by(Sandbox.node_id))
    out: dict[str, Load] = {}
    for node_id, mem, vcpu, disk, n in (await s.execute(q)).tuples().all():
        if node_id is not None:
            out[node_id] = Load(int(mem), int(vcpu), int(disk), int(n))
    return out


async def sandbox_ids_by_node(s: AsyncSession, live: Collection[str]) -> dict[str, list[str]]:
    q = select(Sandbox.node_id, Sandbox.id).where(Sandbox.state.in_(list(live)),
                                                  Sandbox.node_id.is_not(None))
    out: dict[str, list[str]] = {}
    for node_id, sandbox_id in (await s.execute(q)).tuples().all():
        if node_id is not None:
            out.setdefault(node_id, []).append(sandbox_id)
    return out
