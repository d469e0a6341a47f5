"""The history store's in-memory caches never serve stale rows, and its hot reads use the
conversation-order index.

The oracle for cached reads is the database itself: a whole-history read (no ``since_id``,
no ``limit``, which the store always answers with SQL) filtered here, or a fresh store over
the same database (empty caches).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, or_, select, text
from sqlalchemy.dialects import sqlite

from memory import history as history_module
from memory import turn_cache as turn_cache_module
from memory.channel_cache import ChannelCache
from memory.db import Database
from memory.history import SqlHistoryStore
from memory.models import MessageRow
from memory.records import ChannelState, Status, StoredMessage
from memory.turn_cache import TurnCache, anchor_of


async def oracle(
    db: Database,
    key: str,
    *,
    before_id: int | None = None,
    since_id: int | None = None,
    limit: int | None = None,
) -> list[StoredMessage]:
    """``conversation()`` straight from the database, by a store with empty caches."""
    turns = await SqlHistoryStore(db).conversation(key, before_id=before_id, limit=None)
    if since_id is not None:
        turns = [t for t in turns if anchor_of(t) >= since_id]
    return turns if limit is None else turns[-limit:] if limit > 0 else []


async def test_an_update_is_seen_by_the_next_cached_read(history: SqlHistoryStore) -> None:
    question = await history.append("c:1", "user", "hi", status=Status.RECEIVED)
    reply = await history.append(
        "c:1", "assistant", "", status=Status.STREAMING, in_reply_to_id=question.id
    )
    before = await history.conversation("c:1", limit=50)  # loads the cache
    assert before[-1].status is Status.STREAMING
    await history.update(reply.id, text="hello\x00 there", status=Status.DONE)
    after = await history.conversation("c:1", limit=50)
    assert (after[-1].text, after[-1].status) == ("hello there", Status.DONE)
    assert after == await history.conversation("c:1", since_id=question.id, limit=None)
    assert await history.get(reply.id) == after[-1]


async def test_appends_reach_both_cached_read_shapes(history: SqlHistoryStore) -> None:
    first = await history.append("c:1", "user", "one")
    await history.conversation("c:1", limit=10)
    await history.conversation("c:1", since_id=first.id, limit=None)
    second = await history.append("c:1", "user", "two")
    late = await history.append("c:1", "assistant", "to one", in_reply_to_id=first.id)
    texts = ["one", "to one", "two"]
    assert [t.text for t in await history.conversation("c:1", limit=10)] == texts
    window = await history.conversation("c:1", since_id=first.id, limit=None)
    assert [t.text for t in window] == texts
    earlier = await history.conversation("c:1", before_id=second.id, since_id=first.id)
    assert [t.id for t in earlier] == [first.id, late.id]


async def test_a_tail_read_never_answers_for_an_exchange_it_cut(
    history: SqlHistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_module, "TAIL_SLACK", 0)
    first = await history.append("c:1", "user", "q1")
    await history.append("c:1", "user", "q2")
    await history.append("c:1", "assistant", "a1", in_reply_to_id=first.id)
    # The newest two are q2 and a1: q1, in a1's exchange, was cut by the limit.
    assert [t.text for t in await history.conversation("c:1", limit=2)] == ["a1", "q2"]
    window = await history.conversation("c:1", since_id=first.id, limit=None)
    assert [t.text for t in window] == ["q1", "a1", "q2"]


async def test_channel_state_follows_every_state_write(history: SqlHistoryStore) -> None:
    stored = await history.append("c:1", "user", "hi")
    assert (await history.channel_state("c:1")).window_start_id is None  # cached now
    assert await history.move_window("c:1", stored.id, epoch=0)
    assert (await history.channel_state("c:1")).window_start_id == stored.id
    summary = await history.add_summary("c:1", "a summary", stored.id, stored.id, epoch=0)
    assert (await history.channel_state("c:1")).latest_summary == summary
    await history.set_persona("c:1", "pirate")
    assert (await history.channel_state("c:1")).persona == "pirate"
    assert await history.mark_greeted("c:1", "pirate")
    assert (await history.channel_state("c:1")).greeted_persona == "pirate"
    assert not await history.mark_greeted("c:1", "pirate")  # no change, entry kept
    assert (await history.channel_state("c:1")).greeted_persona == "pirate"
    assert await history.mark_greeted("c:1", "robot")
    assert (await history.channel_state("c:1")).greeted_persona == "robot"
    await history.reset("c:1", after_id=stored.id)
    state = await history.channel_state("c:1")
    assert (state.window_start_id, state.epoch, state.summary) == (stored.id + 1, 1, None)
    assert state == await SqlHistoryStore(history._db).channel_state("c:1")


async def test_a_window_moved_without_a_summary_stays_cached(history: SqlHistoryStore) -> None:
    first = await history.append("c:1", "user", "one")
    second = await history.append("c:1", "user", "two")
    await history.channel_state("c:1")  # cached now
    reads = 0
    read_state = history._read_state

    async def counted(key: str) -> ChannelState | None:
        nonlocal reads
        reads += 1
        return await read_state(key)

    history._read_state = counted  # type: ignore[method-assign]
    fresh = SqlHistoryStore(history._db)
    assert await history.move_window("c:1", second.id, epoch=0)
    assert await history.channel_state("c:1") == await fresh.channel_state("c:1")
    assert not await history.move_window("c:1", first.id, epoch=0)  # never backwards
    assert not await history.move_window("c:1", second.id + 1, epoch=5)  # another epoch
    assert await history.channel_state("c:1") == await SqlHistoryStore(history._db).channel_state(
        "c:1"
    )
    assert reads == 0
    summary = await history.add_summary("c:1", "s", first.id, first.id, epoch=0)
    assert summary is not None
    assert await history.move_window("c:1", second.id, epoch=0, summary_id=summary.id)
    assert (await history.channel_state("c:1")).summary == summary  # read again
    assert reads == 1


async def test_updating_an_unknown_message_is_a_key_error(history: SqlHistoryStore) -> None:
    with pytest.raises(KeyError):
        await history.update(12345, text="nobody")


async def test_interrupt_streaming_is_seen_by_cached_reads(history: SqlHistoryStore) -> None:
    question = await history.append("c:1", "user", "hi", status=Status.RECEIVED)
    await history.append(
        "c:1", "assistant", "hal", status=Status.STREAMING, in_reply_to_id=question.id
    )
    await history.conversation("c:1", limit=5)
    assert await history.interrupt_streaming() == 1
    assert (await history.conversation("c:1", limit=5))[-1].status is Status.INTERRUPTED


# -- the caches' race rules, step by step -------------------------------------------------


WHEN = datetime(2026, 11, 23, tzinfo=UTC)


def turn(message_id: int, reply_to: int | None = None) -> StoredMessage:
    return StoredMessage(
        message_id, "c:1", "user", f"t{message_id}", Status.DONE, None, None, None, reply_to,
        WHEN,
    )  # fmt: skip


def test_a_load_that_raced_an_update_is_not_kept() -> None:
    cache = TurnCache()
    token = cache.writes(7)
    cache.appended(7, turn(3))
    cache.updated(7, 2, "changed", None)  # committed while the load below was reading
    loaded = cache.load(7, [turn(1), turn(2)], 0, token)
    assert loaded.answer(before_id=None, since_id=None, limit=2) == [turn(1), turn(2)]
    assert cache.serve(7, before_id=None, since_id=0, limit=None) is None


def test_a_load_that_raced_appends_is_kept_with_them() -> None:
    cache = TurnCache()
    token = cache.writes(7)
    cache.appended(8, turn(3))  # another channel: irrelevant
    cache.appended(7, turn(4, reply_to=2))  # committed while the load below was reading...
    cache.appended(7, turn(5))
    cache.load(7, [turn(1), turn(2), turn(4, reply_to=2)], 0, token)  # ...seen by it or not
    assert cache.serve(7, before_id=None, since_id=0, limit=None) == [
        turn(1), turn(2), turn(4, reply_to=2), turn(5)
    ]  # fmt: skip


def test_a_load_is_not_kept_once_the_appends_it_raced_are_forgotten() -> None:
    cache = TurnCache()
    token = cache.writes(7)
    for message_id in range(3, 3 + turn_cache_module.APPEND_LOG + 1):
        cache.appended(7, turn(message_id))
    cache.load(7, [turn(1)], 0, token)
    assert cache.serve(7, before_id=None, since_id=0, limit=None) is None


@pytest.mark.parametrize("seen", [True, False], ids=["read-sees-it", "read-misses-it"])
async def test_a_reply_row_written_during_a_cold_read_is_cached(
    history: SqlHistoryStore, seen: bool
) -> None:
    """Core writes a reply's row while its prompt reads the history (both at once)."""
    asked = await history.append("c:1", "user", "hi", status=Status.RECEIVED)
    cold = SqlHistoryStore(history._db)  # empty caches, same database
    read = cold._read
    replies: list[StoredMessage] = []

    async def racing_read(*args: Any, **kwargs: Any) -> list[StoredMessage]:
        """The read, with the reply row committed just before or just after it."""
        append = cold.append(
            "c:1", "assistant", "", status=Status.STREAMING, in_reply_to_id=asked.id
        )
        if seen:
            replies.append(await append)
        turns = await read(*args, **kwargs)
        if not seen:
            replies.append(await append)
        return turns

    cold._read = racing_read  # type: ignore[method-assign]
    assert await cold.conversation("c:1", before_id=asked.id, limit=50) == []

    async def no_database(*_args: Any, **_kwargs: Any) -> list[StoredMessage]:
        raise AssertionError("read from the database, not from the cache")

    cold._read = no_database  # type: ignore[method-assign]
    assert await cold.conversation("c:1", limit=50) == [asked, *replies]
    assert await cold.conversation("c:1", limit=50) == await oracle(history._db, "c:1")


