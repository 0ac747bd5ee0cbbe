"""Sandbox states and the transitions allowed between them (pure)."""

from __future__ import annotations

from enum import StrEnum


class SandboxState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    SNAPSHOTTING = "snapshotting"
    PAUSED = "paused"
    UNPAUSING = "unpausing"
    DELETING = "deleting"
    DELETED = "deleted"
    # Seed 002: the sandbox was ended by its timeout.
    KILLED = "killed"
    # Restored and idle in the warm pool, owned by no user yet.
    POOLED = "pooled"


S = SandboxState

ALLOWED: dict[SandboxState, frozenset[SandboxState]] = {
    S.STARTING: frozenset({S.RUNNING, S.POOLED, S.DELETING, S.DELETED}),
    S.POOLED: frozenset({S.RUNNING, S.DELETING, S.DELETED}),
    S.RUNNING: frozenset({S.SNAPSHOTTING, S.DELETING}),
    S.SNAPSHOTTING: frozenset({S.PAUSED, S.RUNNING, S.DELETING}),
    S.PAUSED: frozenset({S.UNPAUSING, S.DELETING}),
    S.UNPAUSING: frozenset({S.RUNNING, S.PAUSED, S.DELETING}),
    S.DELETING: frozenset({S.DELETED, S.KILLED}),
    S.DELETED: frozenset(),
    S.KILLED: frozenset(),
}

# States in which a sandbox holds host resources (and counts against its
# organisation's limit; pooled ones belong to the pool's own organisation).
LIVE: frozenset[SandboxState] = frozenset(
    {S.STARTING, S.RUNNING, S.SNAPSHOTTING, S.PAUSED, S.UNPAUSING, S.DELETING, S.POOLED}
)
TERMINAL: frozenset[SandboxState] = frozenset({S.DELETED, S.KILLED})


def can_transition(src: SandboxState, dst: SandboxState) -> bool:
    return dst in ALLOWED[src]
