"""SQLAlchemy ORM tables for conversation history."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ChannelRow(Base):
    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Platform-qualified key: "console:local", "discord:123", "matrix:!room:server", and for
    # a Matrix thread "matrix:!room:server/$root" (each id up to 255 bytes: migration 0005).
    key: Mapped[str] = mapped_column(String(600), unique=True)
    platform: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The history window holds the turns whose anchor (see MessageRow) is >= this id.
    # It only moves forward, in blocks, so the prompt prefix stays byte-identical meanwhile.
    window_start_id: Mapped[int | None] = mapped_column(Integer)
    # The rolling summary in the prompt: everything evicted from the window since !reset.
    summary_id: Mapped[int | None] = mapped_column(
        ForeignKey("summaries.id", ondelete="SET NULL", use_alter=True)
    )
    # Bumped by !reset: background work started before it must not touch the new window.
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The persona chosen with `!persona` (None: as config.toml assigns), and the last
    # persona that posted its greeting here (it greets again only after a switch).
    persona: Mapped[str | None] = mapped_column(String(128))
    greeted_persona: Mapped[str | None] = mapped_column(String(128))
    # Speaker names are on in this channel's prompts (migration 0006); once on, they stay.
    speaker_names: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Ambient turns before this id are no longer shown (migration 0006; forward only).
    ambient_start_id: Mapped[int | None] = mapped_column(Integer)


class SummaryRow(Base):
    __tablename__ = "summaries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel_id: Mapped[int] = mapped_column(
        ForeignKey("channels.id", ondelete="CASCADE"), index=True
    )
    text: Mapped[str] = mapped_column(Text)
    # Anchors (see MessageRow) of the first and last turns the summary covers, inclusive.
    first_message_id: Mapped[int] = mapped_column(Integer)
    last_message_id: Mapped[int] = mapped_column(Integer)
    # The channel's epoch when it was made: summaries from before a !reset are history only.
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_channel_id_id", "channel_id", "id"),
        # Conversation order (see in_reply_to_id): every message's history reads sort and
        # range over it (migration 0004).
        Index(
            "ix_messages_channel_anchor",
            "channel_id",
            text("coalesce(in_reply_to_id, id)"),
            "id",
        ),
        # A platform message is stored once per channel (migration 0007): the check that
        # no message is answered twice, across reconnects, restarts and processes.
        Index("ux_messages_platform_id", "channel_id", "platform_message_id", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    author_id: Mapped[str | None] = mapped_column(String(255))
    author_name: Mapped[str | None] = mapped_column(String(255))
    # The sanitised name the model sees for a user turn (migration 0006; see records.py).
    speaker: Mapped[str | None] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    platform_message_id: Mapped[str | None] = mapped_column(String(255))
    # For an assistant turn: the user turn it answers. A turn's anchor is
    # coalesce(in_reply_to_id, id): conversation order, a reply right after its question.
    in_reply_to_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
