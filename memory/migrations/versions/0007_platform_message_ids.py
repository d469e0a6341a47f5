"""A platform message is stored once per channel: the idempotency check of every intake.

A message can reach Beseda more than once: Discord's catch-up after a reconnect fetches
messages the gateway may also deliver, a platform redelivers after a restart (Telegram's
missed updates), two deliveries race. The unique index makes the database itself refuse the
second copy (``SqlHistoryStore.append`` raises ``DuplicateMessageError``), so the core
answers each platform message once, across reconnects, restarts and processes. Rows without
a platform id (replies, notices, the console) are not concerned: NULLs never collide.

Databases written before may hold a platform id twice in a channel (two processes answered
one message, which this revision is there to prevent); the later copies keep their text and
lose only the id.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Keep the oldest row of each (channel, platform id); later copies lose only the id.
    op.execute(
        sa.text(
            "UPDATE messages SET platform_message_id = NULL "
            "WHERE platform_message_id IS NOT NULL AND id NOT IN ("
            " SELECT min(id) FROM messages WHERE platform_message_id IS NOT NULL"
            " GROUP BY channel_id, platform_message_id)"
        )
    )
    op.create_index(
        "ux_messages_platform_id",
        "messages",
        ["channel_id", "platform_message_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ux_messages_platform_id", table_name="messages")