def test_a_failed_write_forgets_every_channel() -> None:
    cache = TurnCache()
    cache.load(7, [turn(1)], 0, cache.writes(7))
    token = cache.writes(8)
    with pytest.raises(asyncio.CancelledError), cache.writing():
        raise asyncio.CancelledError  # perhaps after its commit
    assert cache.serve(7, before_id=None, since_id=0, limit=None) is None
    cache.load(8, [turn(2)], 0, token)  # started before the failed write: not kept
    assert cache.serve(8, before_id=None, since_id=0, limit=None) is None


def test_a_full_channel_raises_its_floor_in_whole_exchanges() -> None:
    cache = TurnCache(max_turns=4, keep_turns=3)
    cache.load(7, [turn(1), turn(2, reply_to=1), turn(3)], 0, cache.writes(7))
    cache.appended(7, turn(4))
    cache.appended(7, turn(5, reply_to=4))  # 5 turns: keep the newest 3, whole exchanges
    assert cache.serve(7, before_id=None, since_id=3, limit=None) == [
        turn(3), turn(4), turn(5, reply_to=4)
    ]  # fmt: skip
    assert cache.serve(7, before_id=None, since_id=1, limit=None) is None  # below the floor
    assert cache.serve(7, before_id=None, since_id=None, limit=3) is not None
    split = TurnCache(max_turns=4, keep_turns=2)
    split.load(7, [turn(1), turn(2), turn(3)], 0, split.writes(7))
    split.appended(7, turn(4, reply_to=3))
    split.appended(7, turn(5))  # keeping 2 would split 3's exchange: keep only 5
    assert split.serve(7, before_id=None, since_id=5, limit=None) == [turn(5)]
    assert split.serve(7, before_id=None, since_id=3, limit=None) is None


