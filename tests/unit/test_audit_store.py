"""The audit writer against a real SQLite store: retention fixed per row,
audit off keeps nothing, guardrail checks counted per organisation and day
(and kept when the rows they came with expire)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from sbx.core.audit import AuditWriter
from sbx.shared.audit import AuditEvent
from sbx.store import repo
from sbx.store.audit import guardrail_checks, purge_expired
from sbx.store.db import Database
from sbx.store.models import EgressAudit
from tests.unit.store_rows import seeded


async def _store(url: str) -> tuple[Database, str]:
    return await seeded(url, "audit-test",
                        ["sbx-aaaaaaaa", "sbx-bbbbbbbb"])


async def test_retention_audit_off_and_counted_checks(db_url: str) -> None:
    db, org_id = await _store(db_url)
    try:
        writer = AuditWriter(db)
        settings = {"sbx-aaaaaaaa": (True, 1), "sbx-bbbbbbbb": (False, 30)}
        now = repo.now()
        for sid, (record, days) in settings.items():
            for i in range(3):
                writer.submit(AuditEvent(sid, "https", "allow", "any", host="h.test",
                                         findings={"email": 1} if i == 0 else None,
                                         guard_checks=2, at=now, record=record,
                                         retention_days=days))
        await writer.flush()
        async with db.session() as s:
            rows = (await s.execute(select(EgressAudit))).scalars().all()
        # Audit off: nothing of B is kept, but its checks still count.
        assert {r.sandbox_id for r in rows} == {"sbx-aaaaaaaa"} and len(rows) == 3
        assert all(r.expires_at == now + timedelta(days=1) for r in rows)
        assert rows[0].findings == {"email": 1} and rows[1].findings is None
        day = now.date().isoformat()
        assert await guardrail_checks(db, org_id) == {day: 12}
        # A second batch adds to the day's count.
        writer.submit(AuditEvent("sbx-aaaaaaaa", "http", "allow", "any", guard_checks=1, at=now,
                                 retention_days=1))
        await writer.flush()
        assert await guardrail_checks(db, org_id) == {day: 13}

        # Retention: nothing is due yet; a day later A's rows go, the counts stay.
        assert await purge_expired(db, now) == 0
        assert await purge_expired(db, now + timedelta(days=1, seconds=1)) == 4
        assert await guardrail_checks(db, org_id) == {day: 13}
    finally:
        await db.close()
