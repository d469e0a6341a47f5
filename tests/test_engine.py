"""The multi-sequence engine on the real bundled model (SmolLM2-135M, temperature 0)."""

from __future__ import annotations

import asyncio
import difflib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import pytest

from agent.config import ModelConfig
from agent.generators.base import ChatMessage, GenerationStats, GeneratorError, SamplingParams
from agent.generators.gguf import bundled_model_path
from agent.generators.llama_cpp import LlamaCppGenerator

pytestmark = pytest.mark.model

SYSTEM = ChatMessage("system", "You are a helpful assistant.")
QUESTIONS = [
    "Why is the sky blue?",
    "Explain how a bicycle works.",
    "Write a short story about a cat.",
    "What should I pack for a weekend hike?",
    "Describe the water cycle.",
    "How do I boil an egg?",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=16)
LONG = SamplingParams(temperature=0.0, max_tokens=40)


def ask(question: str) -> list[ChatMessage]:
    return [SYSTEM, ChatMessage("user", question)]


def load(parallel: int, *, cache_bytes: int = 0, reuse: int = 16) -> LlamaCppGenerator:
    return LlamaCppGenerator.load(
        ModelConfig(n_ctx=1024, n_threads=2, parallel=parallel),
        bundled_model_path(),
        state_cache_bytes=cache_bytes,
        reuse_min_tokens=reuse,
    )


@pytest.fixture
async def engine() -> AsyncIterator[LlamaCppGenerator]:
    gen = load(4)
    yield gen
    await gen.aclose()


async def run(
    gen: LlamaCppGenerator, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
) -> tuple[str, GenerationStats]:
    stream = gen.stream(messages, params)
    text = "".join([piece async for piece in stream])
    return text, stream.stats


async def test_the_local_backend_serves_parallel_replies(engine: LlamaCppGenerator) -> None:
    assert engine.concurrency == 4


async def test_sequences_stream_together(engine: LlamaCppGenerator) -> None:
    order: list[int] = []

    async def consume(i: int) -> None:
        async for _piece in engine.stream(ask(QUESTIONS[i]), LONG):
            order.append(i)

    await asyncio.gather(consume(0), consume(1))
    # Decoded in one batch per step: the pieces of the two replies alternate, instead of
    # one reply arriving whole before the other starts.
    first_done = max(order.index(0), order.index(1))
    assert first_done < min(len(order) - order[::-1].index(i) - 1 for i in (0, 1))
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches > 10


def nearest(text: str, replies: Sequence[str]) -> int:
    """The index of the reply in ``replies`` that ``text`` reads most like (word by word)."""
    words = text.split()
    return max(
        range(len(replies)),
        key=lambda i: difflib.SequenceMatcher(None, words, replies[i].split()).ratio(),
    )


async def alone_replies(gen: LlamaCppGenerator) -> list[str]:
    return [(await run(gen, ask(q), LONG))[0] for q in QUESTIONS]


async def test_beside_others_each_sequence_answers_its_own_prompt(
    engine: LlamaCppGenerator,
) -> None:
    # Not token for token: a batch of several sequences adds the same terms in another order
    # than one sequence alone (and a sequence's KV cells sit wherever there was room), and the
    # bundled model has near-ties (its top two first tokens for "How do I boil an egg?" are
    # 0.2 logits apart), so a reply may take the other branch at one of them. README,
    # "Parity", gives the measured shares (bench/shift_parity.py). What must hold: no
    # sequence reads another's cells, positions or logits, so each reply beside five others
    # reads like its own reply alone and not like any other.
    alone = await alone_replies(engine)
    assert len(set(alone)) == len(QUESTIONS)
    together = await asyncio.gather(*(run(engine, ask(q), LONG) for q in QUESTIONS))
    assert [nearest(text, alone) for text, _ in together] == list(range(len(QUESTIONS)))
    assert all(stats.completion_tokens == LONG.max_tokens for _, stats in together)


