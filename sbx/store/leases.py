"""Leases: a duty done by one replica at a time (the timeout loop, metering,
the audit purge, ...). A lease is a row (name, holder, expiry); a replica
takes it when it is free, expired or already its own, by one conditional
UPDATE or INSERT, so of two replicas racing for it one wins, on SQLite and
on PostgreSQL alike. The holder renews it well within its time to live and
gives it up when it stops; a holder that dies loses it when it expires.

Expiry is compared with the callers' clocks: replicas' clocks must agree to
well within the time to live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, or_, select, update

from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Lease


@dataclass(frozen=True)
class Held:
    holder: str
    since: datetime
    expires_at: datetime


async def acquire(db: Database, name: str, holder: str, ttl: timedelta,
                  now: datetime | None = None) -> bool:
    """Take the lease, or extend it when holder has it already; answers
    whether holder has it now (until now + ttl)."""
    if ttl <= timedelta(0):
        raise ValueError("a lease's time to live must be positive")
    now = now or repo.now()
    until = now + ttl
    async with db.transaction() as s:
        # The WHERE is evaluated on the row as it is when the UPDATE gets
        # it: on PostgreSQL a racing UPDATE waits for the other's commit
        # and then finds the lease taken.
        res = await s.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at <= now))
            .values(holder=holder, expires_at=until,
                    acquired_at=case((Lease.holder == holder, Lease.acquired_at), else_=now))
        )
        if res.rowcount == 1:  # type: ignore[attr-defined]
            return True
        new = await repo.insert_or(s, Lease)
        res = await s.execute(
            new.values(name=name, holder=holder, expires_at=until, acquired_at=now)
            .on_conflict_do_nothing(index_elements=[Lease.name])
        )
        return int(res.rowcount) == 1  # type: ignore[attr-defined]


async def release(db: Database, name: str, holder: str) -> bool:
    """Give the lease up (another replica may take it at once); answers
    whether holder had it."""
    async with db.transaction() as s:
        res = await s.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))
        return int(res.rowcount) == 1  # type: ignore[attr-defined]


async def names(db: Database, holder: str) -> list[str]:
    """The leases holder has (expired or not)."""
    async with db.session() as s:
        return list((await s.execute(select(Lease.name).where(Lease.holder == holder)))
                    .scalars())


async def held(db: Database, name: str, now: datetime | None = None) -> Held | None:
    """Who holds the lease, unless nobody does or it has expired."""
    now = now or repo.now()
    async with db.session() as s:
        row = (await s.execute(select(Lease).where(Lease.name == name))).scalar_one_or_none()
    if row is None or row.expires_at <= now:
        return None
    return Held(row.holder, row.acquired_at, row.expires_at)
