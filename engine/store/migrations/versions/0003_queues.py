"""Per-channel delivery queues and duplicate detection.

deliveries gains its message's channel (backfilled), so each (channel, destination) queue is read
from one index in message order; messages gain content_mac, a keyed hash of the raw bytes, to tell a
repeated message from a reused control id.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("channel", sa.String(128), nullable=False, server_default=""))
    op.execute(
        "UPDATE deliveries SET channel = (SELECT channel FROM messages WHERE messages.id = deliveries.message_id)"
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.alter_column("channel", server_default=None)
        batch.drop_index("ix_deliveries_due")
        batch.create_index("ix_deliveries_queue", ["channel", "destination", "status", "message_id"])
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("content_mac", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("content_mac")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_queue")
        batch.create_index("ix_deliveries_due", ["status", "next_attempt_at"])
        batch.drop_column("channel")
