"""The egress audit log: events from the resolver, the proxy and the
kernel's packet log, written to the store in batches by one background
task, so the data path never waits on the database; and the reads behind
`GET /v1/sandbox/{id}/audit`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.store.db import Database
from sbx.store.models import EgressAudit, GuardrailUsage, Sandbox

log = logging.getLogger(__name__)

MAX_PATH = 2048
DEFAULT_RETENTION_DAYS = 30


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AuditEvent:
    sandbox_id: str
    protocol: str  # tcp, udp, icmp, dns, http, https, tls
    decision: str  # allow, deny
    rule: str
    host: str | None = None
    ip: str | None = None
    port: int | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    at: datetime = field(default_factory=_now)
    # Guardrail findings (kinds and counts) and the checks made: each
    # request scanned for PII, each response scored, is one check.
    findings: dict[str, Any] | None = None
    guard_checks: int = 0
    request_body: str | None = None
    response_body: str | None = None

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        del data["guard_checks"]
        if data["path"] is not None:
            data["path"] = data["path"][:MAX_PATH]
        if data["host"] is not None:
            data["host"] = data["host"][:255]
        if data["method"] is not None:
            data["method"] = data["method"][:16]
        data["rule"] = data["rule"][:120]
        return data


AuditSink = Callable[[AuditEvent], None]


def discard(_event: AuditEvent) -> None:
    """A sink for a node agent without a store (admin teardown)."""


class AuditWriter:
    """Collects events in memory and writes them every flush_s (or every
    max_batch) in one transaction. A full queue drops events and counts
    them, rather than slow a sandbox's traffic."""

    def __init__(self, db: Database, flush_s: float = 0.25, max_batch: int = 1000,
                 max_queue: int = 50_000) -> None:
        self.db = db
        # (record?, retention days) of a sandbox's events, from its security
        # policy; set by the platform once the node agent exists.
        self.settings_for: Callable[[str], tuple[bool, int]] = (
            lambda _id: (True, DEFAULT_RETENTION_DAYS))
        self.flush_s = flush_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.dropped = 0
        self._buf: list[AuditEvent] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def submit(self, event: AuditEvent) -> None:
        if len(self._buf) >= self.max_queue:
            self.dropped += 1
            return
        self._buf.append(event)
        if len(self._buf) >= self.max_batch:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="egress-audit")

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("writing the egress audit failed; will retry")
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        while self._buf:
            batch, self._buf = self._buf[: self.max_batch], self._buf[self.max_batch :]
            if self.dropped:
                log.warning("egress audit queue was full: %d events dropped", self.dropped)
                self.dropped = 0
            rows = []
            checks: Counter[str] = Counter()
            for e in batch:
                record, days = self.settings_for(e.sandbox_id)
                if e.guard_checks:
                    checks[e.sandbox_id] += e.guard_checks
                if record:
                    row = e.row()
                    row["expires_at"] = e.at + timedelta(days=days)
                    rows.append(row)
            try:
                async with self.db.transaction() as s:
                    if rows:
                        await s.execute(insert(EgressAudit), rows)
                    if checks:
                        await _count_checks(s, checks, batch[0].at)
            except Exception:
                self._buf = batch + self._buf
                raise


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
        res = await s.execute(
            update(GuardrailUsage)
            .where(GuardrailUsage.org_id == org_id, GuardrailUsage.day == day)
            .values(checks=GuardrailUsage.checks + n)
        )
        if res.rowcount == 0:  # type: ignore[attr-defined]
            s.add(GuardrailUsage(org_id=org_id, day=day, checks=n))


async def purge_expired(db: Database, now: datetime | None = None) -> int:
    """Delete audit rows past their retention; answers how many."""
    async with db.transaction() as s:
        now = now or _now()
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


def entry_out(row: EgressAudit) -> dict[str, Any]:
    out = {
        "id": row.id,
        "time": row.at.isoformat().replace("+00:00", "Z"),
        "sandbox_id": row.sandbox_id,
        "protocol": row.protocol,
        "host": row.host,
        "ip": row.ip,
        "port": row.port,
        "method": row.method,
        "path": row.path,
        "status": row.status,
        "bytes_up": row.bytes_up,
        "bytes_down": row.bytes_down,
        "decision": row.decision,
        "rule": row.rule,
        "findings": row.findings or {},
    }
    if row.request_body is not None:
        out["request_body"] = row.request_body
    if row.response_body is not None:
        out["response_body"] = row.response_body
    return out


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
