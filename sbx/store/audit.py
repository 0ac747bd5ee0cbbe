"""The egress audit's queries: batches of events in, retention out, the
reads behind `GET /v1/sandbox/{id}/audit`, guardrail checks per day."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.shared.audit import DEFAULT_RETENTION_DAYS
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import EgressAudit, GuardrailUsage, Sandbox


async def insert_batch(s: AsyncSession, rows: list[dict[str, Any]], checks: Counter[str],
                       at: datetime) -> None:
    if rows:
        await s.execute(insert(EgressAudit), rows)
    if checks:
        await _count_checks(s, checks, at)


async def _count_checks(s: AsyncSession, checks: Counter[str], at: datetime) -> None:
    """Add guardrail checks to each sandbox's organisation, for the day."""
    day = at.astimezone(UTC).date().isoformat()
    owners = dict((await s.execute(
        select(Sandbox.id, Sandbox.org_id).where(Sandbox.id.in_(list(checks)))
    )).tuples().all())
    per_org: Counter[str] = Counter()
    for sandbox_id, n in checks.items():
        org_id = owners.get(sandbox_id)
        if org_id is not None:
            per_org[org_id] += n
    for org_id, n in per_org.items():
        await add_guardrail_checks(s, org_id, day, n)


async def add_guardrail_checks(s: AsyncSession, org_id: str, day: str, n: int) -> None:
    """Count n more guardrail checks for the organisation's day, in one
    statement (an upsert), so that writers at once never lose a count."""
    new = await repo.insert_or(s, GuardrailUsage)
    stmt = new.values(org_id=org_id, day=day, checks=n, charged=0)
    await s.execute(stmt.on_conflict_do_update(
        index_elements=[GuardrailUsage.org_id, GuardrailUsage.day],
        set_={"checks": GuardrailUsage.checks + stmt.excluded.checks}))


async def purge_expired(db: Database, now: datetime | None = None) -> int:
    """Delete audit rows past their retention; answers how many."""
    async with db.transaction() as s:
        now = now or datetime.now(UTC)
        res = await s.execute(delete(EgressAudit).where(or_(
            EgressAudit.expires_at < now,
            # Rows from before retention was recorded: the default applies.
            and_(EgressAudit.expires_at.is_(None),
                 EgressAudit.at < now - timedelta(days=DEFAULT_RETENTION_DAYS)),
        )))
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


async def guardrail_checks(db: Database, org_id: str) -> dict[str, int]:
    """Guardrail checks of an organisation by UTC day."""
    async with db.session() as s:
        rows = (await s.execute(
            select(GuardrailUsage.day, GuardrailUsage.checks)
            .where(GuardrailUsage.org_id == org_id).order_by(GuardrailUsage.day)
        )).tuples().all()
    return dict(rows)


async def read(db: Database, sandbox_id: str, *, after_id: int | None = None,
               since: datetime | None = None, limit: int = 100) -> Sequence[EgressAudit]:
    """Entries of one sandbox, oldest first: after an entry id (a cursor)
    or from a time on."""
    q = select(EgressAudit).where(EgressAudit.sandbox_id == sandbox_id)
    if after_id is not None:
        q = q.where(EgressAudit.id > after_id)
    if since is not None:
        q = q.where(EgressAudit.at >= since)
    q = q.order_by(EgressAudit.id).limit(limit)
    async with db.session() as s:
        return (await s.execute(q)).scalars().all()
