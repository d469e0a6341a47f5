"""Per-channel persona choice (`!persona`) and greeting bookkeeping.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: existing channels keep the persona config.toml assigns and greet once.
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("persona", sa.String(128), nullable=True))
        batch.add_column(sa.Column("greeted_persona", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("greeted_persona")
        batch.drop_column("persona")