async def test_channels_starting_together_evaluate_their_common_system_prompt_once(
    engine: LlamaCppGenerator,
) -> None:
    # Four channels of one persona write at once (as after a restart) and no sequence holds
    # the system prompt yet: one evaluates it, the others copy its cells and evaluate only
    # their own message.
    system = ChatMessage("system", "You are a helpful assistant. " + "Be kind and precise. " * 20)
    prompts = [[system, ChatMessage("user", q)] for q in QUESTIONS[:4]]
    # The engine thread is held between two steps until all four have arrived (the lock is
    # re-entrant: the event loop's own submits still get in).
    core = engine._engine
    with core._cv:
        replies = [asyncio.create_task(run(engine, p, LONG)) for p in prompts]
        while len(core._incoming) < len(prompts):  # noqa: ASYNC110 - another thread's list
            await asyncio.sleep(0.01)
    together = await asyncio.gather(*replies)
    stats = [s for _, s in together]
    common = len(engine.tokenize(engine.render_prompt([system]), special=True)) - 8
    assert sorted(s.cached_tokens >= common for s in stats) == [False, True, True, True]
    assert sum(s.evaluated_tokens for s in stats) < sum(s.prompt_tokens for s in stats) - 3 * common
    # The copied cells are the right ones: each reply reads like its own prompt's alone.
    alone = [(await run(engine, p, LONG))[0] for p in prompts]
    assert [nearest(text, alone) for text, _ in together] == [0, 1, 2, 3]


async def test_when_the_sequence_others_wait_for_stops_they_read_on_by_themselves(
    engine: LlamaCppGenerator,
) -> None:
    shared = "Summarise this: " + "the cat sat on the mat. " * 110  # about 800 tokens
    leading = [SYSTEM, ChatMessage("user", shared + "\nWho sat on the mat?")]
    waiting = [SYSTEM, ChatMessage("user", shared + "\nWrite a poem about a dog.")]
    core = engine._engine
    with core._cv:  # both arrive at once (see the test above)
        leader = asyncio.create_task(run(engine, leading, LONG))
        follower = asyncio.create_task(run(engine, waiting, LONG))
        while len(core._incoming) < 2:  # noqa: ASYNC110 - another thread's list
            await asyncio.sleep(0.005)

    def waiting_seen() -> bool:
        return any(s.request is not None and s.request.wait is not None for s in core._slots)

    while not waiting_seen():  # noqa: ASYNC110 - another thread's state
        await asyncio.sleep(0.001)
    # The leader is stopped (as by !stop) while it reads the first 512 of its 800 tokens.
    for slot in core._slots:
        if slot.request is not None and slot.request.wait is None:
            slot.request.cancel.set()
    core.wake()
    await leader
    text, stats = await follower
    # The follower took what the leader had read and evaluated the rest itself.
    assert 0 < stats.cached_tokens < stats.prompt_tokens - 100
    assert stats.evaluated_tokens == stats.prompt_tokens - stats.cached_tokens
    alone = [(await run(engine, p, LONG))[0] for p in (leading, waiting)]
    assert nearest(text, alone) == 1
    assert core.busy_sequences() == 0


async def test_a_long_prompt_is_read_in_chunks_while_others_stream() -> None:
    gen = load(2)
    try:
        order: list[str] = []
        streaming = asyncio.Event()
        long_prompt = [SYSTEM, ChatMessage("user", "Summarise: " + "the cat sat. " * 200)]

        async def consume(tag: str, messages: list[ChatMessage]) -> None:
            order.append(f"{tag} asks")
            async for _piece in gen.stream(messages, LONG):
                order.append(tag)
                streaming.set()

        short = asyncio.create_task(consume("short", ask(QUESTIONS[0])))
        await streaming.wait()
        await asyncio.gather(short, consume("long", long_prompt))
        # The 600-token prompt was evaluated over several steps, and the short reply got a
        # token in each of them instead of waiting for the whole prompt.
        asked, answered = order.index("long asks"), order.index("long")
        assert order[asked:answered].count("short") >= 3
    finally:
        await gen.aclose()


async def test_cancelling_one_sequence_leaves_the_others_untouched(
    engine: LlamaCppGenerator,
) -> None:
    alone = await alone_replies(engine)
    started = asyncio.Event()

    async def cancelled() -> None:
        async for _piece in engine.stream(ask(QUESTIONS[2]), SamplingParams(max_tokens=400)):
            started.set()

    task = asyncio.create_task(cancelled())
    other = asyncio.create_task(run(engine, ask(QUESTIONS[1]), LONG))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    text, stats = await other
    assert nearest(text, alone) == 1  # its own reply, not disturbed (see "Parity")
    assert stats.finish_reason == "length"
    # The cancelled sequence is free again: four more replies are served at once.
    again = await asyncio.gather(*(run(engine, ask(q)) for q in QUESTIONS[:4]))
    assert all(text for text, _ in again)


