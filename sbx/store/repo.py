"""Queries, and nothing else: rules live in sbx.core."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.shared.lifecycle import SandboxState, can_transition
from sbx.store.db import lock_key
from sbx.store.models import ApiKey, Base, Org, Sandbox, SandboxEvent, Template


def now() -> datetime:
    return datetime.now(UTC)


# -- organisations and keys ----------------------------------------------------
async def org_by_name(s: AsyncSession, name: str) -> Org | None:
    return (await s.execute(select(Org).where(Org.name == name))).scalar_one_or_none()


async def org_by_id(s: AsyncSession, org_id: str) -> Org | None:
    return await s.get(Org, org_id)


async def lock_org(s: AsyncSession, org_id: str) -> Org | None:
    """The organisation, locked until the transaction ends: what is read
    under it (live sandboxes, recent creates, a balance) still holds when
    the transaction writes, whichever process runs the others. PostgreSQL:
    its row, FOR NO KEY UPDATE (rows that merely refer to the organisation,
    such as ledger entries, are still written meanwhile); SQLite: the
    database's write lock."""
    if (await s.connection()).dialect.name == "sqlite":
        await write_lock(s, "org")
    q = (select(Org).where(Org.id == org_id).with_for_update(key_share=True)
         .execution_options(populate_existing=True))
    return (await s.execute(q)).scalar_one_or_none()


async def first_org(s: AsyncSession) -> Org | None:
    return (await s.execute(select(Org).order_by(Org.created_at).limit(1))).scalar_one_or_none()


async def orgs(s: AsyncSession) -> Sequence[Org]:
    return (await s.execute(select(Org).order_by(Org.created_at, Org.name))).scalars().all()


async def key_by_hash(s: AsyncSession, key_hash: str) -> tuple[ApiKey, Org] | None:
    """A key and its organisation, revoked and expired ones too (the caller
    tells them apart)."""
    q = select(ApiKey, Org).join(Org, ApiKey.org_id == Org.id).where(ApiKey.key_hash == key_hash)
    row = (await s.execute(q)).tuples().one_or_none()
    return (row[0], row[1]) if row is not None else None


async def keys(s: AsyncSession, org_id: str | None = None) -> Sequence[tuple[ApiKey, str]]:
    """Keys with their organisation's name, oldest first; every
    organisation's with org_id None."""
    q = (select(ApiKey, Org.name).join(Org, ApiKey.org_id == Org.id)
         .order_by(ApiKey.created_at, ApiKey.id))
    if org_id is not None:
        q = q.where(ApiKey.org_id == org_id)
    return (await s.execute(q)).tuples().all()


async def keys_matching(s: AsyncSession, id_or_prefix: str) -> Sequence[tuple[ApiKey, str]]:
    """Keys whose id is id_or_prefix, or else whose prefix starts with it."""
    q = select(ApiKey, Org.name).join(Org, ApiKey.org_id == Org.id)
    exact = (await s.execute(q.where(ApiKey.id == id_or_prefix))).tuples().all()
    if exact:
        return exact
    # startswith(autoescape): `_` and `%` in the text match only themselves.
    q = q.where(ApiKey.prefix.startswith(id_or_prefix, autoescape=True)).order_by(ApiKey.id)
    return (await s.execute(q)).tuples().all()


# -- templates ------------------------------------------------------------------
async def template_by_name(s: AsyncSession, name: str, org_id: str) -> Template | None:
    q = select(Template).where(
        Template.name == name,
        (Template.org_id.is_(None)) | (Template.org_id == org_id),
    )
    return (await s.execute(q)).scalar_one_or_none()


async def template_by_id(s: AsyncSession, template_id: str) -> Template | None:
    return await s.get(Template, template_id)


# -- sandboxes --------------------------------------------------------------------
async def count_in_states(s: AsyncSession, org_id: str, states: Iterable[str]) -> int:
    q = select(func.count()).select_from(Sandbox).where(
        Sandbox.org_id == org_id, Sandbox.state.in_(list(states))
    )
    return int((await s.execute(q)).scalar_one())


async def sandbox(s: AsyncSession, sandbox_id: str) -> Sandbox | None:
    return await s.get(Sandbox, sandbox_id)


async def sandboxes(
    s: AsyncSession, org_id: str | None, states: Iterable[str] | None = None
) -> Sequence[Sandbox]:
    q = select(Sandbox).order_by(Sandbox.created_at)
    if org_id is not None:
        q = q.where(Sandbox.org_id == org_id)
    if states is not None:
        q = q.where(Sandbox.state.in_(list(states)))
    return (await s.execute(q)).scalars().all()


