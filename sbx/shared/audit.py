"""An egress audit event: what the node's resolver, proxy and packet log
report of a sandbox's traffic, and what the control plane stores. Shared,
so the node emits events without knowing the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

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
    # From the sandbox's security policy, stamped by the node as the event
    # leaves it: whether to keep the event, and for how many days.
    record: bool = True
    retention_days: int = DEFAULT_RETENTION_DAYS

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("guard_checks", "record", "retention_days"):
            del data[name]
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
    """A sink for a node that keeps no audit (admin teardown)."""