async def test_json_grammar_applies_to_its_own_sequence_only(engine: LlamaCppGenerator) -> None:
    schema = json.dumps(
        {
            "type": "object",
            "properties": {"facts": {"type": "array", "items": {"type": "string"}}},
            "required": ["facts"],
        }
    )
    strict = SamplingParams(temperature=0.0, max_tokens=60, json_schema=schema)
    alone = await alone_replies(engine)
    (structured, _), (free, _) = await asyncio.gather(
        run(engine, ask("List facts about me: I live in Kazan."), strict),
        run(engine, ask(QUESTIONS[0]), LONG),
    )
    assert structured.lstrip().startswith("{")
    if structured.rstrip().endswith("}"):
        assert isinstance(json.loads(structured)["facts"], list)
    assert nearest(free, alone) == 0
    assert not free.lstrip().startswith("{")


def conversation(topic: str, turns: int) -> list[ChatMessage]:
    messages = [SYSTEM]
    for i in range(turns):
        messages += [
            ChatMessage("user", f"Tell me fact number {i} about {topic}."),
            ChatMessage("assistant", f"Fact {i}: {topic} are interesting in many ways."),
        ]
    return [*messages, ChatMessage("user", f"One more thing about {topic}?")]


async def test_the_least_recently_used_sequence_goes_to_ram_and_comes_back() -> None:
    budget = 64 * 1024 * 1024
    gen = load(2, cache_bytes=budget)
    params = SamplingParams(temperature=0.0, max_tokens=4)
    try:
        cats, owls, bees = (conversation(t, 6) for t in ("cats", "owls", "bees"))
        for messages in (cats, owls, bees):  # bees needs a sequence: cats' is saved
            await run(gen, messages, params)
        assert gen.states is not None
        assert len(gen.states) == 1
        _, back = await run(gen, cats, params)  # loaded back from RAM (owls' is saved)
        assert back.cached_tokens == back.prompt_tokens - 1
        _, still = await run(gen, bees, params)  # bees never left its sequence
        assert still.cached_tokens == still.prompt_tokens - 1
        assert 0 < gen.states.used_bytes <= budget
    finally:
        await gen.aclose()


async def test_a_conversation_goes_on_in_its_own_sequence(engine: LlamaCppGenerator) -> None:
    # Each turn continues what the sequence holds: it is served there, not copied into an
    # empty sequence (which would leave stale copies behind and pin the cells as shared).
    mine = replace(GREEDY, max_tokens=6, conversation="room-a")
    earlier: list[ChatMessage] = []
    for question in QUESTIONS[:3]:
        reply, stats = await run(engine, [SYSTEM, *earlier, ChatMessage("user", question)], mine)
        earlier += [ChatMessage("user", question), ChatMessage("assistant", reply)]
    assert stats.cached_tokens > 40
    used = [slot for slot in engine._engine._slots if slot.tokens]
    assert len(used) == 1
    assert used[0].shared == 0


def turn(
    question: str, block: str | None, earlier: Sequence[ChatMessage] = ()
) -> list[ChatMessage]:
    text = f"{block}\n\n{question}" if block else question
    return [SYSTEM, *earlier, ChatMessage("user", text)]


BLOCK_1 = "Relevant notes:\n- The museum opens at nine and closes at six on weekdays."
BLOCK_2 = "Relevant notes:\n- Tickets cost ten euros; children under six enter for free."


@pytest.mark.parametrize("reuse", [16, 0])
async def test_the_previous_exchange_is_shifted_past_the_old_volatile_block(reuse: int) -> None:
    gen = load(1, reuse=reuse)
    try:
        first_q = "When does the museum open? Please answer in one full sentence for me."
        answer, _ = await run(gen, turn(first_q, BLOCK_1))
        earlier = [ChatMessage("user", first_q), ChatMessage("assistant", answer)]
        _, stats = await run(gen, turn("How much are tickets?", BLOCK_2, earlier))
        assert stats.cached_tokens + stats.shifted_tokens + stats.evaluated_tokens == (
            stats.prompt_tokens
        )
        if reuse and gen.can_shift:
            # The question and the reply (up to its closing tokens) moved, not re-evaluated.
            assert stats.shifted_tokens >= 16
        else:
            assert stats.shifted_tokens == 0
    finally:
        await gen.aclose()


