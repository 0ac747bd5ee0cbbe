"""The node interface over HTTP/JSON: the bodies both ends agree on.

Every call is `POST /node/v1/<name>` with a JSON body and a JSON answer
(GET-like reads are POSTs too: one shape, no query strings to escape),
authenticated by the node's control key as `Authorization: Bearer …`. A
failure answers 4xx/5xx with `{"error": {"kind", "message"}}`: kind
`start_failed` is the contract's StartFailed, anything else NodeError.
`start` streams NDJSON: `{"up": bool}` once the runtime is up (the caller
marks the sandbox running meanwhile), then `{"done": bool}` or
`{"error": …}`. See docs/architecture.md ("The node interface")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sbx.nodeapi.contract import SandboxPlan
from sbx.shared.policy import NetworkPolicy
from sbx.shared.security import SecurityPolicy

PREFIX = "/node/v1"
# A request for a sandbox's port, sent by the control plane's gateway to the
# sandbox's node (with E2b-Sandbox-Id and E2b-Sandbox-Port), carries the
# node's control key in this header; the node forwards it to the sandbox.
NODE_KEY_HEADER = b"x-sbx-node-key"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanBody(_Body):
    id: str
    rootfs: str
    slot: int
    vcpu: int
    memory_mib: int
    disk_mib: int
    env: dict[str, str]
    envd_token: str
    init: dict[str, Any] | None = None
    network_policy: NetworkPolicy
    security: SecurityPolicy | None = None
    from_snapshot: bool = True

    @classmethod
    def of(cls, plan: SandboxPlan) -> PlanBody:
        return cls(id=plan.id, rootfs=str(plan.rootfs), slot=plan.slot, vcpu=plan.vcpu,
                   memory_mib=plan.memory_mib, disk_mib=plan.disk_mib, env=plan.env,
                   envd_token=plan.envd_token, init=plan.init,
                   network_policy=plan.network_policy, security=plan.security,
                   from_snapshot=plan.from_snapshot)

    def plan(self) -> SandboxPlan:
        return SandboxPlan(id=self.id, rootfs=Path(self.rootfs), slot=self.slot, vcpu=self.vcpu,
                           memory_mib=self.memory_mib, disk_mib=self.disk_mib, env=self.env,
                           envd_token=self.envd_token, init=self.init,
                           network_policy=self.network_policy, security=self.security,
                           from_snapshot=self.from_snapshot)


class Holder(_Body):
    holder: str


class Slot(_Body):
    slot: int


class SandboxRef(_Body):
    sandbox_id: str


class AliveQuery(_Body):
    sandbox_id: str
    slot: int


class PauseBody(_Body):
    sandbox_id: str
    slot: int
    envd_token: str


class AdoptBody(_Body):
    plan: PlanBody
    pool_token: str


class ReconcileBody(_Body):
    keep: dict[str, int | None]
    in_flight: list[str] = []


class Shape(_Body):
    rootfs: str
    vcpu: int
    memory_mib: int
    disk_mib: int


class Claim(_Body):
    id: str
    slot: int


class TemplatePath(_Body):
    path: str


class PrepareBody(_Body):
    rootfs: str
    vcpu: int
    memory_mib: int
    ready_s: float = 60.0
    strict: bool = False


class PolicyBody(_Body):
    sandbox_id: str
    policy: NetworkPolicy


class SyncBody(_Body):
    sandbox_id: str
    slot: int
    policy: NetworkPolicy
    security: SecurityPolicy | None = None
    envd_token: str
    rootfs: str


class Flag(_Body):
    value: bool


class State(_Body):
    state: str


class Size(_Body):
    size: int


class Ids(_Body):
    ids: list[str]


class MaybeClaim(_Body):
    claim: Claim | None = None


class Done(_Body):
    ok: bool = True


class ErrorBody(_Body):
    kind: str
    message: str


class ErrorAnswer(_Body):
    error: ErrorBody
