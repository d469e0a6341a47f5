"""Group chats: the name each user turn is shown with, whether a channel shows names, and
where its ambient context starts.

``messages.speaker`` is the sanitised name the model sees for a user turn, fixed when the
turn is stored (older turns have none: their author's name is sanitised when they are
shown). ``channels.speaker_names`` records that ``[chat] speaker_names = "auto"`` switched
names on in a channel, so they stay on. ``channels.ambient_start_id``: ambient turns before
it are no longer shown (agent/prompt/ambient.py). Ambient turns themselves need no column:
they are user turns with the status ``ambient`` (or ``forgotten``).

Plain ``ADD COLUMN`` on both databases: the columns are new and nullable (or have a server
default), so SQLite needs no table rebuild.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("speaker", sa.String(64), nullable=True))
    op.add_column(
        "channels",
        sa.Column("speaker_names", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("channels", sa.Column("ambient_start_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite that rebuilds the table, and dropping the old ``messages``
    # with foreign keys on would cascade. SQLite 3.35+ drops a column in place.
    op.drop_column("channels", "ambient_start_id")
    op.drop_column("channels", "speaker_names")
    op.drop_column("messages", "speaker")
