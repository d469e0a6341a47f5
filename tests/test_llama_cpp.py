"""The llama.cpp generator on the real bundled model (SmolLM2-135M, temperature 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import ModelConfig
from agent.generators.base import ChatMessage, GeneratorError, SamplingParams
from agent.generators.gguf import bundled_model_path
from agent.generators.llama_cpp import LlamaCppGenerator

pytestmark = pytest.mark.model

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
QUESTION = [
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "What is the capital of France?"),
]
PLAIN_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:{% endif %}"
)


@pytest.fixture
async def generator() -> AsyncIterator[LlamaCppGenerator]:
    gen = LlamaCppGenerator.load(ModelConfig(n_ctx=512, n_threads=2), bundled_model_path())
    yield gen
    await gen.aclose()


async def collect(gen: LlamaCppGenerator, messages: list[ChatMessage]) -> str:
    return "".join([piece async for piece in gen.stream(messages, GREEDY)])


async def test_streams_an_answer_with_token_counts(generator: LlamaCppGenerator) -> None:
    stream = generator.stream(QUESTION, GREEDY)
    pieces = [piece async for piece in stream]
    assert len(pieces) > 1, "tokens should arrive one by one"
    assert "".join(pieces).strip()
    assert stream.stats.prompt_tokens == generator.count_prompt_tokens(QUESTION)
    assert 0 < stream.stats.completion_tokens <= GREEDY.max_tokens
    assert stream.stats.cached_tokens == 0


async def test_second_call_reuses_the_common_prefix(generator: LlamaCppGenerator) -> None:
    await collect(generator, QUESTION)
    follow_up = [*QUESTION, ChatMessage("assistant", "Paris."), ChatMessage("user", "And Italy?")]
    stream = generator.stream(follow_up, GREEDY)
    _ = [piece async for piece in stream]
    shared = generator.count_prompt_tokens(QUESTION) - 3  # up to the generation prompt
    assert stream.stats.cached_tokens >= shared
    assert stream.stats.evaluated_tokens < stream.stats.prompt_tokens


async def test_generation_does_not_block_the_event_loop(generator: LlamaCppGenerator) -> None:
    ticks = 0
    generating = True

    async def ticker() -> None:
        nonlocal ticks
        while generating:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    text = await collect(generator, QUESTION)
    generating = False
    await task
    assert text
    # llama.cpp runs on its own thread; the loop kept turning between tokens.
    assert ticks > 5


async def test_closing_a_stream_early_frees_the_model(generator: LlamaCppGenerator) -> None:
    stream = generator.stream(QUESTION, SamplingParams(temperature=0.0, max_tokens=200))
    async for _piece in stream:
        break
    await stream.aclose()
    assert stream.stats.completion_tokens < 200
    # The next generation is served normally.
    assert (await collect(generator, QUESTION)).strip()


async def test_cancelling_the_consumer_frees_the_model(generator: LlamaCppGenerator) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _piece in generator.stream(QUESTION, SamplingParams(max_tokens=400)):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await collect(generator, QUESTION)).strip()


def test_render_prompt_uses_the_gguf_template(generator: LlamaCppGenerator) -> None:
    rendered = generator.render_prompt(QUESTION)
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")
    # Control tokens are single tokens, not spelled out.
    assert generator.count_prompt_tokens(QUESTION) < len(rendered) // 3


async def test_prompt_longer_than_the_context_is_refused(generator: LlamaCppGenerator) -> None:
    with pytest.raises(GeneratorError, match=r"prompt has \d+ tokens but \[model\] n_ctx is 512"):
        await collect(generator, [ChatMessage("user", "word " * 2000)])


@pytest.fixture(scope="module")
def templateless_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model with its chat-template key renamed: a valid GGUF without a template."""
    data = bundled_model_path().read_bytes()
    key = b"tokenizer.chat_template"
    assert data.count(key) == 1
    path = tmp_path_factory.mktemp("gguf") / "no-template.gguf"
    path.write_bytes(data.replace(key, b"tokenizer.chat_templatX"))
    return path


