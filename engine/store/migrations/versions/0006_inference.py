"""Inference: the model registry (governance state, live thresholds, running counts), durable
inference jobs, and the accounting of disclosures.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _s(n: int) -> sa.String:
    return sa.String(n)


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("name", _s(64), nullable=False),
        sa.Column("version", _s(64), nullable=False),
        sa.Column("state", _s(16), nullable=False),
        sa.Column("evidence", _s(500), nullable=True),
        sa.Column("thresholds", sa.String(), nullable=True),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.Column("changed_by", _s(120), nullable=False),
        sa.PrimaryKeyConstraint("name", "version"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "inference_jobs",
        sa.Column("id", _s(36), nullable=False),
        sa.Column("study_id", _s(36), nullable=False),
        sa.Column("study_uid_idx", _s(64), nullable=True),
        sa.Column("content_hash", _s(64), nullable=False),
        sa.Column("model", _s(64), nullable=False),
        sa.Column("model_version", _s(64), nullable=False),
        sa.Column("state", _s(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=True),
        sa.Column("holder", _s(120), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("channel", _s(128), nullable=False),
        sa.Column("trigger", _s(200), nullable=False),
        sa.Column("request_message", _s(36), nullable=False),
        sa.Column("result_message", _s(36), nullable=True),
        sa.Column("clinical", sa.Boolean(), nullable=True),
        sa.Column("input_digest", _s(64), nullable=True),
        sa.Column("output_digest", _s(64), nullable=True),
        sa.Column("error", _s(500), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ux_jobs_identity", "inference_jobs", ["study_id", "model", "model_version", "content_hash"], unique=True
    )
    where = sa.text("due_at IS NOT NULL")
    op.create_index("ix_jobs_due", "inference_jobs", ["due_at"], sqlite_where=where, postgresql_where=where)
    op.create_index("ix_jobs_state", "inference_jobs", ["state"])
    op.create_table(
        "disclosures",
        sa.Column("id", _s(36), nullable=False),
        sa.Column("patient_idx", _s(64), nullable=False),
        sa.Column("recipient", _s(200), nullable=False),
        sa.Column("purpose", _s(64), nullable=False),
        sa.Column("method", _s(32), nullable=False),
        sa.Column("study_id", _s(36), nullable=True),
        sa.Column("job_id", _s(36), nullable=True),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_disclosures_patient", "disclosures", ["patient_idx"])


def downgrade() -> None:
    for table in ("disclosures", "inference_jobs", "model_versions"):
        op.drop_table(table)
