"""Organisational attestations for the compliance report (BAA, risk analysis, training, ...).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attestations",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("item", sa.String(64), nullable=False),
        sa.Column("attested_on", sa.Date(), nullable=False),
        sa.Column("attested_by", sa.String(200), nullable=False),
        sa.Column("evidence", sa.String(1000), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_attestations_item", "attestations", ["item", "attested_on"])


def downgrade() -> None:
    op.drop_table("attestations")
