"""Result delivery: AI reports and their lifecycle, and the worklist priorities raised.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ai_reports",
        sa.Column("report_id", sa.String(120), nullable=False),
        sa.Column("study_id", sa.String(36), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("final_message", sa.String(36), nullable=True),
        sa.Column("final_status", sa.String(8), nullable=True),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("report_id"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_ai_reports_study", "ai_reports", ["study_id"])
    op.create_table(
        "priority_raises",
        sa.Column("study_id", sa.String(36), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("update_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("raised_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("study_id", "level"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("priority_raises")
    op.drop_table("ai_reports")
