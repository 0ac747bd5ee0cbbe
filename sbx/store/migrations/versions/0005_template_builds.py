"""Custom templates: versions built from a Dockerfile.

A build is a row of template_builds; a successful one is a version of its
template (its root filesystem and run-time config). The template row points
to the version sandboxes are made from, so a failed rebuild leaves the
previous version in use. A sandbox remembers the root filesystem it was
made from: a paused one resumes on it even after its template moved on.

Revision ID: 0005_template_builds
Revises: 0004_billing
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_template_builds"
down_revision = "0004_billing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("templates") as t:
        t.add_column(sa.Column("version", sa.Integer, nullable=False, server_default="1"))
        t.add_column(sa.Column("config", sa.JSON, nullable=True))
        t.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "template_builds",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("template_id", sa.String(80), sa.ForeignKey("templates.id"), nullable=False),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("error_line", sa.Integer, nullable=True),
        sa.Column("dockerfile", sa.Text, nullable=False),
        sa.Column("vcpu", sa.Integer, nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("disk_mib", sa.Integer, nullable=False),
        sa.Column("rootfs", sa.Text, nullable=True),
        sa.Column("config", sa.JSON, nullable=True),
        sa.Column("layer", sa.String(64), nullable=True),
        sa.Column("steps", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cached_steps", sa.Integer, nullable=False, server_default="0"),
        sa.Column("size_bytes", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("template_id", "version", name="uq_template_builds_version"),
    )
    op.create_index("ix_template_builds_template", "template_builds", ["template_id", "status"])
    with op.batch_alter_table("sandboxes") as t:
        t.add_column(sa.Column("rootfs", sa.Text, nullable=True))
    op.get_bind().execute(sa.text(
        "UPDATE sandboxes SET rootfs = "
        "(SELECT rootfs FROM templates WHERE templates.id = sandboxes.template_id)"))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as t:
        t.drop_column("rootfs")
    op.drop_index("ix_template_builds_template", "template_builds")
    op.drop_table("template_builds")
    with op.batch_alter_table("templates") as t:
        for name in ("updated_at", "config", "version"):
            t.drop_column(name)
