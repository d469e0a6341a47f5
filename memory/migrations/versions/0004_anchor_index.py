"""An index in conversation order, for the history reads every message makes.

``conversation()`` orders a channel's turns by their anchor, coalesce(in_reply_to_id, id)
(a reply sits right after its question), and the window reads the turns whose anchor is at
least the window start. With only (channel_id, id), the database read every turn of the
channel and sorted them for each read; this index serves both the order and the window's
range directly (SQLite and PostgreSQL use it when the query has the same expression).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_channel_anchor",
        "messages",
        ["channel_id", sa.text("coalesce(in_reply_to_id, id)"), "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_messages_channel_anchor", table_name="messages")
