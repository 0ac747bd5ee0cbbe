"""Answer bodies of the routes outside seed 000's (`/sandboxes`, audit,
usage, admin, templates, health), declared so that the OpenAPI document is
the contract. The routes still build their answers as they always did
(the wire is unchanged); tests validate real answers against these models,
which forbid undeclared fields, so the two cannot drift apart."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(_Answer):
    status: Literal["ok"]
    version: str


class HealthDown(_Answer):
    code: Literal[503]
    message: str
    status: Literal["starting", "failed"]


class FieldErrorOut(_Answer):
    field: str
    error: str


class ErrorV1(_Answer):
    """Errors of seed 000's surface (`/v1/...`)."""

    message: str
    # Validation errors (400): each failing field.
    errors: list[FieldErrorOut] | None = None


class Error(_Answer):
    """Errors of every other surface (seed 002, E2B, admin, templates)."""

    code: int
    message: str


class Lifecycle(_Answer):
    autoResume: bool
    onTimeout: Literal["kill", "pause"]


class Sandbox002(_Answer):
    """A sandbox on `/sandboxes`: seed 002's names, then E2B's. The tokens
    are in the answers of create, get, connect and resume, not in lists."""

    id: str
    template_id: str
    name: str
    state: str
    internal_ip: str | None
    envd_port: int
    created_at: str
    metadata: dict[str, str]
    timeout: int
    on_timeout: Literal["kill", "pause"]
    network: dict[str, Any]
    security: dict[str, Any] | str | None
    vcpu: int
    memory_mib: int
    disk_mib: int
    sandboxID: str
    templateID: str
    alias: str
    clientID: str
    envdVersion: str
    startedAt: str
    endAt: str
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    trafficAccessToken: None
    domain: None
    lifecycle: Lifecycle
    envd_access_token: str | None = None
    envdAccessToken: str | None = None
    security_proxy_token: str | None = None


class AuditEntry(_Answer):
    id: int
    time: str
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
    rule: str
    findings: dict[str, Any]
    # Only with audit.include_bodies.
    request_body: str | None = None
    response_body: str | None = None


class AuditPage(_Answer):
    sandbox_id: str
    entries: list[AuditEntry]
    # The last entry's id; without entries, the `since` that was sent.
    next_since: int | str | None


class UsageLine(_Answer):
    vcpu_seconds: float
    gib_seconds: float
    guardrail_checks: int
    sandbox_charges: str
    guardrails_charges: str
    credits_added: str


class UsageDay(UsageLine):
    day: str


class UsageSandbox(UsageLine):
    sandbox_id: str


class WalletOut(_Answer):
    wallet: Literal["sandbox", "guardrails"]
    enforced: bool
    balance: str


class UsageOut(_Answer):
    organization: str
    from_: str = Field(alias="from")
    to: str
    wallets: list[WalletOut]
    by_day: list[UsageDay]
    by_sandbox: list[UsageSandbox]
    totals: UsageLine


class OrgOut(_Answer):
    id: str
    name: str
    tier: str
    created_at: str


class KeyOut(_Answer):
    id: str
    org: str
    prefix: str
    role: Literal["member", "admin"]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    state: Literal["active", "expired", "revoked"]


class KeyCreated(KeyOut):
    key: str


class OrgCreated(OrgOut):
    key: KeyCreated


class LatestBuild(_Answer):
    build_id: str
    version: int
    status: str


class BuildOut(_Answer):
    build_id: str
    template_id: str
    name: str
    version: int
    status: str
    error: str | None
    error_line: int | None
    vcpu: int
    memory_mib: int
    disk_mib: int
    steps: int
    cached_steps: int
    size_bytes: int | None
    created_at: str
    finished_at: str | None
    events_url: str


class TemplateOut(_Answer):
    template_id: str
    name: str
    public: bool
    status: str
    version: int | None
    vcpu: int
    memory_mib: int
    disk_mib: int
    config: dict[str, Any] | None
    created_at: str
    updated_at: str | None
    latest_build: LatestBuild | None = None


class TemplateDetail(TemplateOut):
    builds: list[BuildOut]


class BuildEvent(BaseModel):
    """One line of a build's NDJSON event stream; the last one has type
    `done` and the build's status."""

    model_config = ConfigDict(extra="allow")

    type: str
