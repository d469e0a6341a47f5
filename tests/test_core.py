from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agent.generators.base import ChatMessage
from agent.runtime.core import CUT_NOTICE, CoreClosedError
from memory.history import SqlHistoryStore
from memory.records import Status
from tests.support.core import make_core
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound


async def test_reply_is_streamed_delivered_and_stored(history: SqlHistoryStore) -> None:
    core = make_core(history, FakeGenerator())
    adapter = RecordingAdapter()
    reply = await (await core.submit(inbound("hello there"), adapter))
    assert reply.status is Status.DONE
    assert reply.text == "echo: hello there"
    [recorded] = adapter.replies
    assert "".join(recorded.pieces).strip() == "echo: hello there"
    assert recorded.final == "echo: hello there"
    stored = await history.conversation("test:1")
    assert [(m.role, m.text, m.status) for m in stored] == [
        ("user", "hello there", Status.RECEIVED),
        ("assistant", "echo: hello there", Status.DONE),
    ]
    assert stored[1].in_reply_to_id == stored[0].id


async def test_user_turn_is_stored_before_generation(history: SqlHistoryStore) -> None:
    generator = FakeGenerator()
    generator.gate = asyncio.Event()
    core = make_core(history, generator)
    pending = await core.submit(inbound("keep me"), RecordingAdapter())
    # submit() has returned: the turn is in the database before generation starts...
    first = (await history.conversation("test:1"))[0]
    assert (first.role, first.text, first.status) == ("user", "keep me", Status.RECEIVED)
    await generator.started.wait()
    # ...and while the reply is being generated, it is marked as streaming.
    stored = await history.conversation("test:1")
    assert [(m.role, m.text, m.status) for m in stored] == [
        ("user", "keep me", Status.RECEIVED),
        ("assistant", "", Status.STREAMING),
    ]
    generator.gate.set()
    await pending


async def test_failing_generator_keeps_the_user_turn_and_tells_the_user(
    history: SqlHistoryStore,
) -> None:
    core = make_core(history, FakeGenerator(fail_with=RuntimeError("model exploded")))
    adapter = RecordingAdapter()
    reply = await (await core.submit(inbound("are you there?"), adapter))
    assert reply.status is Status.FAILED
    assert adapter.replies[0].failure is not None
    assert "model exploded" in adapter.replies[0].failure
    stored = await history.conversation("test:1")
    assert [(m.role, m.text, m.status) for m in stored] == [
        ("user", "are you there?", Status.RECEIVED),
        ("assistant", "", Status.FAILED),
    ]
    # The channel keeps working after a failure.
    core._generator.fail_with = None  # type: ignore[attr-defined]
    again = await (await core.submit(inbound("and now?"), adapter))
    assert again.status is Status.DONE


