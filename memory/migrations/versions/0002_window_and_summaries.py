"""Context window state per channel and rolling summaries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "summaries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "channel_id",
            sa.Integer(),
            sa.ForeignKey("channels.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("first_message_id", sa.Integer(), nullable=False),
        sa.Column("last_message_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("window_start_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("summary_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("epoch", sa.Integer(), nullable=False, server_default="0"))
        batch.create_foreign_key(
            "fk_channels_summary_id", "summaries", ["summary_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.drop_constraint("fk_channels_summary_id", type_="foreignkey")
        batch.drop_column("epoch")
        batch.drop_column("summary_id")
        batch.drop_column("window_start_id")
    op.drop_table("summaries")
