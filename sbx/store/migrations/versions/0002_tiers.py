"""Tiers, wallet balances per organisation, and the create log.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# 64-bit on PostgreSQL; SQLite autoincrements only an INTEGER primary key.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    tiers = op.create_table(
        "tiers",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("max_sandboxes", sa.Integer, nullable=False),
        sa.Column("max_vcpu", sa.Integer, nullable=False),
        sa.Column("max_memory_mib", sa.Integer, nullable=False),
        sa.Column("max_disk_mib", sa.Integer, nullable=False),
        sa.Column("max_session_s", sa.Integer, nullable=True),
        sa.Column("creates_per_minute", sa.Integer, nullable=False),
    )
    # The default tier: seed 000's three sandboxes, seed 000's largest sizes.
    op.bulk_insert(tiers, [{
        "name": "default", "max_sandboxes": 3, "max_vcpu": 8, "max_memory_mib": 8192,
        "max_disk_mib": 20480, "max_session_s": None, "creates_per_minute": 60,
    }])
    with op.batch_alter_table("orgs") as batch:
        batch.add_column(sa.Column(
            "tier", sa.String(64), sa.ForeignKey("tiers.name", name="fk_orgs_tier"),
            nullable=False, server_default="default",
        ))
        batch.add_column(sa.Column("sandbox_balance", sa.Float, nullable=True))
        batch.add_column(sa.Column("guardrails_balance", sa.Float, nullable=True))
    op.create_table(
        "create_log",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_create_log_org_at", "create_log", ["org_id", "at"])


def downgrade() -> None:
    op.drop_table("create_log")
    with op.batch_alter_table("orgs") as batch:
        batch.drop_column("guardrails_balance")
        batch.drop_column("sandbox_balance")
        batch.drop_column("tier")
    op.drop_table("tiers")
