"""The egress audit log on the control plane's side: events from the
nodes, written to the store in batches by one background task (so a
node's data path never waits on the database), and how an entry reads on
the API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import timedelta
from typing import Any

from sbx.shared.audit import AuditEvent
from sbx.store import audit as audit_repo
from sbx.store.db import Database
from sbx.store.models import EgressAudit

log = logging.getLogger(__name__)


class AuditWriter:
    """Collects events in memory and writes them every flush_s (or every
    max_batch) in one transaction. A full queue drops events and counts
    them, rather than slow a sandbox's traffic."""

    def __init__(self, db: Database, flush_s: float = 0.25, max_batch: int = 1000,
                 max_queue: int = 50_000) -> None:
        self.db = db
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
                if e.guard_checks:
                    checks[e.sandbox_id] += e.guard_checks
                if e.record:
                    row = e.row()
                    row["expires_at"] = e.at + timedelta(days=e.retention_days)
                    rows.append(row)
            try:
                async with self.db.transaction() as s:
                    await audit_repo.insert_batch(s, rows, checks, batch[0].at)
            except Exception:
                self._buf = batch + self._buf
                raise


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
