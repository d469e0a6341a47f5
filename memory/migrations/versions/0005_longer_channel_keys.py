"""Channel keys up to 600 characters: a Matrix thread's key holds two ids of up to 255.

``matrix:<room id>/<thread root event id>``: the Matrix spec allows 255 bytes for each id,
so a key may reach 518 characters, and PostgreSQL refused such a channel's first message
(``value too long for type character varying(255)``).

SQLite is left as it is: it does not enforce a VARCHAR's length, and changing the declared
type there means rebuilding the table, which, with foreign keys on, would cascade the
drop of ``channels`` to every message.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _resize_key(255, 600)


def downgrade() -> None:
    _resize_key(600, 255)


def _resize_key(old: int, new: int) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column(
            "channels", "key", type_=sa.String(new), existing_type=sa.String(old),
            existing_nullable=False,
        )  # fmt: skip