async def due_for_timeout(s: AsyncSession, at: datetime, states: Iterable[str]) -> Sequence[str]:
    q = select(Sandbox.id).where(
        Sandbox.timeout_at.is_not(None),
        Sandbox.timeout_at <= at,
        Sandbox.state.in_(list(states)),
    )
    return (await s.execute(q)).scalars().all()


class IllegalTransition(ValueError):
    """A state change the lifecycle does not allow (a bug, not bad input)."""


async def set_state(
    s: AsyncSession, sandbox_id: str, src: str, dst: str, detail: str | None = None
) -> bool:
    """Compare-and-set of a sandbox's state, with its event row, so two
    writers never both win a transition. A transition the lifecycle does
    not allow (shared/lifecycle.py) is refused here, the one place every
    state change passes."""
    if not can_transition(SandboxState(src), SandboxState(dst)):
        raise IllegalTransition(f"sandbox {sandbox_id}: {src} -> {dst} is not a transition")
    values: dict[str, object] = {"state": dst}
    if dst in ("deleted", "killed"):
        values["ended_at"] = now()
        values["timeout_at"] = None
    res = await s.execute(
        update(Sandbox)
        .where(Sandbox.id == sandbox_id, Sandbox.state == src)
        .values(**values)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    s.add(SandboxEvent(sandbox_id=sandbox_id, from_state=src, to_state=dst, at=now(),
                       detail=detail))
    return True


async def last_transition(s: AsyncSession, sandbox_ids: Sequence[str]) -> dict[str, datetime]:
    """When each sandbox last changed state."""
    if not sandbox_ids:
        return {}
    q = (select(SandboxEvent.sandbox_id, func.max(SandboxEvent.at))
         .where(SandboxEvent.sandbox_id.in_(list(sandbox_ids)))
         .group_by(SandboxEvent.sandbox_id))
    return {sid: at for sid, at in (await s.execute(q)).tuples().all() if at is not None}


async def set_network_policy(s: AsyncSession, sandbox_id: str, states: Sequence[str],
                             policy: dict[str, Any]) -> bool:
    """The sandbox's stored network policy, if it is in one of states."""
    res = await s.execute(
        update(Sandbox)
        .where(Sandbox.id == sandbox_id, Sandbox.state.in_(list(states)))
        .values(network_policy=policy)
    )
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def add_event(s: AsyncSession, sandbox_id: str, src: str | None, dst: str,
              detail: str | None = None) -> None:
    s.add(SandboxEvent(sandbox_id=sandbox_id, from_state=src, to_state=dst, at=now(),
                       detail=detail))


async def pooled(s: AsyncSession, org_id: str, template_id: str, vcpu: int, memory_mib: int,
                 states: Iterable[str], to_claim: bool = False) -> Sequence[Sandbox]:
    """The warm pool's sandboxes of one template and size, oldest first.
    to_claim: locked for the caller's transaction, without those another
    create is claiming (PostgreSQL; SQLite has one writer anyway)."""
    q = select(Sandbox).where(
        Sandbox.org_id == org_id, Sandbox.template_id == template_id,
        Sandbox.vcpu == vcpu, Sandbox.memory_mib == memory_mib,
        Sandbox.state.in_(list(states)),
    ).order_by(Sandbox.created_at)
    if to_claim:
        q = q.with_for_update(skip_locked=True)
    return (await s.execute(q)).scalars().all()


async def insert_or(s: AsyncSession, model: type[Base]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT of the session's dialect, for ON CONFLICT (both have it,
    spelled by each dialect's own construct)."""
    if (await s.connection()).dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


async def write_lock(s: AsyncSession, name: str) -> None:
    """Serialise the caller's transaction, until it ends, with every other
    one taking the lock `name`, in any process: what it reads before it
    writes cannot change meanwhile (two metering passes would both charge
    the same seconds).

    PostgreSQL: a transaction-level advisory lock on the name. SQLite: the
    database's one write lock (every name shares it), taken at once:
    pysqlite begins a transaction only at the first write, so without it a
    read-then-write transaction could see its reads changed by another
    writer first. Others wait (busy_timeout)."""
    conn = await s.connection()
    if conn.dialect.name == "postgresql":
        await s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})
        return
    raw = await conn.get_raw_connection()
    # Already written in this transaction: the lock is held.
    if not getattr(raw.driver_connection, "in_transaction", False):
        await s.execute(text("BEGIN IMMEDIATE"))
