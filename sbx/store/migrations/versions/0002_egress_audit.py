"""The egress audit log: one row per egress attempt of a sandbox.

Revision ID: 0002_egress_audit
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# 64-bit on PostgreSQL; SQLite autoincrements only an INTEGER primary key.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0002_egress_audit"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "egress_audit",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("sandbox_id", sa.String(12), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("ip", sa.String(45), nullable=True),
        sa.Column("port", sa.Integer, nullable=True),
        sa.Column("method", sa.String(16), nullable=True),
        sa.Column("path", sa.Text, nullable=True),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("bytes_up", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_down", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("rule", sa.String(120), nullable=False),
    )
    op.create_index("ix_egress_audit_sandbox_id_id", "egress_audit", ["sandbox_id", "id"])


def downgrade() -> None:
    op.drop_table("egress_audit")
