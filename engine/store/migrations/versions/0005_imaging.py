"""Imaging and correlation: studies being assembled, their instances and keys, the order registry,
and sources' own sealed state (feed positions, MPPS steps).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _s(n: int) -> sa.String:
    return sa.String(n)


def _sparse(name: str, table: str, column: str) -> None:
    where = sa.text(f"{column} IS NOT NULL")
    op.create_index(name, table, [column], sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    op.create_table(
        "source_state",
        sa.Column("name", _s(200), nullable=False),
        sa.Column("record_id", _s(36), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "studies",
        sa.Column("key", _s(64), nullable=False),
        sa.Column("id", _s(36), nullable=False),
        sa.Column("channel", _s(128), nullable=False),
        sa.Column("study_uid_idx", _s(64), nullable=False),
        sa.Column("state", _s(16), nullable=False),
        sa.Column("reason", _s(64), nullable=True),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=False),
        sa.Column("stable_due", sa.DateTime(), nullable=True),
        sa.Column("wait_due", sa.DateTime(), nullable=True),
        sa.Column("header_message", _s(36), nullable=False),
        sa.Column("content_hash", _s(64), nullable=True),
        sa.Column("triggered_hash", _s(64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
        sa.UniqueConstraint("id"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_studies_study_uid", "studies", ["study_uid_idx"])
    _sparse("ix_studies_stable_due", "studies", "stable_due")
    _sparse("ix_studies_wait_due", "studies", "wait_due")
    op.create_table(
        "instances",
        sa.Column("study_key", _s(64), nullable=False),
        sa.Column("sop_idx", _s(64), nullable=False),
        sa.Column("series_idx", _s(64), nullable=False),
        sa.Column("message_id", _s(36), nullable=False),
        sa.Column("sop_class", _s(64), nullable=False),
        sa.Column("modality", _s(16), nullable=False),
        sa.Column("body_part", _s(64), nullable=False),
        sa.Column("transfer_syntax", _s(64), nullable=False),
        sa.Column("sha256", _s(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("study_key", "sop_idx"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "study_keys",
        sa.Column("kind", _s(16), nullable=False),
        sa.Column("idx", _s(64), nullable=False),
        sa.Column("study_key", _s(64), nullable=False),
        sa.PrimaryKeyConstraint("kind", "idx", "study_key"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_study_keys_study", "study_keys", ["study_key"])
    op.create_table(
        "orders",
        sa.Column("id", _s(36), nullable=False),
        sa.Column("key", _s(64), nullable=False),
        sa.Column("state", _s(16), nullable=False),
        sa.Column("priority", _s(16), nullable=False),
        sa.Column("mrn_idx", _s(64), nullable=False),
        sa.Column("study_key", _s(64), nullable=True),
        sa.Column("message_id", _s(36), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_orders_mrn", "orders", ["mrn_idx"])
    op.create_index("ix_orders_study", "orders", ["study_key"])
    _sparse("ix_orders_expires", "orders", "expires_at")
    op.create_table(
        "order_keys",
        sa.Column("kind", _s(16), nullable=False),
        sa.Column("idx", _s(64), nullable=False),
        sa.Column("order_id", _s(36), nullable=False),
        sa.PrimaryKeyConstraint("kind", "idx", "order_id"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_order_keys_order", "order_keys", ["order_id"])


def downgrade() -> None:
    for table in ("order_keys", "orders", "study_keys", "instances", "studies", "source_state"):
        op.drop_table(table)
