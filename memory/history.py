"""Conversation history: the HistoryStore seam and its SQLAlchemy implementation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import ColumnElement, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from memory.channel_cache import ChannelCache
from memory.db import Database, storage_error
from memory.models import ChannelRow, MessageRow, SummaryRow, utcnow
from memory.records import ANSWERED, ChannelState, Status, StoredMessage, Summary
from memory.text import storable
from memory.turn_cache import TurnCache, tail_floor

NAME_CHARS = 255  # MessageRow.author_name
SPEAKER_CHARS = 64  # MessageRow.speaker
# A read of the newest N turns loads N + TAIL_SLACK into the cache, so that reads leaving out
# the newest few (the window's ``before_id``) are answered from it as well.
TAIL_SLACK = 20
# Channels whose state ``warm()`` reads ahead at start: the most recently active ones.
WARM_CHANNELS = 1000


class DuplicateMessageError(Exception):
    """The platform message is stored in this channel already: it was taken in before (by a
    reconnect's catch-up, a redelivery, another process) and must not be answered again."""

    def __init__(self, existing: StoredMessage) -> None:
        super().__init__(
            f"message {existing.platform_message_id} of {existing.channel_key} is stored "
            f"already (id {existing.id})"
        )
        self.existing = existing


class HistoryStore(Protocol):
    async def append(
        self,
        channel_key: str,
        role: str,
        text: str,
        *,
        status: Status = Status.DONE,
        author_id: str | None = None,
        author_name: str | None = None,
        platform_message_id: str | None = None,
        in_reply_to_id: int | None = None,
        created_at: datetime | None = None,
        speaker: str | None = None,
    ) -> StoredMessage:
        """Store a turn. Raises :class:`DuplicateMessageError` when ``platform_message_id``
        is stored in the channel already, :class:`~memory.db.StorageError` when the
        database refuses the write (read-only, full, locked, unreachable)."""
        ...

    async def update(
        self, message_id: int, *, text: str | None = None, status: Status | None = None
    ) -> None: ...

    async def get(self, message_id: int) -> StoredMessage | None: ...

    async def conversation(
        self,
        channel_key: str,
        *,
        before_id: int | None = None,
        since_id: int | None = None,
        limit: int | None = 200,
    ) -> list[StoredMessage]:
        """The newest ``limit`` turns in conversation order, oldest first.

        With ``before_id``, only what precedes that user turn: turns stored before it and the
        replies to them (a reply is placed right after the turn it answers, even when other
        messages were stored in between). With ``since_id``, only turns whose anchor is at
        least that id (the history window).
        """
        ...

    async def channel_state(self, channel_key: str) -> ChannelState: ...

    async def move_window(
        self, channel_key: str, start_id: int, *, epoch: int, summary_id: int | None = None
    ) -> bool:
        """Move the window start forward to ``start_id`` and, if given, show ``summary_id``
        in the prompt from now on. False (nothing changed) if a reset came in between."""
        ...

    async def add_summary(
        self, channel_key: str, text: str, first_id: int, last_id: int, *, epoch: int
    ) -> Summary | None:
        """Store a rolling summary of turns ``first_id..last_id`` (it becomes
        ``latest_summary``). None, storing nothing, if the channel was reset since ``epoch``.
        """
        ...

    async def reset(self, channel_key: str, after_id: int) -> None:
        """Start afresh: the window begins after ``after_id``, no summary. Nothing is deleted."""
        ...

    async def summaries(self, channel_key: str) -> list[Summary]: ...

    async def set_persona(self, channel_key: str, persona: str | None) -> None:
        """Store the channel's run-time persona choice (None: back to the configured one)."""
        ...

    async def show_speaker_names(self, channel_key: str) -> None:
        """Speaker names are on in this channel from now on (they are never switched off)."""
        ...

    async def move_ambient_start(self, channel_key: str, start_id: int) -> None:
        """Show no ambient turns before ``start_id`` any more (it only moves forward)."""
        ...

    async def forget_ambient(
        self, channel_key: str, author_id: str, containing: str | None = None
    ) -> int:
        """Withdraw the author's ambient turns in the channel (those whose text contains
        ``containing``, case-insensitively; None: all): their text is erased and their
        status becomes FORGOTTEN. How many there were."""
        ...

    async def mark_greeted(self, channel_key: str, persona: str) -> bool:
        """Record that ``persona`` greeted here; False if it already had (nothing changed)."""
        ...

    async def count(self, channel_key: str) -> int: ...

    async def warm(self, limit: int = WARM_CHANNELS) -> int:
        """Read ahead the states of the ``limit`` most recently active channels, which their
        first messages would otherwise wait for (a start-up optimisation, it changes
        nothing); how many were cached."""
        ...

    async def channels(self) -> list[str]: ...

    async def interrupt_streaming(self, before_id: int | None = None) -> int:
        """Mark replies left streaming (by a crash) interrupted; how many there were."""
        ...

    async def known_platform_ids(self, channel_key: str, message_ids: Sequence[str]) -> set[str]:
        """Which of these platform message ids are stored in the channel already."""
        ...

    async def latest_from_platform(
        self, platform: str, *, since: datetime, limit: int
    ) -> list[StoredMessage]:
        """Per channel of ``platform`` where a message with a platform id was stored since
        ``since``: the newest such message; the most recently active channels first, at
        most ``limit`` (what a catch-up after downtime starts from)."""
        ...

    async def unanswered(
        self, *, since: datetime | None = None, before: datetime | None = None
    ) -> list[StoredMessage]:
        """User turns still RECEIVED with no answered reply, oldest first, created within
        ``[since, before)``."""
        ...


class SqlHistoryStore:
    """HistoryStore over any SQLAlchemy async database (SQLite, PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Channel rows are never deleted, so a key's id, once committed, never changes.
        self._channel_ids: dict[str, int] = {}
        # Read twice per message, written rarely; every state write below drops its entry.
        self._states: ChannelCache[ChannelState] = ChannelCache()
        # Recent turns per channel (see memory/turn_cache.py): append and update keep it
        # exact, interrupt_streaming (many rows at once) clears it.
        self._turns = TurnCache()

    async def _channel_id(self, session: AsyncSession, key: str) -> int:
        if key in self._channel_ids:
            return self._channel_ids[key]
        found = await session.scalar(select(ChannelRow.id).where(ChannelRow.key == key))
        if found is None:
            row = ChannelRow(key=key, platform=key.split(":", 1)[0])
            try:
                async with session.begin_nested():
                    session.add(row)
            except IntegrityError:  # created concurrently by another process
                found = await session.scalar(select(ChannelRow.id).where(ChannelRow.key == key))
            else:
                found = row.id
        assert found is not None
        return found

    async def append(
        self,
        channel_key: str,
        role: str,
        text: str,
        *,
        status: Status = Status.DONE,
        author_id: str | None = None,
        author_name: str | None = None,
        platform_message_id: str | None = None,
        in_reply_to_id: int | None = None,
        created_at: datetime | None = None,
        speaker: str | None = None,
    ) -> StoredMessage:
        try:
            return await self._append(
                channel_key, role, text, status=status, author_id=author_id,
                author_name=author_name, platform_message_id=platform_message_id,
                in_reply_to_id=in_reply_to_id, created_at=created_at, speaker=speaker,
            )  # fmt: skip
        except IntegrityError:
            # The unique index (channel, platform id) refused a second copy (migration 0007).
            if platform_message_id is not None and (
                existing := await self._platform_message(channel_key, platform_message_id)
            ):
                raise DuplicateMessageError(existing) from None
            raise
        except (DBAPIError, OSError) as exc:  # read-only, full, locked, unreachable
            raise storage_error(exc) from exc

    async def _append(
        self,
        channel_key: str,
        role: str,
        text: str,
        *,
        status: Status,
        author_id: str | None,
        author_name: str | None,
        platform_message_id: str | None,
        in_reply_to_id: int | None,
        created_at: datetime | None,
        speaker: str | None,
    ) -> StoredMessage:
        with self._turns.writing():
            async with self._db.session() as session, session.begin():
                channel_id = await self._channel_id(session, channel_key)
                now = created_at or utcnow()
                values = {
                    "channel_id": channel_id,
                    "role": role,
                    "text": storable(text),
                    "status": str(status),
                    "author_id": storable(author_id),
                    # Display names are unbounded on some platforms; PostgreSQL enforces the
                    # column's length (SQLite does not), so cut it the same way everywhere.
                    "author_name": storable(author_name, NAME_CHARS),
                    "speaker": storable(speaker, SPEAKER_CHARS),
                    "platform_message_id": storable(platform_message_id),
                    "in_reply_to_id": in_reply_to_id,
                    "created_at": now,
                    "updated_at": now,
                }
                # A Core insert, not session.add(): every message stores two rows, and the
                # ORM's unit of work cost about a third of a millisecond more per row.
                new_id = await session.scalar(
                    insert(MessageRow).values(**values).returning(MessageRow.id)
                )
                assert new_id is not None
                stored = _stored(SimpleNamespace(id=new_id, **values), channel_key)
        # Cached only once committed, so a rolled-back channel row is never remembered.
        self._channel_ids[channel_key] = channel_id
        self._turns.appended(channel_id, stored)
        return stored

    async def update(
        self, message_id: int, *, text: str | None = None, status: Status | None = None
    ) -> None:
        text = None if text is None else storable(text)
        values: dict[str, object] = {"updated_at": utcnow()}
        if text is not None:
            values["text"] = text
        if status is not None:
            values["status"] = str(status)
        try:
            with self._turns.writing():
                async with self._db.session() as session, session.begin():
                    # One statement (every reply is updated at least once).
                    channel_id = await session.scalar(
                        update(MessageRow)
                        .where(MessageRow.id == message_id)
                        .values(**values)
                        .returning(MessageRow.channel_id)
                    )
        except (DBAPIError, OSError) as exc:
            raise storage_error(exc) from exc
        if channel_id is None:
            raise KeyError(message_id)
        self._turns.updated(channel_id, message_id, text, status)

    async def get(self, message_id: int) -> StoredMessage | None:
        async with self._db.session() as session:
            result = await session.execute(
                select(MessageRow, ChannelRow.key)
                .join(ChannelRow, ChannelRow.id == MessageRow.channel_id)
                .where(MessageRow.id == message_id)
            )
            found = result.first()
            return None if found is None else _stored(found[0], found[1])

    async def conversation(
        self,
        channel_key: str,
        *,
        before_id: int | None = None,
        since_id: int | None = None,
        limit: int | None = 200,
    ) -> list[StoredMessage]:
        if limit is not None and limit <= 0:
            return []
        channel_id = await self._known_channel_id(channel_key)
        if channel_id is None:
            return []
        turns = self._turns.serve(channel_id, before_id=before_id, since_id=since_id, limit=limit)
        if turns is not None:
            return turns
        # The two reads every message makes (the window since its start; the newest turns)
        # are loaded into the cache whole, without ``before_id``, and answered from it.
        writes = self._turns.writes(channel_id)
        if since_id is not None and limit is None:
            read = await self._read(channel_key, channel_id, since_id=since_id)
            loaded = self._turns.load(channel_id, read, since_id, writes)
        elif since_id is None and limit is not None:
            tail = limit + TAIL_SLACK
            read, floor = tail_floor(await self._read(channel_key, channel_id, limit=tail), tail)
            loaded = self._turns.load(channel_id, read, floor, writes)
        else:
            return await self._read(channel_key, channel_id, before_id, since_id, limit)
        turns = loaded.answer(before_id=before_id, since_id=since_id, limit=limit)
        if turns is None:  # ``before_id`` left fewer than ``limit`` of the tail read
            turns = await self._read(channel_key, channel_id, before_id, since_id, limit)
        return turns

    async def _known_channel_id(self, channel_key: str) -> int | None:
        if channel_key not in self._channel_ids:
            async with self._db.session() as session:
                found = await session.scalar(
                    select(ChannelRow.id).where(ChannelRow.key == channel_key)
                )
            if found is None:
                return None
            self._channel_ids[channel_key] = found
        return self._channel_ids[channel_key]

    async def _read(
        self,
        channel_key: str,
        channel_id: int,
        before_id: int | None = None,
        since_id: int | None = None,
        limit: int | None = None,
    ) -> list[StoredMessage]:
        """``conversation()`` from the database."""
        # A reply sorts right after the turn it answers.
        anchor = func.coalesce(MessageRow.in_reply_to_id, MessageRow.id)
        # Plain rows, not ORM objects: hundreds per read, and nothing is written back.
        query = select(*MESSAGE_COLUMNS).where(MessageRow.channel_id == channel_id)
        if before_id is not None:
            query = query.where(
                or_(MessageRow.id < before_id, MessageRow.in_reply_to_id < before_id)
            )
        if since_id is not None:
            query = query.where(anchor >= since_id)
        query = query.order_by(anchor.desc(), MessageRow.id.desc()).limit(limit)
        # A connection, not a session: nothing here needs the ORM, and a session costs more.
        async with self._db.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return _stored_rows(reversed(rows), channel_key)

    async def count(self, channel_key: str) -> int:
        async with self._db.session() as session:
            total = await session.scalar(
                select(func.count(MessageRow.id))
                .join(ChannelRow, ChannelRow.id == MessageRow.channel_id)
                .where(ChannelRow.key == channel_key)
            )
            return int(total or 0)

    async def channel_state(self, channel_key: str) -> ChannelState:
        state = await self._states.read(channel_key, lambda: self._read_state(channel_key))
        return state or ChannelState()

    async def _read_state(self, channel_key: str) -> ChannelState | None:
        return (await self._read_states(ChannelRow.key == channel_key)).get(channel_key)

    async def warm(self, limit: int = WARM_CHANNELS) -> int:
        """Read ahead the ids and states of the ``limit`` most recently active channels, in
        two statements, so that each one's first message after a start does not wait for
        them; returns how many were cached. Recent turns are not read ahead (memory)."""
        writes = self._states.writes()
        recent = (
            select(MessageRow.channel_id)
            .group_by(MessageRow.channel_id)
            .order_by(func.max(MessageRow.id).desc())
            .limit(limit)
            .subquery()
        )
        states = await self._read_states(ChannelRow.id.in_(select(recent.c.channel_id)))
        return self._states.fill(states, writes)

    async def _read_states(self, channels: ColumnElement[bool]) -> dict[str, ChannelState]:
        """The states of the channels matching ``channels`` (a condition on ChannelRow), by
        key, in two statements; their ids are remembered on the way."""
        async with self._db.session() as session:
            found = (
                await session.execute(
                    select(ChannelRow, SummaryRow)
                    .outerjoin(SummaryRow, SummaryRow.id == ChannelRow.summary_id)
                    .where(channels)
                )
            ).all()
            if not found:
                return {}
            # Each channel's latest summary of its current epoch.
            newest = (
                select(func.max(SummaryRow.id))
                .join(ChannelRow, ChannelRow.id == SummaryRow.channel_id)
                .where(SummaryRow.epoch == ChannelRow.epoch, channels)
                .group_by(SummaryRow.channel_id)
            )
            latest = {
                row.channel_id: row
                for row in await session.scalars(
                    select(SummaryRow).where(SummaryRow.id.in_(newest))
                )
            }
        self._channel_ids.update({channel.key: channel.id for channel, _shown in found})
        return {
            channel.key: _state(channel, shown, latest.get(channel.id)) for channel, shown in found
        }

    async def move_window(
        self, channel_key: str, start_id: int, *, epoch: int, summary_id: int | None = None
    ) -> bool:
        values: dict[str, int] = {"window_start_id": start_id}
        if summary_id is not None:
            values["summary_id"] = summary_id
        moved: bool | None = None  # None: the write failed, perhaps after committing
        try:
            async with self._db.session() as session, session.begin():
                result = await session.execute(
                    update(ChannelRow)
                    .where(ChannelRow.key == channel_key, ChannelRow.epoch == epoch)
                    .where(
                        or_(
                            ChannelRow.window_start_id.is_(None),
                            ChannelRow.window_start_id <= start_id,
                        )
                    )
                    .values(**values)
                )
            moved = bool(getattr(result, "rowcount", 0))
        finally:

            def moved_state(state: ChannelState) -> ChannelState | None:
                """What the write made of the cached state, when that is known."""
                if moved is False:
                    return state  # refused: nothing changed
                if moved and summary_id is None and state.epoch == epoch:
                    return replace(state, window_start_id=start_id)
                return None

            self._states.written(channel_key, moved_state)
        return bool(moved)

    async def add_summary(
        self, channel_key: str, text: str, first_id: int, last_id: int, *, epoch: int
    ) -> Summary | None:
        with self._states.writing(channel_key):
            async with self._db.session() as session, session.begin():
                channel = await session.scalar(
                    select(ChannelRow).where(ChannelRow.key == channel_key).with_for_update()
                )
                if channel is None or channel.epoch != epoch:
                    return None
                row = SummaryRow(
                    channel_id=channel.id,
                    text=storable(text),
                    first_message_id=first_id,
                    last_message_id=last_id,
                    epoch=epoch,
                    created_at=utcnow(),
                )
                session.add(row)
                await session.flush()
                return _summary(row)

    async def reset(self, channel_key: str, after_id: int) -> None:
        await self._update_channel(
            channel_key, window_start_id=after_id + 1, summary_id=None, epoch=ChannelRow.epoch + 1
        )

    async def set_persona(self, channel_key: str, persona: str | None) -> None:
        await self._update_channel(channel_key, persona=persona)

    async def show_speaker_names(self, channel_key: str) -> None:
        await self._update_channel(channel_key, speaker_names=True)

    async def _update_channel(self, channel_key: str, **values: Any) -> None:
        """Set columns of the channel's row (the state cache drops its copy meanwhile)."""
        with self._states.writing(channel_key):
            async with self._db.session() as session, session.begin():
                channel_id = await self._channel_id(session, channel_key)
                await session.execute(
                    update(ChannelRow).where(ChannelRow.id == channel_id).values(**values)
                )
            self._channel_ids[channel_key] = channel_id

    async def move_ambient_start(self, channel_key: str, start_id: int) -> None:
        with self._states.writing(channel_key):
            async with self._db.session() as session, session.begin():
                channel_id = await self._channel_id(session, channel_key)
                await session.execute(
                    update(ChannelRow)
                    .where(ChannelRow.id == channel_id)
                    .where(
                        or_(
                            ChannelRow.ambient_start_id.is_(None),
                            ChannelRow.ambient_start_id < start_id,
                        )
                    )
                    .values(ambient_start_id=start_id)
                )
            self._channel_ids[channel_key] = channel_id

    async def forget_ambient(
        self, channel_key: str, author_id: str, containing: str | None = None
    ) -> int:
        channel_id = await self._known_channel_id(channel_key)
        if channel_id is None:
            return 0
        async with self._db.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(MessageRow.id, MessageRow.text).where(
                        MessageRow.channel_id == channel_id,
                        MessageRow.author_id == author_id,
                        MessageRow.status == str(Status.AMBIENT),
                    )
                )
            ).all()
        # Matched in Python: SQL's case-insensitive LIKE folds only ASCII on SQLite.
        needle = containing.casefold() if containing is not None else None
        ids = [id_ for id_, text in rows if needle is None or needle in text.casefold()]
        for message_id in ids:  # one by one, so the turn cache stays exact
            await self.update(message_id, text="", status=Status.FORGOTTEN)
        return len(ids)

    async def mark_greeted(self, channel_key: str, persona: str) -> bool:
        try:
            async with self._db.session() as session, session.begin():
                channel_id = await self._channel_id(session, channel_key)
                # One statement: two workers (or processes) racing greet once.
                result = await session.execute(
                    update(ChannelRow)
                    .where(ChannelRow.id == channel_id)
                    .where(
                        or_(
                            ChannelRow.greeted_persona.is_(None),
                            ChannelRow.greeted_persona != persona,
                        )
                    )
                    .values(greeted_persona=persona)
                )
        except BaseException:
            self._states.written(channel_key)
            raise
        self._channel_ids[channel_key] = channel_id
        changed = bool(getattr(result, "rowcount", 0))
        if changed:  # asked before every greeting-enabled answer; mostly it changes nothing
            self._states.written(channel_key)
        return changed

    async def summaries(self, channel_key: str) -> list[Summary]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(SummaryRow)
                .join(ChannelRow, ChannelRow.id == SummaryRow.channel_id)
                .where(ChannelRow.key == channel_key)
                .order_by(SummaryRow.id)
            )
            return [_summary(row) for row in rows]

    async def channels(self) -> list[str]:
        async with self._db.session() as session:
            return list(
                (await session.scalars(select(ChannelRow.key).order_by(ChannelRow.id))).all()
            )

    async def interrupt_streaming(self, before_id: int | None = None) -> int:
        query = update(MessageRow).where(
            MessageRow.role == "assistant", MessageRow.status == str(Status.STREAMING)
        )
        if before_id is not None:
            query = query.where(MessageRow.id < before_id)
        try:
            async with self._db.session() as session, session.begin():
                result = await session.execute(query.values(status=str(Status.INTERRUPTED)))
                return int(getattr(result, "rowcount", 0) or 0)
        finally:
            self._turns.clear()

    async def _platform_message(
        self, channel_key: str, platform_message_id: str
    ) -> StoredMessage | None:
        async with self._db.session() as session:
            found = (
                await session.execute(
                    select(MessageRow, ChannelRow.key)
                    .join(ChannelRow, ChannelRow.id == MessageRow.channel_id)
                    .where(ChannelRow.key == channel_key)
                    .where(MessageRow.platform_message_id == storable(platform_message_id))
                )
            ).first()
        return None if found is None else _stored(found[0], found[1])

    async def known_platform_ids(self, channel_key: str, message_ids: Sequence[str]) -> set[str]:
        wanted = {storable(m): m for m in message_ids}
        if not wanted:
            return set()
        channel_id = await self._known_channel_id(channel_key)
        if channel_id is None:
            return set()
        async with self._db.engine.connect() as connection:
            found = await connection.scalars(
                select(MessageRow.platform_message_id)
                .where(MessageRow.channel_id == channel_id)
                .where(MessageRow.platform_message_id.in_(list(wanted)))
            )
            return {wanted[m] for m in found if m is not None}

    async def latest_from_platform(
        self, platform: str, *, since: datetime, limit: int
    ) -> list[StoredMessage]:
        newest = (
            select(func.max(MessageRow.id))
            .where(MessageRow.platform_message_id.is_not(None), MessageRow.created_at >= since)
            .group_by(MessageRow.channel_id)
        )
        query = (
            select(MessageRow, ChannelRow.key)
            .join(ChannelRow, ChannelRow.id == MessageRow.channel_id)
            .where(ChannelRow.platform == platform, MessageRow.id.in_(newest))
            .order_by(MessageRow.id.desc())
            .limit(limit)
        )
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
            return [_stored(row, key) for row, key in rows]

    async def unanswered(
        self, *, since: datetime | None = None, before: datetime | None = None
    ) -> list[StoredMessage]:
        reply = aliased(MessageRow)
        answered = (
            select(reply.id)
            .where(reply.in_reply_to_id == MessageRow.id, reply.role == "assistant")
            .where(reply.status.in_([str(s) for s in ANSWERED]))
            .exists()
        )
        query = (
            select(MessageRow, ChannelRow.key)
            .join(ChannelRow, ChannelRow.id == MessageRow.channel_id)
            .where(MessageRow.role == "user", MessageRow.status == str(Status.RECEIVED))
            .where(~answered)
            .order_by(MessageRow.id)
        )
        if since is not None:
            query = query.where(MessageRow.created_at >= since)
        if before is not None:
            query = query.where(MessageRow.created_at < before)
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
            return [_stored(row, key) for row, key in rows]