def test_the_cache_keeps_within_its_channel_and_character_limits() -> None:
    cache = TurnCache(max_channels=2, max_chars=10)
    for channel_id in (1, 2, 3):
        cache.load(channel_id, [turn(channel_id)], 0, cache.writes(channel_id))
    assert cache.serve(1, before_id=None, since_id=0, limit=None) is None  # least recent
    assert cache.serve(3, before_id=None, since_id=0, limit=None) == [turn(3)]
    cache.updated(3, 3, "a much longer text", None)  # 18 characters: over the limit
    assert cache.serve(2, before_id=None, since_id=0, limit=None) is None
    assert cache.serve(3, before_id=None, since_id=0, limit=None) is None


async def test_a_state_read_that_raced_a_write_is_not_kept() -> None:
    cache: ChannelCache[str] = ChannelCache()

    async def load() -> str:
        cache.written("c:1")  # a write commits while this read is in flight
        return "old"

    assert await cache.read("c:1", load) == "old"

    async def fresh() -> str:
        return "new"

    assert await cache.read("c:1", fresh) == "new"


def test_a_bulk_fill_skips_what_was_written_during_its_read() -> None:
    cache: ChannelCache[str] = ChannelCache(max_channels=3)
    before = cache.writes()
    cache.written("c:2")  # committed while the bulk read was in flight
    assert cache.fill({"c:1": "read", "c:2": "maybe stale"}, before) == 1
    assert cache.fill({"c:1": "again", "c:3": "read", "c:4": "r", "c:5": "r"}, cache.writes()) == 2
    loads: list[str] = []

    def loader(key: str) -> Callable[[], Awaitable[str]]:
        async def load() -> str:
            loads.append(key)
            return "loaded"

        return load

    async def read_all() -> list[str | None]:
        return [await cache.read(k, loader(k)) for k in ("c:1", "c:3", "c:2")]

    assert asyncio.run(read_all()) == ["read", "read", "loaded"]
    assert loads == ["c:2"]  # c:5 found the cache full


