"""The plain values the SDK hands back; no I/O and no behaviour beyond parsing."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
