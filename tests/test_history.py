"""HistoryStore contract: the same assertions for every database.

SQLite (a file and in memory) always; PostgreSQL when its binaries are installed (see
tests/postgres.py, which starts a throwaway server; skipped with the reason otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, String, text
from sqlalchemy.types import TypeEngine

from memory.db import Database, DatabaseError, head_revision
from memory.history import SqlHistoryStore
from memory.models import Base
from memory.records import ChannelState, Status
from tests.support.postgres import ALL_KINDS, open_database


@pytest.fixture(params=ALL_KINDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with open_database(request.param, tmp_path, request) as db:
        yield db


async def test_append_and_get_round_trip(history: SqlHistoryStore) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    stored = await history.append(
        "discord:1", "user", "привет, Beseda", status=Status.RECEIVED,
        author_id="42", author_name="Маша", platform_message_id="m-1", created_at=when,
    )  # fmt: skip
    again = await history.get(stored.id)
    assert again == stored
    assert again is not None
    assert again.text == "привет, Beseda"
    assert again.status is Status.RECEIVED
    assert again.created_at == when
    assert again.created_at.tzinfo is not None
    assert await history.get(stored.id + 1000) is None


async def test_the_longest_matrix_thread_key_is_stored(history: SqlHistoryStore) -> None:
    # Room and event ids may each be 255 bytes (Matrix spec); a thread's key holds both.
    room = "!" + "r" * 200 + ":" + "s" * 53
    key = f"matrix:{room}/${'e' * 254}"
    assert len(key) == 518
    stored = await history.append(key, "user", "привет из треда")
    assert [t.id for t in await history.conversation(key)] == [stored.id]
    await history.move_window(key, stored.id, epoch=0)
    fresh = SqlHistoryStore(history._db)  # no cache: read from the database
    assert [t.text for t in await fresh.conversation(key)] == ["привет из треда"]
    assert (await fresh.channel_state(key)).window_start_id == stored.id


async def test_update_changes_text_and_status(history: SqlHistoryStore) -> None:
    stored = await history.append("c:1", "assistant", "", status=Status.STREAMING)
    await history.update(stored.id, text="done now", status=Status.DONE)
    again = await history.get(stored.id)
    assert again is not None
    assert (again.text, again.status) == ("done now", Status.DONE)


async def test_conversation_is_oldest_first_and_limited(history: SqlHistoryStore) -> None:
    for i in range(5):
        await history.append("c:1", "user", f"m{i}")
    recent = await history.conversation("c:1", limit=3)
    assert [m.text for m in recent] == ["m2", "m3", "m4"]
    assert await history.conversation("c:1", limit=0) == []
    assert await history.conversation("unknown:1") == []


async def test_channels_are_isolated(history: SqlHistoryStore) -> None:
    await history.append("discord:1", "user", "one")
    await history.append("matrix:!a:b", "user", "two")
    assert [m.text for m in await history.conversation("discord:1")] == ["one"]
    assert [m.text for m in await history.conversation("matrix:!a:b")] == ["two"]
    assert await history.count("discord:1") == 1
    assert await history.channels() == ["discord:1", "matrix:!a:b"]


async def test_reply_sorts_after_the_turn_it_answers(history: SqlHistoryStore) -> None:
    # Two user turns arrive before the first is answered; the answer is stored last.
    first = await history.append("c:1", "user", "first")
    second = await history.append("c:1", "user", "second")
    await history.append("c:1", "assistant", "answer to first", in_reply_to_id=first.id)
    texts = [m.text for m in await history.conversation("c:1")]
    assert texts == ["first", "answer to first", "second"]
    # What precedes the second turn: the first turn and its answer, not the second itself.
    before = [m.text for m in await history.conversation("c:1", before_id=second.id)]
    assert before == ["first", "answer to first"]
    assert await history.conversation("c:1", before_id=first.id) == []


async def test_concurrent_appends_to_a_new_channel(history: SqlHistoryStore) -> None:
    await asyncio.gather(*(history.append("new:1", "user", f"m{i}") for i in range(10)))
    assert await history.count("new:1") == 10
    assert await history.channels() == ["new:1"]


async def test_timestamps_must_be_aware(history: SqlHistoryStore) -> None:
    naive = datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the test
    with pytest.raises(Exception, match="naive datetime"):
        await history.append("c:1", "user", "x", created_at=naive)
    assert await history.count("c:1") == 0


async def test_migrations_are_idempotent_and_at_head(database: Database) -> None:
    await database.migrate()
    assert await database.revision() == head_revision()


async def test_the_window_moves_forward_only(history: SqlHistoryStore) -> None:
    first = await history.append("c:1", "user", "one")
    second = await history.append("c:1", "user", "two")
    state = await history.channel_state("c:1")
    assert (state.window_start_id, state.summary, state.epoch) == (None, None, 0)
    assert await history.move_window("c:1", second.id, epoch=0)
    assert not await history.move_window("c:1", first.id, epoch=0)  # never backwards
    assert not await history.move_window("c:1", second.id + 1, epoch=1)  # stale epoch
    assert (await history.channel_state("c:1")).window_start_id == second.id
    assert [m.text for m in await history.conversation("c:1", since_id=second.id)] == ["two"]
    assert await history.channel_state("unknown:1") == ChannelState()


async def test_summaries_belong_to_an_epoch(history: SqlHistoryStore) -> None:
    first = await history.append("c:1", "user", "one")
    second = await history.append("c:1", "user", "two")
    summary = await history.add_summary("c:1", "they said one", first.id, first.id, epoch=0)
    assert summary is not None
    state = await history.channel_state("c:1")
    assert state.summary is None  # made ahead of the eviction: not shown yet
    assert state.latest_summary == summary
    assert await history.move_window("c:1", second.id, epoch=0, summary_id=summary.id)
    assert (await history.channel_state("c:1")).summary == summary
    assert await history.add_summary("c:1", "late", first.id, first.id, epoch=5) is None
    assert await history.add_summary("nobody:1", "x", 1, 1, epoch=0) is None
    assert [s.text for s in await history.summaries("c:1")] == ["they said one"]


async def test_reset_starts_a_new_epoch_and_keeps_history(history: SqlHistoryStore) -> None:
    first = await history.append("c:1", "user", "one")
    summary = await history.add_summary("c:1", "s", first.id, first.id, epoch=0)
    assert summary is not None
    await history.move_window("c:1", first.id, epoch=0, summary_id=summary.id)
    await history.reset("c:1", first.id)
    state = await history.channel_state("c:1")
    assert (state.window_start_id, state.summary, state.epoch) == (first.id + 1, None, 1)
    assert state.latest_summary is None  # the old summary belongs to epoch 0
    assert await history.count("c:1") == 1
    await history.reset("fresh:1", 0)  # a channel that had no messages yet
    assert (await history.channel_state("fresh:1")).epoch == 1


async def test_warm_reads_ahead_the_states_of_the_most_active_channels(
    history: SqlHistoryStore,
) -> None:
    await history.append("d:4", "user", "the least recently active channel")
    one = await history.append("a:1", "user", "one")
    two = await history.append("a:1", "user", "two")
    shown = await history.add_summary("a:1", "shown", one.id, one.id, epoch=0)
    assert shown is not None
    assert await history.move_window("a:1", two.id, epoch=0, summary_id=shown.id)
    await history.add_summary("a:1", "ready, not shown yet", one.id, two.id, epoch=0)
    await history.set_persona("a:1", "pirate")
    assert await history.mark_greeted("a:1", "pirate")
    old = await history.append("b:2", "user", "before the reset")
    await history.add_summary("b:2", "of epoch 0", old.id, old.id, epoch=0)
    await history.reset("b:2", old.id)
    new = await history.append("b:2", "user", "after the reset")
    await history.add_summary("b:2", "of epoch 1", new.id, new.id, epoch=1)
    await history.append("c:3", "user", "a channel with no state yet")

    warmed = SqlHistoryStore(history._db)
    assert await warmed.warm(limit=3) == 3
    reads: list[str] = []
    read_state = warmed._read_state

    async def counted(key: str) -> ChannelState | None:
        reads.append(key)
        return await read_state(key)

    warmed._read_state = counted  # type: ignore[method-assign]
    for key in ("a:1", "b:2", "c:3", "d:4"):
        assert await warmed.channel_state(key) == await SqlHistoryStore(history._db).channel_state(
            key
        )
    assert reads == ["d:4"]  # read ahead: all but the least recently active one
    state = await warmed.channel_state("a:1")
    assert (state.summary, state.persona, state.greeted_persona) == (shown, "pirate", "pirate")
    assert state.latest_summary is not None
    assert state.latest_summary.text.startswith("ready")
    latest = (await history.summaries("b:2"))[-1]
    assert (latest.text, (await warmed.channel_state("b:2")).latest_summary) == (
        "of epoch 1",
        latest,
    )
    assert await SqlHistoryStore(history._db).warm() == 4
    assert await warmed.warm() == 0  # cached already: nothing replaced


async def test_text_survives_byte_for_byte(history: SqlHistoryStore) -> None:
    # Cyrillic, emoji, right-to-left and zero-width characters, quotes, a long text.
    tricky = "Привет 👋 \u202eabc\u200b 'quoted' \"double\" %s %% \\ " + "x" * 70_000
    stored = await history.append("c:1", "user", tricky)
    again = await history.get(stored.id)
    assert again is not None
    assert again.text == tricky


async def test_sqlite_file_uses_wal(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'h.db'}")
    await db.migrate()
    async with db.engine.connect() as conn:
        mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
    await db.close()
    assert mode == "wal"


async def test_history_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'h.db'}"
    db = Database(url)
    await db.migrate()
    await SqlHistoryStore(db).append("c:1", "user", "remember me")
    await db.close()
    db = Database(url)
    await db.migrate()
    texts = [m.text for m in await SqlHistoryStore(db).conversation("c:1")]
    await db.close()
    assert texts == ["remember me"]


def test_bad_database_url_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match=r"\[storage\] database_url"):
        Database("not a url")


def same_type(
    context: MigrationContext, _found_column: object, _declared_column: object,
    found: TypeEngine[Any], declared: TypeEngine[Any],
) -> bool | None:  # fmt: skip
    """As Alembic compares types, except a VARCHAR's length on SQLite, which does not enforce
    it (migration 0005 widens a column on PostgreSQL only)."""
    if context.dialect.name == "sqlite" and isinstance(found, String):
        return not isinstance(declared, String)  # True: a difference
    return None  # Alembic's own comparison


# Alembic cannot reflect SQLite's expression indexes (ix_messages_channel_anchor) and says
# so; tests/test_history_cache.py checks that index through the query plan instead.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
async def test_migrations_build_the_schema_the_models_describe(database: Database) -> None:
    def differences(sync_conn: Connection) -> list[object]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": same_type})
        return list(compare_metadata(context, Base.metadata))

    async with database.engine.connect() as conn:
        assert await conn.run_sync(differences) == []


async def test_an_overlong_author_name_is_cut_not_refused(history: SqlHistoryStore) -> None:
    # Display names are unbounded on some platforms; the column holds 255 characters, which
    # SQLite does not enforce and PostgreSQL does.
    stored = await history.append("c:1", "user", "hi", author_name="Щ" * 300, author_id="7")
    again = await history.get(stored.id)
    assert again is not None
    assert again.author_name == "Щ" * 255
    assert stored == again


async def test_nul_characters_are_dropped_on_every_database(history: SqlHistoryStore) -> None:
    # PostgreSQL refuses NUL in text; a platform name or the model's output may carry one.
    stored = await history.append("c:1", "user", "a\x00b", author_name="x\x00y", author_id="1\x00")
    await history.update(stored.id, text="c\x00d")
    summary = await history.add_summary("c:1", "s\x00t", stored.id, stored.id, epoch=0)
    again = await history.get(stored.id)
    assert again is not None
    assert (again.text, again.author_name, again.author_id) == ("cd", "xy", "1")
    assert summary is not None
    assert [s.text for s in await history.summaries("c:1")] == ["st"]


async def test_a_turn_keeps_its_speaker_label(history: SqlHistoryStore) -> None:
    stored = await history.append(
        "c:1", "user", "hi", author_id="7", author_name="Alex", speaker="Alex #1a2b"
    )
    [read] = await history.conversation("c:1")
    again = await history.get(stored.id)
    assert read.speaker == "Alex #1a2b"
    assert again == read == stored
    older = await history.append("c:1", "user", "no label", author_id="8", author_name="Bo")
    assert (await history.conversation("c:1"))[-1].speaker is None
    assert older.speaker is None


async def test_speaker_names_stay_on_once_shown(history: SqlHistoryStore) -> None:
    await history.append("c:1", "user", "hi")
    assert not (await history.channel_state("c:1")).speaker_names
    await history.show_speaker_names("c:1")
    await history.reset("c:1", after_id=1)
    assert (await history.channel_state("c:1")).speaker_names
    assert not (await history.channel_state("c:2")).speaker_names


async def test_ambient_turns_are_never_unanswered_and_can_be_withdrawn(
    history: SqlHistoryStore,
) -> None:
    def said(text: str, author: str, status: Status) -> Any:
        return history.append(
            "c:1", "user", text, status=status, author_id=author, author_name=author
        )

    await said("Alice thinks aloud", "alice", Status.AMBIENT)
    await said("ALICE again, Ünïcode", "alice", Status.AMBIENT)
    await said("bob's aside", "bob", Status.AMBIENT)
    asked = await said("a question", "alice", Status.RECEIVED)
    assert [m.id for m in await history.unanswered()] == [asked.id]
    # Only the author's own ambient turns, matched case-insensitively (beyond ASCII too).
    assert await history.forget_ambient("c:1", "alice", "üNÏCODE") == 1
    assert await history.forget_ambient("c:1", "alice") == 1
    assert await history.forget_ambient("c:1", "alice") == 0
    assert await history.forget_ambient("c:9", "alice") == 0
    rows = [(m.author_id, m.text, m.status) for m in await history.conversation("c:1")]
    assert rows == [
        ("alice", "", Status.FORGOTTEN),
        ("alice", "", Status.FORGOTTEN),
        ("bob", "bob's aside", Status.AMBIENT),
        ("alice", "a question", Status.RECEIVED),
    ]
    assert [m.id for m in await history.unanswered()] == [asked.id]
