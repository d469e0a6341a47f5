"""The scheduler in the core: slots, round-robin, queue cap, merged bursts, !stop, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from agent.generators.base import ChatMessage, GenerationStats
from agent.runtime.core import (
    BUSY_NOTICE,
    CHANNEL_RATE_NOTICE,
    NOTHING_TO_STOP,
    RATE_NOTICE,
    STOPPED_MARK,
    STOPPED_NOTICE,
    Core,
)
from agent.runtime.scheduler import Scheduler
from memory.history import SqlHistoryStore
from memory.records import Status
from tests.support import core as support
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_core(
    history: SqlHistoryStore,
    generator: FakeGenerator,
    clock: Clock | None = None,
    **limits: float,
) -> Core:
    # Several people write in these channels; the prompts are checked without their names.
    return support.make_core(
        history, generator, clock=clock or Clock(), limits=limits, summaries=False,
        chat={"speaker_names": "never"},
    )  # fmt: skip


def held(generator: FakeGenerator, *texts: str) -> dict[str, asyncio.Event]:
    """Hold each generation whose new message is one of ``texts`` until its event is set."""
    events = {text: asyncio.Event() for text in texts}
    generator.hold = lambda messages: events.get(messages[-1].content)
    return events


def asked(generator: FakeGenerator) -> list[str]:
    return [call[-1].content for call in generator.calls]


async def test_channels_take_turns_for_a_single_slot(history: SqlHistoryStore) -> None:
    generator = FakeGenerator(concurrency=1)
    hold = held(generator, "a0")
    core = make_core(history, generator)
    adapter = RecordingAdapter()
    futures = [await core.submit(inbound("a0", channel="a:1"), adapter)]
    await generator.wait_for_calls(1)
    # A noisy channel queues three more (different authors, so nothing is merged)...
    for i in range(1, 4):
        futures.append(await core.submit(inbound(f"a{i}", "a:1", f"user{i}"), adapter))
    # ...then two quiet channels ask once each.
    futures.append(await core.submit(inbound("b1", channel="b:1"), adapter))
    futures.append(await core.submit(inbound("c1", channel="c:1"), adapter))
    assert core.queue_depths() == {"a:1": 3, "b:1": 1, "c:1": 1}
    assert core.queue_depth() == 5
    assert core.generating() == 1
    hold["a0"].set()
    await asyncio.gather(*futures)
    # One reply per channel per turn of the wheel: b and c do not wait for all of a.
    assert asked(generator) == ["a0", "b1", "c1", "a1", "a2", "a3"]
    assert core.queue_depth() == 0


async def test_a_server_with_two_slots_answers_two_channels_at_once(
    history: SqlHistoryStore,
) -> None:
    generator = FakeGenerator(concurrency=2)
    hold = held(generator, "a", "b")
    core = make_core(history, generator)
    adapter = RecordingAdapter()
    a = await core.submit(inbound("a", channel="a:1"), adapter)
    b = await core.submit(inbound("b", channel="b:1"), adapter)
    c = await core.submit(inbound("c", channel="c:1"), adapter)
    await generator.wait_for_calls(2)
    assert sorted(asked(generator)) == ["a", "b"]
    for _ in range(100):  # c's worker may not have run yet: let it reach the scheduler
        if core.scheduler.waiting():
            break
        await asyncio.sleep(0)
    assert core.scheduler.waiting() == ["c:1"]
    hold["b"].set()
    assert (await c).text == "echo: c"  # c took b's slot while a still generates
    assert not a.done()
    hold["a"].set()
    assert (await a).status is Status.DONE
    assert (await b).status is Status.DONE


async def test_slots_pass_on_when_a_waiting_channel_gives_up() -> None:
    scheduler = Scheduler(1)
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def hold_slot() -> None:
        async with scheduler.slot("a"):
            entered.set()
            await leave.wait()

    async def use_slot(key: str, order: list[str]) -> None:
        async with scheduler.slot(key):
            order.append(key)

    order: list[str] = []
    holder = asyncio.create_task(hold_slot())
    await entered.wait()
    quitter = asyncio.create_task(use_slot("b", order))
    stayer = asyncio.create_task(use_slot("c", order))
    await asyncio.sleep(0)  # one loop turn: both new tasks run up to their wait
    assert scheduler.waiting() == ["b", "c"]
    quitter.cancel()
    leave.set()
    await holder
    await stayer
    assert order == ["c"]
    assert scheduler.busy == 0


async def test_replies_go_before_background_work(history: SqlHistoryStore) -> None:
    ran: list[str] = []

    def answer(messages: Sequence[ChatMessage]) -> str:
        ran.append(messages[-1].content)
        return "ok"

    generator = FakeGenerator(answer, concurrency=1)
    hold = held(generator, "question")
    core = make_core(history, generator)

    async def job() -> None:
        ran.append("background")

    adapter = RecordingAdapter()
    pending = [await core.submit(inbound("question"), adapter)]
    await generator.wait_for_calls(1)
    core.background.submit("test", job)  # queued while a reply generates...
    pending.append(await core.submit(inbound("another", channel="b:1"), adapter))
    hold["question"].set()
    await asyncio.gather(*pending)
    await core.background.wait_quiet()
    assert ran == ["question", "another", "background"]  # ...runs after every reply


async def test_queue_cap_stores_excess_messages_with_one_notice_per_burst(
    history: SqlHistoryStore,
) -> None:
    generator = FakeGenerator(concurrency=1)
    hold = held(generator, "first")
    core = make_core(history, generator, channel_queue=2)
    adapter = RecordingAdapter()
    futures = [await core.submit(inbound("first", author="a"), adapter)]
    await generator.wait_for_calls(1)
    futures += [await core.submit(inbound(f"q{i}", author=f"u{i}"), adapter) for i in range(2)]
    over = [await core.submit(inbound(f"x{i}", author=f"x{i}"), adapter) for i in range(3)]
    skipped = [await f for f in over]
    assert {r.status for r in skipped} == {Status.SKIPPED}
    notices = [r.final for r in adapter.replies if r.final == BUSY_NOTICE]
    assert len(notices) == 1  # one notice for the whole burst
    hold["first"].set()
    await asyncio.gather(*futures)
    assert asked(generator) == ["first", "q0", "q1"]
    stored = {m.text: m.status for m in await history.conversation("test:1")}
    assert all(stored[f"x{i}"] is Status.SKIPPED for i in range(3))  # stored, not dropped
    # Queue drained: the burst is over; the next overflow is told again.
    hold2 = held(generator, "again")
    futures = [await core.submit(inbound("again", author="a"), adapter)]
    await generator.wait_for_calls(4)
    futures += [await core.submit(inbound(f"r{i}", author=f"r{i}"), adapter) for i in range(3)]
    hold2["again"].set()
    await asyncio.gather(*futures)
    assert len([r for r in adapter.replies if r.final == BUSY_NOTICE]) == 2


async def test_a_burst_from_one_author_is_answered_in_one_reply(
    history: SqlHistoryStore,
) -> None:
    generator = FakeGenerator(concurrency=1)
    hold = held(generator, "bob's question", "and one more")
    core = make_core(history, generator)
    adapter = RecordingAdapter()
    bob = await core.submit(inbound("bob's question", author="bob"), adapter)
    await generator.wait_for_calls(1)
    burst = [await core.submit(inbound(t, author="alice"), adapter) for t in ("hi", "so", "why?")]
    hold["bob's question"].set()
    await bob
    replies = [await f for f in burst]
    assert len({id(r) for r in replies}) == 1  # the same reply for all three
    [merged_call] = generator.calls[1:]
    assert merged_call[-1].content == "hi\nso\nwhy?"
    # The prompt's history ends before the burst; bob's exchange is in it.
    assert [m.content for m in merged_call[1:-1]] == ["bob's question", "echo: bob's question"]
    rows = await history.conversation("test:1")
    assert [(m.role, m.text, m.status) for m in rows[2:]] == [
        ("user", "hi", Status.MERGED),
        ("user", "so", Status.MERGED),
        ("user", "why?", Status.RECEIVED),
        ("assistant", "echo: hi\nso\nwhy?", Status.DONE),
    ]
    assert rows[-1].in_reply_to_id == rows[-2].id
    # A message sent while the author's reply is generating waits for a reply of its own.
    again = await core.submit(inbound("and one more", author="alice"), adapter)
    await generator.wait_for_calls(3)
    later = await core.submit(inbound("last", author="alice"), adapter)
    hold["and one more"].set()
    assert (await again).text == "echo: and one more"
    assert (await later).text == "echo: last"


class StallingGenerator(FakeGenerator):
    """Writes a few words, then waits for ``resume`` (for !stop mid-reply)."""

    def __init__(self) -> None:
        super().__init__(concurrency=1)
        self.resume = asyncio.Event()
        self.wrote = asyncio.Event()

    async def _pieces(
        self, messages: tuple[ChatMessage, ...], stats: GenerationStats
    ) -> AsyncIterator[str]:
        if messages[-1].content != "long story":
            async for piece in super()._pieces(messages, stats):
                yield piece
            return
        for word in ("Once", "upon"):
            yield word + " "
        self.wrote.set()
        await self.resume.wait()
        yield "never"


async def test_stop_cancels_the_reply_in_progress_and_keeps_the_partial_text(
    history: SqlHistoryStore,
) -> None:
    generator = StallingGenerator()
    core = make_core(history, generator)
    adapter = RecordingAdapter()
    story = await core.submit(inbound("long story"), adapter)
    queued = await core.submit(inbound("next", author="bob"), adapter)
    await generator.wrote.wait()
    stop = await core.submit(inbound("!stop", author="bob"), adapter)
    assert (await stop).text == STOPPED_NOTICE  # !stop did not wait behind "next"
    reply = await story
    assert (reply.status, reply.text) == (Status.CANCELLED, "Once upon")
    assert adapter.replies[0].final == f"Once upon {STOPPED_MARK}"
    assert (await queued).text == "echo: next"  # the channel goes on
    rows = await history.conversation("test:1")
    assert ("assistant", "Once upon", Status.CANCELLED) in [
        (m.role, m.text, m.status) for m in rows
    ]
    # Nothing generating: says so.
    assert (await (await core.submit(inbound("!stop"), adapter))).text == NOTHING_TO_STOP


async def test_rate_limits_per_user_and_per_channel(history: SqlHistoryStore) -> None:
    clock = Clock()
    generator = FakeGenerator()
    core = make_core(
        history, generator, clock, user_burst=2, user_per_minute=60, channel_burst=3,
        channel_per_minute=60,
    )  # fmt: skip
    adapter = RecordingAdapter()

    async def send(text: str, author: str = "alice", *, is_admin: bool = False) -> Status:
        event = replace(inbound(text, author=author), is_admin=is_admin)
        return (await (await core.submit(event, adapter))).status

    assert [await send(f"m{i}") for i in range(4)] == [
        Status.DONE, Status.DONE, Status.SKIPPED, Status.SKIPPED,
    ]  # fmt: skip
    assert [r.final for r in adapter.replies].count(RATE_NOTICE) == 1  # one per episode
    assert await send("from bob", author="bob") is Status.DONE  # bob has his own bucket
    # The channel's bucket (3) is empty now: nobody else gets through...
    assert await send("from carol", author="carol") is Status.SKIPPED
    assert [r.final for r in adapter.replies].count(CHANNEL_RATE_NOTICE) == 1
    # ...except an admin.
    assert await send("admin here", author="root", is_admin=True) is Status.DONE
    clock.now += 1.0  # one token back in each bucket
    assert await send("later") is Status.DONE
    stored = [m for m in await history.conversation("test:1") if m.role == "user"]
    assert len(stored) == 8  # every message was stored, answered or not
