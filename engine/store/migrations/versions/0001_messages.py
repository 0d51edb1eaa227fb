"""Messages, deliveries, sealed contents, data keys, config versions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "config_versions",
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("loaded_at", sa.DateTime(), nullable=False),
        sa.Column("files", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("hash"),
    )
    with op.batch_alter_table("config_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_config_versions_loaded_at"), ["loaded_at"], unique=False)
    op.create_table(
        "data_keys",
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("record_id"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("channel", sa.String(128), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("control_idx", sa.String(64), nullable=True),
        sa.Column("accession_idx", sa.String(64), nullable=True),
        sa.Column("mrn_idx", sa.String(64), nullable=True),
        sa.Column("study_uid_idx", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_accession_idx",
            ["accession_idx"],
            unique=False,
            sqlite_where=sa.text("accession_idx IS NOT NULL"),
            postgresql_where=sa.text("accession_idx IS NOT NULL"),
        )
        batch_op.create_index("ix_messages_channel", ["channel", "id"], unique=False)
        batch_op.create_index(
            "ix_messages_control_idx",
            ["control_idx"],
            unique=False,
            sqlite_where=sa.text("control_idx IS NOT NULL"),
            postgresql_where=sa.text("control_idx IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_messages_mrn_idx",
            ["mrn_idx"],
            unique=False,
            sqlite_where=sa.text("mrn_idx IS NOT NULL"),
            postgresql_where=sa.text("mrn_idx IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_messages_problem",
            ["status"],
            unique=False,
            sqlite_where=sa.text("status IN ('error', 'dead')"),
            postgresql_where=sa.text("status IN ('error', 'dead')"),
        )
        batch_op.create_index(
            "ix_messages_study_uid_idx",
            ["study_uid_idx"],
            unique=False,
            sqlite_where=sa.text("study_uid_idx IS NOT NULL"),
            postgresql_where=sa.text("study_uid_idx IS NOT NULL"),
        )
    op.create_table(
        "contents",
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("part", sa.String(160), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=True),
        sa.Column("blob", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("message_id", "part"),
    )
    op.create_table(
        "deliveries",
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("destination", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("message_id", "destination"),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_due", ["status", "next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_due")

    op.drop_table("deliveries")
    op.drop_table("contents")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_messages_study_uid_idx",
            sqlite_where=sa.text("study_uid_idx IS NOT NULL"),
            postgresql_where=sa.text("study_uid_idx IS NOT NULL"),
        )
        batch_op.drop_index(
            "ix_messages_problem",
            sqlite_where=sa.text("status IN ('error', 'dead')"),
            postgresql_where=sa.text("status IN ('error', 'dead')"),
        )
        batch_op.drop_index(
            "ix_messages_mrn_idx",
            sqlite_where=sa.text("mrn_idx IS NOT NULL"),
            postgresql_where=sa.text("mrn_idx IS NOT NULL"),
        )
        batch_op.drop_index(
            "ix_messages_control_idx",
            sqlite_where=sa.text("control_idx IS NOT NULL"),
            postgresql_where=sa.text("control_idx IS NOT NULL"),
        )
        batch_op.drop_index("ix_messages_channel")
        batch_op.drop_index(
            "ix_messages_accession_idx",
            sqlite_where=sa.text("accession_idx IS NOT NULL"),
            postgresql_where=sa.text("accession_idx IS NOT NULL"),
        )

    op.drop_table("messages")
    op.drop_table("data_keys")
    with op.batch_alter_table("config_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_config_versions_loaded_at"))

    op.drop_table("config_versions")
