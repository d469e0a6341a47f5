"""The history as a ledger of platform messages (SQLite and PostgreSQL): each is stored once
per channel, a second copy is refused, and a catch-up finds where each channel's stored
history ends. Migration 0007 keeps the first of the copies older databases may hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from agent.runtime.core import DUPLICATE
from agent.runtime.ledger import HistoryLedger
from memory.db import Database, _alembic_config
from memory.history import DuplicateMessageError, SqlHistoryStore
from memory.records import Status
from tests.support.core import make_core
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound
from tests.support.postgres import ALL_KINDS, open_database

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=ALL_KINDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with open_database(request.param, tmp_path, request) as db:
        yield db


@pytest.fixture
def history(database: Database) -> SqlHistoryStore:
    return SqlHistoryStore(database)


async def test_a_platform_message_is_stored_once_per_channel(history: SqlHistoryStore) -> None:
    first = await history.append("discord:1", "user", "hi", platform_message_id="42")
    with pytest.raises(DuplicateMessageError) as again:
        await history.append("discord:1", "user", "hi again", platform_message_id="42")
    assert again.value.existing == first
    # Another channel, or no platform id at all (replies, the console), never collide.
    await history.append("discord:2", "user", "elsewhere", platform_message_id="42")
    await history.append("discord:1", "assistant", "one")
    await history.append("discord:1", "assistant", "two")
    assert [m.text for m in await history.conversation("discord:1")] == ["hi", "one", "two"]
    assert await history.known_platform_ids("discord:1", ["41", "42", "43"]) == {"42"}
    assert await history.known_platform_ids("discord:9", ["42"]) == set()


async def test_two_deliveries_at_once_store_one(history: SqlHistoryStore) -> None:
    results = await asyncio.gather(
        *(
            history.append("matrix:!r:x", "user", "once", platform_message_id="$e")
            for _ in range(5)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(
        isinstance(r, DuplicateMessageError) for r in results if isinstance(r, BaseException)
    )
    assert await history.count("matrix:!r:x") == 1


async def test_the_core_answers_a_message_delivered_twice_once(history: SqlHistoryStore) -> None:
    generator = FakeGenerator()
    core = make_core(history, generator, summaries=False)
    adapter = RecordingAdapter()
    message = replace(inbound("only once"), message_id="m-1")
    first = await (await core.submit(message, adapter))
    second = await (await core.submit(message, adapter))
    assert first.status is Status.DONE
    assert (second.status, second.error, second.user_message_id) == (
        Status.SKIPPED, DUPLICATE, first.user_message_id
    )  # fmt: skip
    assert len(generator.calls) == 1
    assert len(adapter.replies) == 1


async def test_the_ledger_finds_where_each_recent_channel_ends(history: SqlHistoryStore) -> None:
    async def stored(key: str, pid: str | None, age: timedelta) -> None:
        await history.append(key, "user", f"{key} {pid}", platform_message_id=pid,
                             created_at=NOW - age)  # fmt: skip

    await stored("discord:1", "100", timedelta(hours=3))
    await stored("discord:1", "101", timedelta(hours=2))
    await history.append("discord:1", "assistant", "a reply")  # no platform id: not a mark
    await stored("discord:2", "interaction:7", timedelta(minutes=5))
    await stored("discord:3", "300", timedelta(days=30))  # not active any more
    await stored("matrix:!r:x", "$e", timedelta(minutes=1))  # another platform
    ledger = HistoryLedger(history, timedelta(minutes=30), now=lambda: NOW)
    marks = await ledger.active_channels("discord")
    assert [(m.channel_key, m.message_id, m.at) for m in marks] == [
        ("discord:2", "interaction:7", NOW - timedelta(minutes=5)),
        ("discord:1", "101", NOW - timedelta(hours=2)),
    ]
    assert await ledger.stored("discord:1", ["100", "102"]) == {"100"}
    off = HistoryLedger(history, timedelta(0), now=lambda: NOW)
    assert await off.active_channels("discord") == []  # max_age 0: no catch-up


@pytest.mark.parametrize("kind", ["sqlite-file", "postgresql"])
async def test_migration_0007_keeps_the_first_copy_of_a_duplicate(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with open_database(kind, tmp_path, request) as db:
        async with db.engine.begin() as conn:
            await conn.run_sync(lambda sync: command.downgrade(_alembic_config(sync), "0006"))
            await conn.execute(
                text(
                    "INSERT INTO channels (id, key, platform, epoch, created_at) "
                    "VALUES (1, 'd:1', 'd', 0, :now)"
                ),
                {"now": NOW},
            )
            for n, pid in enumerate(["7", "7", "8", "7"], 1):
                await conn.execute(
                    text(
                        "INSERT INTO messages (id, channel_id, role, text, status, "
                        "platform_message_id, created_at, updated_at) VALUES "
                        "(:id, 1, 'user', :t, 'done', :pid, :now, :now)"
                    ),
                    {"id": n, "t": f"copy {n}", "pid": pid, "now": NOW},
                )
        await db.migrate()
        async with db.engine.connect() as conn:
            rows = (
                await conn.execute(text("SELECT id, platform_message_id FROM messages ORDER BY id"))
            ).all()
        assert [tuple(r) for r in rows] == [(1, "7"), (2, None), (3, "8"), (4, None)]
        with pytest.raises(DuplicateMessageError):
            await SqlHistoryStore(db).append("d:1", "user", "again", platform_message_id="8")
