"""Tables. Changes to them go through a new Alembic revision in migrations/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: SQLite keeps no zone, so one is put
    back on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# Ids of append-only tables (events, the ledger, the audit log) may pass
# 2**31 on PostgreSQL; SQLite autoincrements only an INTEGER primary key,
# which is 64 bits there anyway.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Tier(Base):
    """Limits an organisation lives within. NULL: no limit."""

    __tablename__ = "tiers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    max_sandboxes: Mapped[int] = mapped_column(Integer)
    max_vcpu: Mapped[int] = mapped_column(Integer)
    max_memory_mib: Mapped[int] = mapped_column(Integer)
    max_disk_mib: Mapped[int] = mapped_column(Integer)
    max_session_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    creates_per_minute: Mapped[int] = mapped_column(Integer)
    # Prices in micro-credits per vCPU-second, per GiB-second of memory and
    # per guardrail check.
    price_vcpu_s: Mapped[int] = mapped_column(BigInteger, server_default="14")
    price_gib_s: Mapped[int] = mapped_column(BigInteger, server_default="5")
    price_check: Mapped[int] = mapped_column(BigInteger, server_default="100")


class Org(Base):
    __tablename__ = "orgs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Kept for organisations made before tiers; the tier's limit applies.
    max_sandboxes: Mapped[int] = mapped_column(Integer)
    tier: Mapped[str] = mapped_column(ForeignKey("tiers.name"), default="default")
    # Whether each wallet is enforced (an empty one refuses creates, and the
    # sandbox wallet pauses running sandboxes). Balances are the sums of the
    # ledger; usage is charged there either way.
    sandbox_wallet: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    guardrails_wallet: Mapped[bool] = mapped_column(Boolean, server_default=false(),
                                                    default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CreateLog(Base):
    """One row per accepted create: the per-minute create rate is counted
    here, so it holds across restarts and concurrent requests."""

    __tablename__ = "create_log"
    __table_args__ = (Index("ix_create_log_org_at", "org_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # "member": the organisation's own API; "admin": also the admin API.
    role: Mapped[str] = mapped_column(String(16), server_default="member", default="member")
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Template(Base):
    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # NULL: a public template every organisation may use.
    org_id: Mapped[str | None] = mapped_column(ForeignKey("orgs.id"), nullable=True)
    vcpu: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_mib: Mapped[int] = mapped_column(Integer)
    rootfs: Mapped[str] = mapped_column(Text)
    # ready: `version` is usable; building / failed: no version is yet.
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The version new sandboxes are made from (a ready template_builds row).
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Its run-time config (env, workdir, user, start and ready commands);
    # None for the built-in template.
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TemplateBuild(Base):
    """One build of a template from a Dockerfile; a ready one is a version."""

    __tablename__ = "template_builds"
    __table_args__ = (Index("ix_template_builds_template", "template_id", "status"),
                      UniqueConstraint("template_id", "version",
                                       name="uq_template_builds_version"))

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id"))
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"))
    version: Mapped[int] = mapped_column(Integer)
    # building | ready | failed | cancelled | retired (its files removed)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_line: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dockerfile: Mapped[str] = mapped_column(Text)
    vcpu: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_mib: Mapped[int] = mapped_column(Integer)
    rootfs: Mapped[str | None] = mapped_column(Text, nullable=True)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Cache key of the last filesystem layer.
    layer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    cached_steps: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Sandbox(Base):
    __tablename__ = "sandboxes"
    __table_args__ = (Index("ix_sandboxes_org_state", "org_id", "state"),)

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"))
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id"))
    state: Mapped[str] = mapped_column(String(16))
    vcpu: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_mib: Mapped[int] = mapped_column(Integer)
    auto_pause: Mapped[bool] = mapped_column(default=False)
    timeout_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timeout_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    network_policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    env_vars: Mapped[dict[str, str]] = mapped_column(JSON)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    envd_token: Mapped[str] = mapped_column(String(80))
    proxy_token: Mapped[str] = mapped_column(String(80))
    # Index of the /30 this sandbox holds in the node's address pool.
    ip_slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Running time before this instant is in the ledger.
    metered_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The template version's root filesystem it was made from (a paused
    # sandbox resumes on it after a rebuild).
    rootfs: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The node that holds it (None: the one node inside `sbx server`).
    node_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)


class JoinToken(Base):
    """What a node presents to register (`sbx admin node token`); only the
    secret's hash is kept, and revoking it refuses the nodes it admitted."""

    __tablename__ = "join_tokens"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class NodeRow(Base):
    """A host sandboxes are placed on (`sbx node`). Lost is not stored: a
    node silent for longer than the heartbeat grace is lost when read."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(255))
    subnet: Mapped[str] = mapped_column(String(43))
    # Presented by the control plane to the node (the node checks it).
    control_key: Mapped[str] = mapped_column(String(80))
    # The node's own key for its calls to the control plane (hash only).
    node_key_hash: Mapped[str] = mapped_column(String(64))
    join_token_id: Mapped[str] = mapped_column(ForeignKey("join_tokens.id"))
    draining: Mapped[bool] = mapped_column(default=False)
    vcpu_total: Mapped[int] = mapped_column(Integer)
    memory_mib_total: Mapped[int] = mapped_column(Integer)
    disk_mib_total: Mapped[int] = mapped_column(Integer)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class SandboxEvent(Base):
    __tablename__ = "sandbox_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sandbox_id: Mapped[str] = mapped_column(String(12), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class EgressAudit(Base):
    """One row per egress attempt of a sandbox (a connection, an HTTP
    request, a DNS question), allowed or refused. Append-only; brokered
    header values never appear here."""

    __tablename__ = "egress_audit"
    __table_args__ = (Index("ix_egress_audit_sandbox_id_id", "sandbox_id", "id"),
                      Index("ix_egress_audit_expires_at", "expires_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sandbox_id: Mapped[str] = mapped_column(String(12))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    protocol: Mapped[str] = mapped_column(String(8))
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    ip: Mapped[str | None] = mapped_column(String(45), nullable=True)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)
    decision: Mapped[str] = mapped_column(String(8))
    rule: Mapped[str] = mapped_column(String(120))
    # Guardrail findings: kinds and counts, never the values found.
    findings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Only with the security policy's audit.include_bodies, after redaction.
    request_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The sandbox's audit retention, fixed when the row is written.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class GuardrailUsage(Base):
    """Guardrail checks (a request scanned for PII, a response scored for
    injection) per organisation and UTC day: what its guardrails wallet is
    charged for. Survives the audit rows' retention."""

    __tablename__ = "guardrail_usage"

    org_id: Mapped[str] = mapped_column(String(40), ForeignKey("orgs.id"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    checks: Mapped[int] = mapped_column(BigInteger, default=0)
    # Of those, how many are in the ledger.
    charged: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)


class LedgerEntry(Base):
    """Append-only: every charge and every credit of a wallet. A balance is
    the sum of its wallet's amounts (micro-credits; charges negative)."""

    __tablename__ = "ledger"
    __table_args__ = (Index("ix_ledger_org_wallet", "org_id", "wallet", "amount"),
                      Index("ix_ledger_org_at", "org_id", "at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    org_id: Mapped[str] = mapped_column(String(40), ForeignKey("orgs.id"))
    wallet: Mapped[str] = mapped_column(String(16))  # sandbox | guardrails
    kind: Mapped[str] = mapped_column(String(16))  # usage | topup | adjust | opening
    sandbox_id: Mapped[str | None] = mapped_column(String(12), nullable=True)
    item: Mapped[str | None] = mapped_column(String(16), nullable=True)  # vcpu_s | gib_s | check
    quantity: Mapped[float] = mapped_column(Float, server_default="0", default=0.0)
    unit_price: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    amount: Mapped[int] = mapped_column(BigInteger)
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class Lease(Base):
    """A named duty held by one holder (a replica) until it expires, so a
    duty is done once across replicas: see sbx.store.leases."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
