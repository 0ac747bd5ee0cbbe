"""Nodes: the hosts a control plane places sandboxes on.

A node registers with a join token (only its hash is kept) and its
capacity, and heartbeats; a sandbox records the node that holds it
(NULL: the one node inside `sbx server`).

Revision ID: 0007_nodes
Revises: 0006_leases
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_nodes"
down_revision = "0006_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("url", sa.String(255), nullable=False),
        sa.Column("subnet", sa.String(43), nullable=False),
        sa.Column("control_key", sa.String(80), nullable=False),
        sa.Column("node_key_hash", sa.String(64), nullable=False),
        sa.Column("join_token_id", sa.String(24), sa.ForeignKey("join_tokens.id"),
                  nullable=False),
        sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("vcpu_total", sa.Integer, nullable=False),
        sa.Column("memory_mib_total", sa.Integer, nullable=False),
        sa.Column("disk_mib_total", sa.Integer, nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("info", sa.JSON, nullable=True),
    )
    with op.batch_alter_table("sandboxes") as t:
        t.add_column(sa.Column("node_id", sa.String(40), nullable=True))
        t.create_index("ix_sandboxes_node_id", ["node_id"])


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as t:
        t.drop_index("ix_sandboxes_node_id")
        t.drop_column("node_id")
    op.drop_table("nodes")
    op.drop_table("join_tokens")