# -- the property: any sequence of writes, any read shape ---------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("ask"), st.sampled_from(["a:1", "b:2"])),
        st.tuples(st.just("reply"), st.integers(0, 40)),
        st.tuples(st.just("update"), st.integers(0, 40)),
        st.tuples(st.just("reset"), st.sampled_from(["a:1", "b:2"])),
        st.tuples(st.just("interrupt"), st.just("")),
    ),
    max_size=25,
)
reads = st.lists(
    st.tuples(
        st.sampled_from(["a:1", "b:2"]),
        st.one_of(st.none(), st.integers(0, 45)),
        st.one_of(st.none(), st.integers(0, 45)),
        st.one_of(st.none(), st.integers(1, 8)),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=40, deadline=None)
@given(operations, reads)
def test_cached_reads_always_match_the_database(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, object]],
    shapes: list[tuple[str, int | None, int | None, int | None]],
) -> None:
    folder = tmp_path_factory.mktemp("cache")
    slack = history_module.TAIL_SLACK

    async def scenario() -> None:
        # No slack on tail reads: they then leave turns out, and floors above 0 get tested.
        history_module.TAIL_SLACK = 0
        db = Database(f"sqlite+aiosqlite:///{folder / 'h.db'}")
        await db.migrate()
        store = SqlHistoryStore(db)
        ids: list[int] = []
        try:
            for op, arg in ops:
                if op == "ask":
                    ids.append((await store.append(str(arg), "user", "q")).id)
                elif op == "reply" and ids:
                    asked = await store.get(ids[int(str(arg)) % len(ids)])
                    assert asked is not None
                    reply = await store.append(
                        asked.channel_key, "assistant", "", status=Status.STREAMING,
                        in_reply_to_id=asked.id,
                    )  # fmt: skip
                    ids.append(reply.id)
                elif op == "update" and ids:
                    await store.update(ids[int(str(arg)) % len(ids)], text="u", status=Status.DONE)
                elif op == "reset":
                    await store.reset(str(arg), after_id=ids[-1] if ids else 0)
                elif op == "interrupt":
                    await store.interrupt_streaming()
                for key, before, since, limit in shapes:
                    got = await store.conversation(
                        key, before_id=before, since_id=since, limit=limit
                    )
                    expected = await oracle(db, key, before_id=before, since_id=since, limit=limit)
                    assert got == expected, (op, key, before, since, limit)
                    fresh = await SqlHistoryStore(db).channel_state(key)
                    assert await store.channel_state(key) == fresh
        finally:
            history_module.TAIL_SLACK = slack
            await db.close()
            (folder / "h.db").unlink(missing_ok=True)

    asyncio.run(scenario())


# -- the index ----------------------------------------------------------------------------


async def test_the_history_reads_use_the_conversation_order_index(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'plan.db'}")
    await db.migrate()
    anchor = func.coalesce(MessageRow.in_reply_to_id, MessageRow.id)
    window = (
        select(MessageRow.id)
        .where(MessageRow.channel_id == 1)
        .where(or_(MessageRow.id < 10, MessageRow.in_reply_to_id < 10))
        .where(anchor >= 5)
        .order_by(anchor.desc(), MessageRow.id.desc())
    )
    newest = (
        select(MessageRow.id)
        .where(MessageRow.channel_id == 1)
        .order_by(anchor.desc(), MessageRow.id.desc())
        .limit(50)
    )
    try:
        async with db.engine.connect() as conn:
            for query in (window, newest):
                compiled = query.compile(
                    dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
                )
                plan = " ".join(
                    str(row[-1])
                    for row in await conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
                )
                assert "ix_messages_channel_anchor" in plan
                assert "TEMP B-TREE" not in plan  # no sort of the whole channel
    finally:
        await db.close()
