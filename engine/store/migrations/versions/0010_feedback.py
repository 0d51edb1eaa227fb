"""Radiologists' feedback on AI findings (agree, disagree, not applicable): the worklist and the
post-market monitoring of model versions read it.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "finding_feedback",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("report_id", sa.String(120), nullable=False),
        sa.Column("study_id", sa.String(36), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_with_rowid=False,
    )
    op.create_index("ux_finding_feedback_identity", "finding_feedback", ["report_id", "code", "username"], unique=True)
    op.create_index("ix_finding_feedback_study", "finding_feedback", ["study_id"])
    op.create_index("ix_finding_feedback_at", "finding_feedback", ["at"])


def downgrade() -> None:
    op.drop_table("finding_feedback")
