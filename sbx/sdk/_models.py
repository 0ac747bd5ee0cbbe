"""The plain values the SDK hands back; no I/O and no behaviour beyond parsing."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the control plane describes it."""

    sandbox_id: str
    template_id: str
    state: str
    vcpu: int
    memory_mib: int
    disk_mib: int
    auto_pause: bool
    created_at: datetime | None
    timeout_at: datetime | None
    timeout_min: int | None
    network_policy: dict[str, Any] = field(default_factory=dict)
    envd_access_token: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view, without the access token (it is a secret)."""
        return {
            "id": self.sandbox_id,
            "template_id": self.template_id,
            "state": self.state,
            "vcpu": self.vcpu,
            "memory_mib": self.memory_mib,
            "disk_mib": self.disk_mib,
            "auto_pause": self.auto_pause,
            "network_policy": self.network_policy,
            "created_at": _iso(self.created_at),
            "timeout_min": self.timeout_min,
            "timeout_at": _iso(self.timeout_at),
        }


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left behind. ``error`` is envd's reason when it
    could not run or finish the command normally (e.g. killed by a signal)."""

    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str | None
    tag: str | None


class FileType(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class EntryInfo:
    name: str
    type: FileType | None
    path: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: datetime | None
    symlink_target: str | None = None


@dataclass(frozen=True)
class WriteInfo:
    name: str
    type: FileType | None
    path: str


@dataclass(frozen=True)
class AuditEntry:
    """One egress attempt of a sandbox (a DNS question, a connection, an HTTP
    request), allowed or refused, as the audit log records it.

    ``decision`` is ``allow`` or ``deny`` and ``rule`` what decided it. Fields
    the server adds that this SDK does not know yet are kept in ``extra``.
    """

    id: int
    time: datetime | None
    sandbox_id: str
    protocol: str
    host: str | None
    ip: str | None
    port: int | None
    method: str | None
    path: str | None
    status: int | None
    bytes_up: int
    bytes_down: int
    decision: str
    rule: str | None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        """The entry in the server's JSON shape, unknown fields included."""
        return {
            "id": self.id,
            "time": _iso(self.time),
            "sandbox_id": self.sandbox_id,
            "protocol": self.protocol,
            "host": self.host,
            "ip": self.ip,
            "port": self.port,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "decision": self.decision,
            "rule": self.rule,
            **self.extra,
        }


@dataclass(frozen=True)
class AuditPage:
    """A page of a sandbox's audit log, oldest first. Pass ``next_since`` as
    ``since`` to read on from where it ends (also when it is empty)."""

    sandbox_id: str
    entries: list[AuditEntry]
    next_since: int | str | None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