async def test_a_reply_that_cannot_be_stored_is_not_shown_as_answered(
    history: SqlHistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = make_core(history, FakeGenerator())
    update = history.update

    async def failing_update(message_id: int, **changes: object) -> None:
        if changes.get("status") is Status.DONE:
            raise RuntimeError("database is gone")
        await update(message_id, **changes)  # type: ignore[arg-type]

    monkeypatch.setattr(history, "update", failing_update)
    adapter = RecordingAdapter()
    reply = await (await core.submit(inbound("hello"), adapter))
    assert reply.status is Status.FAILED
    [recorded] = adapter.replies
    assert recorded.final is None  # a reply shown but not stored would be answered again
    assert recorded.failure is not None
    assert "could not be stored" in recorded.failure


async def test_messages_in_one_channel_are_answered_in_order(history: SqlHistoryStore) -> None:
    generator = FakeGenerator()
    core = make_core(history, generator, chat={"speaker_names": "never"})
    adapter = RecordingAdapter()
    # Different authors: one author's waiting messages would be answered together.
    futures = [await core.submit(inbound(f"m{i}", author=f"u{i}"), adapter) for i in range(5)]
    replies = await asyncio.gather(*futures)
    assert [r.text for r in replies] == [f"echo: m{i}" for i in range(5)]
    assert [r.inbound.text for r in adapter.replies] == [f"m{i}" for i in range(5)]
    # Each prompt saw the previous exchanges, in conversation order.
    last_prompt = [m.content for m in generator.calls[-1]]
    assert last_prompt == [
        "You are a test.",
        *[text for i in range(4) for text in (f"m{i}", f"echo: m{i}")],
        "m4",
    ]


async def test_channels_proceed_independently(history: SqlHistoryStore) -> None:
    blocked = FakeGenerator(lambda messages: f"reply to {messages[-1].content}")
    blocked.gate = asyncio.Event()
    core = make_core(history, blocked)
    adapter = RecordingAdapter()
    slow = await core.submit(inbound("wait", channel="a:1"), adapter)
    await blocked.started.wait()
    other = await core.submit(inbound("quick", channel="b:1"), adapter)
    # Channel b has its own worker: both generations are in flight at once.
    await blocked.wait_for_calls(2)
    assert not slow.done()
    blocked.gate.set()
    assert (await other).text == "reply to quick"
    assert (await slow).text == "reply to wait"


async def test_prompt_never_mixes_channels(history: SqlHistoryStore) -> None:
    generator = FakeGenerator()
    core = make_core(history, generator)
    adapter = RecordingAdapter()
    await (await core.submit(inbound("secret in a", channel="a:1"), adapter))
    await (await core.submit(inbound("hello from b", channel="b:1"), adapter))
    prompt_b = " ".join(m.content for m in generator.calls[-1])
    assert "secret" not in prompt_b


async def test_shutdown_cancels_in_flight_reply_and_records_it(history: SqlHistoryStore) -> None:
    generator = FakeGenerator()
    generator.gate = asyncio.Event()  # never released: the reply hangs until shutdown
    core = make_core(history, generator)
    adapter = RecordingAdapter()
    pending = await core.submit(inbound("long question"), adapter)
    queued = await core.submit(inbound("second question"), adapter)
    await generator.started.wait()
    await core.close(grace=0.05)
    assert (await pending).status is Status.CANCELLED
    assert (await queued).status is Status.CANCELLED
    assert adapter.replies[0].failure is not None
    stored = await history.conversation("test:1")
    assert [(m.role, m.status) for m in stored] == [
        ("user", Status.RECEIVED),
        ("assistant", Status.CANCELLED),
        ("user", Status.RECEIVED),  # never started: left for a later run to answer
    ]
    with pytest.raises(CoreClosedError):
        await core.submit(inbound("too late"), adapter)


async def test_shutdown_lets_quick_replies_finish(history: SqlHistoryStore) -> None:
    core = make_core(history, FakeGenerator())
    pending = await core.submit(inbound("quick"), RecordingAdapter())
    await core.close(grace=5)
    assert (await pending).status is Status.DONE


async def test_nul_bytes_and_huge_messages_are_stored_safely(history: SqlHistoryStore) -> None:
    core = make_core(history, FakeGenerator(), max_chars=100)
    await (await core.submit(inbound("a\x00b " + "x" * 500), RecordingAdapter()))
    [user, notice, _] = await history.conversation("test:1")
    assert notice.text == CUT_NOTICE.format(limit=100)  # the person is told, too
    assert "\x00" not in user.text
    assert user.text.startswith("ab x")
    assert user.text.endswith("[… cut: longer than 100 characters]")


def _words(messages: Sequence[ChatMessage]) -> str:
    return " ".join(m.content for m in messages)


async def test_prompt_for_does_not_store_anything(history: SqlHistoryStore) -> None:
    core = make_core(history, FakeGenerator())
    await (await core.submit(inbound("first"), RecordingAdapter()))
    prompt = await core.prompt_for("test:1", "inspect me")
    assert _words(prompt.messages) == "You are a test. first echo: first inspect me"
    assert await history.count("test:1") == 2
