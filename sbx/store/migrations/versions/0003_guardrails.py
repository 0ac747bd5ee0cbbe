"""Guardrail findings, optional bodies and an expiry on audit rows; a
per-organisation, per-day count of guardrail checks.

Revision ID: 0003_guardrails
Revises: 0002_egress_audit
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_guardrails"
down_revision = "0002_egress_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("egress_audit") as t:
        t.add_column(sa.Column("findings", sa.JSON, nullable=True))
        t.add_column(sa.Column("request_body", sa.Text, nullable=True))
        t.add_column(sa.Column("response_body", sa.Text, nullable=True))
        t.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_egress_audit_expires_at", "egress_audit", ["expires_at"])
    op.create_table(
        "guardrail_usage",
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("checks", sa.BigInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("guardrail_usage")
    op.drop_index("ix_egress_audit_expires_at", "egress_audit")
    with op.batch_alter_table("egress_audit") as t:
        for name in ("expires_at", "response_body", "request_body", "findings"):
            t.drop_column(name)