# What a StoredMessage holds of a MessageRow.
MESSAGE_COLUMNS = (
    MessageRow.id,
    MessageRow.role,
    MessageRow.text,
    MessageRow.status,
    MessageRow.author_id,
    MessageRow.author_name,
    MessageRow.platform_message_id,
    MessageRow.in_reply_to_id,
    MessageRow.created_at,
    MessageRow.speaker,
)


_STATUSES = {str(status): status for status in Status}


def _stored_rows(rows: Iterable[Any], channel_key: str) -> list[StoredMessage]:
    """Result rows of MESSAGE_COLUMNS, converted as fast as Python allows (hundreds are
    read when a channel's window is first needed)."""
    statuses = _STATUSES
    return [
        StoredMessage(id_, channel_key, role, text, statuses[status], author_id, author_name,
                      platform_id, reply_to, created, speaker)
        for id_, role, text, status, author_id, author_name, platform_id, reply_to, created,
            speaker in rows
    ]  # fmt: skip


def _stored(row: Any, channel_key: str) -> StoredMessage:
    """``row``: a MessageRow, or a result row of MESSAGE_COLUMNS (same attribute names)."""
    return StoredMessage(
        id=row.id,
        channel_key=channel_key,
        role=row.role,
        text=row.text,
        status=Status(row.status),
        author_id=row.author_id,
        author_name=row.author_name,
        platform_message_id=row.platform_message_id,
        in_reply_to_id=row.in_reply_to_id,
        created_at=row.created_at,
        speaker=row.speaker,
    )


def _state(
    channel: ChannelRow, shown: SummaryRow | None, latest: SummaryRow | None
) -> ChannelState:
    return ChannelState(
        channel.window_start_id,
        None if shown is None else _summary(shown),
        channel.epoch,
        None if latest is None else _summary(latest),
        channel.persona,
        channel.greeted_persona,
        bool(channel.speaker_names),
        channel.ambient_start_id,
    )


def _summary(row: SummaryRow) -> Summary:
    return Summary(row.id, row.text, row.first_message_id, row.last_message_id)
