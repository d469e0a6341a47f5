"""A database that is read-only, full or locked, made so by SQLite itself: the person is told
the message could not be taken (it cannot be stored, so it will never be answered), the bot
keeps running, and answers again once the database is back."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from agent.runtime.core import STORAGE_NOTICE, Core
from memory.db import Database, StorageError
from memory.history import SqlHistoryStore
from memory.records import Status
from tests.support import discord_fake as fk
from tests.support.core import make_core
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound
from tests.test_discord import MENTION, StartBot, fake, start_bot  # noqa: F401 (fixtures)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'beseda.db'}", lock_timeout=0.2)
    await database.migrate()
    yield database
    await database.close()


@contextlib.asynccontextmanager
async def pragma(db: Database, statement: str) -> AsyncIterator[None]:
    """Every connection runs ``statement`` (a SQLite setting) until the block ends."""

    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(statement)
        cursor.close()

    event.listen(db.engine.sync_engine, "connect", apply)
    await db.engine.dispose()  # open connections do not have it yet
    try:
        yield
    finally:
        event.remove(db.engine.sync_engine, "connect", apply)
        await db.engine.dispose()


def page_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(conn.execute("PRAGMA page_count").fetchone()[0])


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another program holds the write lock (a backup tool, a second writer)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


async def refused(core: Core, adapter: RecordingAdapter, text: str, reason: str) -> None:
    with pytest.raises(StorageError, match=re.escape(reason)):
        await core.submit(inbound(text), adapter)
    assert adapter.replies[-1].failure == STORAGE_NOTICE.format(reason=f"the database is {reason}")


async def test_a_read_only_full_or_locked_database_is_told_and_outlived(
    db: Database, tmp_path: Path
) -> None:
    history = SqlHistoryStore(db)
    core = make_core(history, FakeGenerator(), summaries=False)
    adapter = RecordingAdapter()
    assert (await (await core.submit(inbound("before"), adapter))).status is Status.DONE

    async with pragma(db, "PRAGMA query_only = ON"):
        await refused(core, adapter, "while read-only", "read-only")
    full = page_count(tmp_path / "beseda.db")
    async with pragma(db, f"PRAGMA max_page_count = {full}"):
        # A long message needs new pages, and there are none.
        await refused(core, adapter, "x" * 19_000, "full (no space left)")
    with locked(tmp_path / "beseda.db"):
        await refused(core, adapter, "while locked", "locked by another program")

    reply = await (await core.submit(inbound("after"), adapter))
    assert reply.status is Status.DONE
    texts = [(m.role, m.text) for m in await history.conversation("test:1")]
    assert texts == [
        ("user", "before"), ("assistant", "echo: before"),
        ("user", "after"), ("assistant", "echo: after"),
    ]  # fmt: skip


async def test_a_reply_that_cannot_be_stored_says_why(db: Database, tmp_path: Path) -> None:
    history = SqlHistoryStore(db)
    generator = FakeGenerator(lambda _m: "y" * 19_000)  # the reply needs new pages
    core = make_core(history, generator, summaries=False)
    adapter = RecordingAdapter()
    full = page_count(tmp_path / "beseda.db") + 2  # room for the question, not the answer
    async with pragma(db, f"PRAGMA max_page_count = {full}"):
        reply = await (await core.submit(inbound("a long answer, please"), adapter))
    assert reply.status is Status.FAILED
    assert "the database is full" in (adapter.replies[-1].failure or "")
    [user] = [m for m in await history.conversation("test:1") if m.role == "user"]
    assert user.text == "a long answer, please"  # the question is kept


async def test_on_discord_the_person_sees_why_and_the_bot_keeps_running(
    start_bot: StartBot,  # noqa: F811
    fake: fk.DiscordFake,  # noqa: F811
) -> None:
    bot = await start_bot()
    history = bot.core.history
    assert isinstance(history, SqlHistoryStore)
    db = history._db
    async with pragma(db, "PRAGMA query_only = ON"):
        await fake.message_create(f"{MENTION} are you there?", mentions=[fake.bot])
        [notice] = await bot.answered(1)
    assert notice == STORAGE_NOTICE.format(reason="the database is read-only")
    await fake.message_create(f"{MENTION} and now?", mentions=[fake.bot])
    assert (await bot.answered(2))[1] == "echo: and now?"
