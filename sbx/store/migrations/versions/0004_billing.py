"""Money and keys: prices in tiers, an append-only ledger that wallet
balances are summed from, a metering cursor per sandbox and per day of
guardrail checks, and roles and expiry for API keys.

Balances that were stored as numbers become opening entries in the ledger;
a wallet that had none (NULL) stays unenforced.

Revision ID: 0004_billing
Revises: 0003_guardrails
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

# 64-bit on PostgreSQL; SQLite autoincrements only an INTEGER primary key.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0004_billing"
down_revision = "0003_guardrails"
branch_labels = None
depends_on = None

MICRO = 1_000_000


def upgrade() -> None:
    with op.batch_alter_table("tiers") as t:
        # Micro-credits per unit.
        t.add_column(sa.Column("price_vcpu_s", sa.BigInteger, nullable=False,
                               server_default="14"))
        t.add_column(sa.Column("price_gib_s", sa.BigInteger, nullable=False,
                               server_default="5"))
        t.add_column(sa.Column("price_check", sa.BigInteger, nullable=False,
                               server_default="100"))
    op.create_table(
        "ledger",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("wallet", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sandbox_id", sa.String(12), nullable=True),
        sa.Column("item", sa.String(16), nullable=True),
        sa.Column("quantity", sa.Float, nullable=False, server_default="0"),
        sa.Column("unit_price", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_ledger_org_wallet", "ledger", ["org_id", "wallet", "amount"])
    op.create_index("ix_ledger_org_at", "ledger", ["org_id", "at"])
    with op.batch_alter_table("orgs") as t:
        t.add_column(sa.Column("sandbox_wallet", sa.Boolean, nullable=False,
                               server_default=sa.false()))
        t.add_column(sa.Column("guardrails_wallet", sa.Boolean, nullable=False,
                               server_default=sa.false()))
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, sandbox_balance, guardrails_balance FROM orgs")).fetchall()
    for org_id, sandbox, guardrails in rows:
        for wallet, balance in (("sandbox", sandbox), ("guardrails", guardrails)):
            if balance is None:
                continue
            conn.execute(sa.text(f"UPDATE orgs SET {wallet}_wallet = :on WHERE id = :id"),
                         {"on": True, "id": org_id})
            conn.execute(sa.text(
                "INSERT INTO ledger (at, org_id, wallet, kind, amount, note) "
                "VALUES (:now, :org, :wallet, 'opening', :amount, "
                "'balance before the ledger')"),
                {"now": datetime.now(UTC).replace(tzinfo=None), "org": org_id,
                 "wallet": wallet, "amount": round(balance * MICRO)})
    with op.batch_alter_table("orgs") as t:
        t.drop_column("sandbox_balance")
        t.drop_column("guardrails_balance")
    with op.batch_alter_table("sandboxes") as t:
        t.add_column(sa.Column("metered_until", sa.DateTime(timezone=True), nullable=True))
    # Time before the ledger existed is not charged.
    conn.execute(sa.text("UPDATE sandboxes SET metered_until = COALESCE(ended_at, :now)"),
                 {"now": datetime.now(UTC).replace(tzinfo=None)})
    with op.batch_alter_table("guardrail_usage") as t:
        t.add_column(sa.Column("charged", sa.BigInteger, nullable=False, server_default="0"))
    with op.batch_alter_table("api_keys") as t:
        t.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="member"))
        t.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as t:
        t.drop_column("expires_at")
        t.drop_column("role")
    with op.batch_alter_table("guardrail_usage") as t:
        t.drop_column("charged")
    with op.batch_alter_table("sandboxes") as t:
        t.drop_column("metered_until")
    with op.batch_alter_table("orgs") as t:
        t.add_column(sa.Column("sandbox_balance", sa.Float, nullable=True))
        t.add_column(sa.Column("guardrails_balance", sa.Float, nullable=True))
        t.drop_column("guardrails_wallet")
        t.drop_column("sandbox_wallet")
    op.drop_table("ledger")
    with op.batch_alter_table("tiers") as t:
        for name in ("price_check", "price_gib_s", "price_vcpu_s"):
            t.drop_column(name)
