"""Initial schema: orgs, api keys, templates, sandboxes, events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# 64-bit on PostgreSQL; SQLite autoincrements only an INTEGER primary key.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("max_sandboxes", sa.Integer, nullable=False),
        sa.Column("created_at", tz, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "org_id", sa.String(40), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("revoked_at", tz, nullable=True),
    )
    op.create_index("ix_api_keys_org_id", "api_keys", ["org_id"])
    op.create_table(
        "templates",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=True),
        sa.Column("vcpu", sa.Integer, nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("disk_mib", sa.Integer, nullable=False),
        sa.Column("rootfs", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", tz, nullable=False),
    )
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(12), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("template_id", sa.String(80), sa.ForeignKey("templates.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("vcpu", sa.Integer, nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("disk_mib", sa.Integer, nullable=False),
        sa.Column("auto_pause", sa.Boolean, nullable=False),
        sa.Column("timeout_s", sa.Integer, nullable=True),
        sa.Column("timeout_at", tz, nullable=True),
        sa.Column("network_policy", sa.JSON, nullable=False),
        sa.Column("env_vars", sa.JSON, nullable=False),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("envd_token", sa.String(80), nullable=False),
        sa.Column("proxy_token", sa.String(80), nullable=False),
        sa.Column("ip_slot", sa.Integer, nullable=True),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("ended_at", tz, nullable=True),
    )
    op.create_index("ix_sandboxes_org_state", "sandboxes", ["org_id", "state"])
    op.create_table(
        "sandbox_events",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("sandbox_id", sa.String(12), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", tz, nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("ix_sandbox_events_sandbox_id", "sandbox_events", ["sandbox_id"])


def downgrade() -> None:
    for table in ("sandbox_events", "sandboxes", "templates", "api_keys", "orgs"):
        op.drop_table(table)