def test_gguf_without_template_fails_naming_the_setting(templateless_gguf: Path) -> None:
    with pytest.raises(GeneratorError, match=r"no chat template.*\[model\] chat_template"):
        LlamaCppGenerator.load(ModelConfig(n_ctx=256), templateless_gguf)


async def test_configured_template_is_used(templateless_gguf: Path) -> None:
    gen = LlamaCppGenerator.load(
        ModelConfig(n_ctx=256, chat_template=PLAIN_TEMPLATE), templateless_gguf
    )
    try:
        assert gen.render_prompt(QUESTION) == (
            "### system: You are a helpful assistant.\n"
            "### user: What is the capital of France?\n### assistant:"
        )
        assert await collect(gen, QUESTION)
    finally:
        await gen.aclose()


async def test_broken_template_is_a_clear_error() -> None:
    gen = LlamaCppGenerator.load(
        ModelConfig(n_ctx=256, chat_template="{{ raise_exception('no system role') }}"),
        bundled_model_path(),
    )
    try:
        with pytest.raises(GeneratorError, match=r"chat_template failed.*no system role"):
            gen.render_prompt(QUESTION)
    finally:
        await gen.aclose()


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "file not found"), (b"not a model", "not a GGUF file"), (b"GGUF\x03", "cannot load")],
)
def test_unusable_model_files_name_the_setting(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GeneratorError, match=rf"^\[model\] path: .*{expected}"):
        LlamaCppGenerator.load(ModelConfig(n_ctx=256), path)


def conversation(topic: str, turns: int) -> list[ChatMessage]:
    messages = [ChatMessage("system", "You are a helpful assistant.")]
    for i in range(turns):
        messages += [
            ChatMessage("user", f"Tell me fact number {i} about {topic}."),
            ChatMessage("assistant", f"Fact {i}: {topic} are interesting in many ways."),
        ]
    return [*messages, ChatMessage("user", f"One more thing about {topic}?")]


@pytest.mark.parametrize(("parallel", "cache_bytes"), [(1, 0), (1, 256 * 1024 * 1024), (2, 0)])
async def test_switching_channels_reuses_a_cached_state(parallel: int, cache_bytes: int) -> None:
    gen = LlamaCppGenerator.load(
        ModelConfig(n_ctx=1024, n_threads=2, parallel=parallel),
        bundled_model_path(),
        state_cache_bytes=cache_bytes,
    )
    params = SamplingParams(temperature=0.0, max_tokens=4)
    try:
        cats, owls = conversation("cats", 6), conversation("owls", 6)
        for messages in (cats, owls):  # channel A, then channel B needs a sequence
            _ = [p async for p in gen.stream(messages, params)]
        back = gen.stream(cats, params)  # channel A again
        _ = [p async for p in back]
        if parallel > 1:
            # B took a sequence of its own: A's stayed resident.
            assert back.stats.cached_tokens >= back.stats.prompt_tokens - 1
            assert gen.states is None
        elif cache_bytes:
            # A's sequence was saved to RAM when B took it, and loaded back now.
            assert gen.states is not None
            assert back.stats.cached_tokens >= back.stats.prompt_tokens - 1
            assert 0 < gen.states.used_bytes <= cache_bytes
        else:
            # Only the start the two conversations share survives the switch.
            assert back.stats.cached_tokens < back.stats.prompt_tokens // 4
    finally:
        await gen.aclose()


async def test_state_cache_keeps_within_a_small_budget() -> None:
    gen = LlamaCppGenerator.load(
        ModelConfig(n_ctx=1024, n_threads=2, parallel=1),
        bundled_model_path(),
        state_cache_bytes=1,
    )
    params = SamplingParams(temperature=0.0, max_tokens=4)
    try:
        for topic in ("cats", "owls", "cats"):
            _ = [p async for p in gen.stream(conversation(topic, 6), params)]
        assert gen.states is not None
        assert len(gen.states) == 0  # every state was larger than one byte
        assert gen.states.used_bytes == 0
    finally:
        await gen.aclose()