async def test_another_conversation_neither_borrows_moved_runs_nor_drops_a_sequence() -> None:
    gen = load(1, cache_bytes=64 * 1024 * 1024)
    a = replace(GREEDY, max_tokens=4, conversation="room-a")
    b = replace(a, conversation="room-b")
    story = "Tell me a long story about the sea and the ships that sail upon it, please."
    theirs = [
        SYSTEM,
        ChatMessage("user", f"{BLOCK_1}\n\nWhen does the museum open?"),
        ChatMessage("assistant", "At nine."),
        ChatMessage("user", story),
    ]
    try:
        await run(gen, theirs, a)
        # The same words in another channel: its KV was computed in room-a's conversation.
        _, other = await run(gen, [SYSTEM, ChatMessage("user", story)], b)
        assert other.shifted_tokens == 0
        # room-a's sequence went to the RAM cache before room-b took it, and comes back.
        _, back = await run(gen, theirs, a)
        assert back.cached_tokens == back.prompt_tokens - 1
    finally:
        await gen.aclose()


def summarised(summary: str, facts: range, topic: str) -> list[ChatMessage]:
    """A channel's prompt after an eviction: the summary in the system prompt, then the turns
    that stay."""
    system = ChatMessage("system", f"You are a helpful assistant.\n\nEarlier: {summary}")
    history = conversation(topic, facts.stop)[1 + 2 * facts.start :]
    return [system, *history]


async def test_the_history_after_a_new_summary_is_moved_back_not_evaluated() -> None:
    gen = load(1)
    core = gen._engine
    mine = replace(GREEDY, max_tokens=4, conversation="room-a")
    try:
        before = summarised("We spoke about owls.", range(8), "owls")
        await run(gen, before, mine)
        told = "The user asked for owl facts 0 and 1; all were given."
        after = summarised(told, range(2, 8), "owls")
        _, stats = await run(gen, after, mine)
        assert stats.cached_tokens + stats.shifted_tokens + stats.evaluated_tokens == (
            stats.prompt_tokens
        )
        if not gen.can_shift:
            assert stats.shifted_tokens == 0
            return
        # Six exchanges stayed: they follow the new summary, and were parked and moved back.
        assert stats.shifted_tokens >= 100
        assert stats.evaluated_tokens < stats.prompt_tokens - stats.shifted_tokens
        # The sequence is whole again: contiguous positions, nothing left in the spare.
        lib, memory = core._lib, core._memory
        held = core._slots[0].tokens
        assert lib.llama_memory_seq_pos_min(memory, 0) == 0
        assert lib.llama_memory_seq_pos_max(memory, 0) == len(held) - 1
        assert lib.llama_memory_seq_pos_max(memory, core._spare(core._slots[0])) == -1
        # And it decodes on from there: the same prompt again evaluates one token.
        _, again = await run(gen, after, mine)
        assert again.evaluated_tokens == 1
        # Another channel's prompt reuses nothing of this one's runs after new tokens.
        other = replace(mine, conversation="room-b")
        _, theirs = await run(gen, summarised("Owls again.", range(2, 8), "owls"), other)
        assert theirs.shifted_tokens == 0
    finally:
        await gen.aclose()


async def test_closing_ends_running_streams_with_an_error() -> None:
    gen = load(2)
    started = asyncio.Event()

    async def consume() -> str:
        text = ""
        async for piece in gen.stream(ask(QUESTIONS[2]), SamplingParams(max_tokens=400)):
            started.set()
            text += piece
        return text

    task = asyncio.create_task(consume())
    await started.wait()
    await gen.aclose()
    with pytest.raises(GeneratorError, match="closed"):
        await task
    with pytest.raises(GeneratorError, match="closed"):
        await run(gen, ask(QUESTIONS[0]))


async def test_a_schema_llama_cpp_cannot_use_fails_its_request_only(
    engine: LlamaCppGenerator,
) -> None:
    broken = SamplingParams(temperature=0.0, max_tokens=8, json_schema="{not json")
    with pytest.raises(GeneratorError, match="generation failed"):
        await run(engine, ask(QUESTIONS[0]), broken)
    # No sequence was left bound to it: four replies still run at once.
    replies = await asyncio.gather(*(run(engine, ask(q)) for q in QUESTIONS[:4]))
    assert all(text for text, _ in replies)
    assert engine._engine.busy_sequences() == 0
