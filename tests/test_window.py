"""The history window through the real core: block eviction, summaries, commands."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent.generators.base import ChatMessage
from agent.prompt.summarizer import dominant_language, summary_prompt
from agent.runtime.core import Core
from memory.db import Database
from memory.history import SqlHistoryStore
from memory.records import Status
from tests.support import core as support
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound
from tests.support.postgres import ALL_KINDS, open_database
from tests.test_context import turn

PERSONA = "You are a test."
GENERATION_PROMPT = "<assistant>\n"


@pytest.fixture(params=ALL_KINDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The window and summary store operations (epochs, row locks) on every database."""
    async with open_database(request.param, tmp_path, request) as db:
        yield db


def is_summary(messages: Sequence[ChatMessage]) -> bool:
    return messages[0].content.startswith(("You summarise", "Ты кратко"))


def summarizing_generator(n_ctx: int = 200) -> FakeGenerator:
    def answer(messages: Sequence[ChatMessage]) -> str:
        if is_summary(messages):
            return f"summary of {messages[-1].content.count(': ')} lines"
        return f"echo: {messages[-1].content}"

    return FakeGenerator(answer, n_ctx=n_ctx)


def make_core(history: SqlHistoryStore, generator: FakeGenerator, **context: object) -> Core:
    return support.make_core(
        history, generator, max_tokens=20, margin=5, persona=PERSONA, **context
    )


async def talk(core: Core, adapter: RecordingAdapter, turns: int, start: int = 0) -> None:
    for i in range(start, start + turns):
        reply = await (await core.submit(inbound(f"message {i} a b c d"), adapter))
        assert reply.status is Status.DONE
        # Like a person typing the next message: background work gets its turn.
        await core.background.wait_quiet()


def replies(generator: FakeGenerator) -> list[tuple[ChatMessage, ...]]:
    return [call for call in generator.calls if not is_summary(call)]


async def test_prefix_is_byte_identical_between_evictions(history: SqlHistoryStore) -> None:
    generator = summarizing_generator()
    core = make_core(history, generator)
    await talk(core, RecordingAdapter(), 40)
    calls = replies(generator)
    stable = evictions = 0
    for before, after in itertools.pairwise(calls):
        # Everything before the last user turn (volatile block + new message) of one prompt
        # must begin the next prompt byte for byte, unless a block was evicted in between.
        previous = generator.render_prompt(before[:-1]).removesuffix(GENERATION_PROMPT)
        same_start = before[:2] == after[:2]  # same persona + summary, same oldest turn
        if same_start:
            assert generator.render_prompt(after).startswith(previous)
            stable += 1
        else:
            evictions += 1
            # A block, not a message: at least a third of the window left at once.
            assert len(after) - 2 <= (len(before) - 2) * 2 / 3 + 2
    assert evictions >= 3
    assert stable > 2 * evictions
    for call in calls:
        assert call[0].content.startswith(PERSONA)
        assert call[-1].content.startswith("message ")


async def test_summary_covers_exactly_the_evicted_turns(history: SqlHistoryStore) -> None:
    generator = summarizing_generator()
    core = make_core(history, generator)
    await talk(core, RecordingAdapter(), 40)
    state = await history.channel_state("test:1")
    assert state.summary is not None
    assert state.summary.text.startswith("summary of")
    everything = await history.conversation("test:1", limit=None)
    window = await history.conversation("test:1", since_id=state.window_start_id, limit=None)
    window_ids = {m.id for m in window}
    evicted = [m for m in everything if m.id not in window_ids]

    def anchor(m: object) -> int:
        return m.in_reply_to_id or m.id  # type: ignore[attr-defined]

    assert evicted
    assert {anchor(m) for m in evicted} == {
        anchor(m)
        for m in everything
        if state.summary.first_message_id <= anchor(m) <= state.summary.last_message_id
    }
    # Nothing was deleted by summarising.
    assert len(everything) == 80
    # The prompt carries the summary after the persona.
    last_prompt = replies(generator)[-1]
    assert last_prompt[0].content == f"{PERSONA}\n\nSummary of the earlier conversation:\n" + (
        state.summary.text
    )


async def talk_until_a_summary_is_held(
    history: SqlHistoryStore,
) -> tuple[Core, FakeGenerator, RecordingAdapter, asyncio.Event]:
    """A core whose first summary generation has started and waits for the returned gate."""
    generator = summarizing_generator()
    gate = asyncio.Event()
    generator.hold = lambda messages: gate if is_summary(messages) else None
    core = make_core(history, generator)
    adapter = RecordingAdapter()
    i = 0
    while not any(is_summary(call) for call in generator.calls):
        await (await core.submit(inbound(f"message {i} a b c d"), adapter))
        await asyncio.sleep(0.01)  # let the background runner start the job
        i += 1
        assert i < 100, "no summary was ever started"
    return core, generator, adapter, gate


async def test_background_summary_never_delays_a_reply(history: SqlHistoryStore) -> None:
    core, _generator, adapter, summary_gate = await talk_until_a_summary_is_held(history)
    # A summary is generating and will not finish until the gate opens; replies still flow.
    for j in range(3):
        reply = await (await core.submit(inbound(f"more {j}"), adapter))
        assert reply.status is Status.DONE
    assert (await history.channel_state("test:1")).latest_summary is None
    summary_gate.set()
    await core.background.wait_quiet()
    assert (await history.channel_state("test:1")).latest_summary is not None


async def test_reset_and_summary_commands(history: SqlHistoryStore) -> None:
    generator = summarizing_generator()
    core = make_core(history, generator)
    adapter = RecordingAdapter()
    no_summary = await (await core.submit(inbound("!summary"), adapter))
    assert no_summary.text.startswith("No summary yet")
    await talk(core, adapter, 30)
    shown = await (await core.submit(inbound("!summary"), adapter))
    state = await history.channel_state("test:1")
    assert state.summary is not None
    assert shown.text.endswith(state.summary.text)
    stored_before = await history.count("test:1")

    reset = await (await core.submit(inbound("!reset"), adapter))
    assert reset.text.startswith("Starting afresh")
    await (await core.submit(inbound("hello again"), adapter))
    prompt = replies(generator)[-1]
    assert [m.content for m in prompt] == [PERSONA, "hello again"]
    assert (await history.channel_state("test:1")).summary is None
    # History is kept in the database; commands never reach the model.
    assert await history.count("test:1") == stored_before + 4
    assert not any(
        "!reset" in m.content or "!summary" in m.content for c in replies(generator) for m in c
    )
    help_text = (await (await core.submit(inbound("!help"), adapter))).text
    assert "!reset" in help_text
    assert "!summary" in help_text


async def test_a_reset_discards_a_summary_started_before_it(history: SqlHistoryStore) -> None:
    core, _generator, adapter, gate = await talk_until_a_summary_is_held(history)
    await (await core.submit(inbound("!reset"), adapter))
    gate.set()
    await core.background.wait_quiet()
    assert (await history.channel_state("test:1")).summary is None
    assert await history.summaries("test:1") == []


def test_summary_prompt_follows_the_conversation_language() -> None:
    assert dominant_language(["Привет, как дела?", "ok"]) == "ru"
    assert dominant_language(["Hello there", "да"]) == "en"
    messages = summary_prompt("Раньше: знакомство.", [turn(1, "Меня зовут Маша")], "Beseda")
    assert messages[0].content.startswith("Ты кратко")
    assert "Раньше: знакомство." in messages[1].content
    assert "user: Меня зовут Маша" in messages[1].content
