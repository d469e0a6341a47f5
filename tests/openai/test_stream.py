"""The remote generator streaming from a scripted OpenAI-compatible server: the request,
SSE parsing, timeouts, cancellation and the API key kept out of every log and message."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

import pytest

from agent.generators.base import ChatMessage, GeneratorError, SamplingParams
from agent.generators.openai_compat import OpenAICompatGenerator
from agent.generators.openai_wire import iter_sse_data
from tests.openai.helpers import (
    GREEDY,
    HANG_GUARD,
    MESSAGES,
    RecordingSleep,
    collect,
    drain,
    remote_config,
)
from tests.support.openai_peer import FakeOpenAIServer, free_port, sse_event

# -- streaming and the request ---------------------------------------------------------------


async def test_streams_sse_pieces_and_sends_the_sampler_settings(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator
) -> None:
    fake.script.append(
        fake.stream(
            ["Пари", "ж — ", "столица", " Франции."],
            usage={"prompt_tokens": 11, "completion_tokens": 4},
        )
    )
    pieces, stats = await collect(remote, SamplingParams(temperature=0.2, top_k=5, seed=3))
    assert pieces == ["Пари", "ж — ", "столица", " Франции."]
    assert stats.prompt_tokens == 11
    assert stats.completion_tokens == 4
    assert stats.finish_reason == "stop"

    (request,) = fake.requests
    assert request.headers["Authorization"] == "Bearer fake-key"
    body = request.body
    assert body["stream"] is True
    assert body["messages"] == [{"role": m.role, "content": m.content} for m in MESSAGES]
    assert body["temperature"] == 0.2
    assert body["top_k"] == 5
    assert body["seed"] == 3
    assert body["max_tokens"] == 512
    assert body["repeat_penalty"] == 1.1
    assert "model" not in body  # empty [model] model: the server's default


async def test_model_name_and_plain_sampling_only(fake: FakeOpenAIServer) -> None:
    config = remote_config(fake.url, model="fake-model", extended_sampling=False)
    generator = OpenAICompatGenerator(config)
    try:
        await collect(generator, SamplingParams(seed=-1))
    finally:
        await generator.aclose()
    body = fake.requests[0].body
    assert body["model"] == "fake-model"
    assert "seed" not in body
    assert not {"top_k", "min_p", "repeat_penalty", "repetition_penalty"} & body.keys()


async def test_a_trailing_v1_in_base_url_is_accepted(fake: FakeOpenAIServer) -> None:
    generator = OpenAICompatGenerator(remote_config(fake.url + "/v1/"))
    try:
        pieces, _ = await collect(generator)
    finally:
        await generator.aclose()
    assert "".join(pieces) == "Hello from the fake."
    assert fake.requests[0].path == "/v1/chat/completions"


async def test_a_server_that_does_not_stream_is_understood(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator
) -> None:
    fake.script.append(fake.json_reply("Paris.", {"prompt_tokens": 9, "completion_tokens": 2}))
    pieces, stats = await collect(remote)
    assert pieces == ["Paris."]
    assert (stats.prompt_tokens, stats.completion_tokens) == (9, 2)


async def test_sse_parser_handles_crlf_comments_multiline_and_a_missing_final_blank() -> None:
    raw = [
        b": ping - 2024\r\n",
        b"\r\n",
        b"event: message\r\n",
        b"data:first\r\n",
        b"data: second\r\n",
        b"\r\n",
        b"id: 7\n",
        b'data: {"x": 1}\n',
        b"\n",
        b"data: [DONE]",
    ]

    async def lines() -> AsyncIterator[bytes]:
        for line in raw:
            yield line

    assert [d async for d in iter_sse_data(lines())] == ["first\nsecond", '{"x": 1}', "[DONE]"]


async def test_an_error_event_in_the_stream_is_reported(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator
) -> None:
    fake.script.append(fake.events(sse_event({"error": {"message": "model crashed"}})))
    with pytest.raises(GeneratorError, match="model crashed"):
        await collect(remote)


async def test_usage_above_the_estimate_raises_later_estimates(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator
) -> None:
    before = remote.count_prompt_tokens(MESSAGES)
    # A template that adds its own system prompt: the server counts 40 tokens more.
    fake.script.append(fake.stream(["ok"], usage={"prompt_tokens": before + 40}))
    await collect(remote)
    assert remote.count_prompt_tokens(MESSAGES) == before + 40


# -- timeouts and cancellation ---------------------------------------------------------------


@pytest.mark.parametrize("before", [["Hel"], []])
async def test_a_stalled_stream_is_cut_and_reported(
    fake: FakeOpenAIServer, sleep: RecordingSleep, before: list[str]
) -> None:
    fake.script.append(fake.stall(before))
    generator = OpenAICompatGenerator(remote_config(fake.url, read_timeout=1.0), sleep=sleep)
    received: list[str] = []
    try:
        with pytest.raises(GeneratorError, match=r"sent nothing for 1 s.*\[model\] read_timeout"):
            await asyncio.wait_for(drain(generator, received), HANG_GUARD)
    finally:
        await generator.aclose()
    assert received == before
    assert len(fake.requests) == 1  # a stall is reported, not retried
    assert sleep.delays == []


async def test_closing_the_stream_closes_the_http_connection(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator
) -> None:
    fake.script.append(fake.endless())
    tokens = remote.stream(MESSAGES, GREEDY)
    first = await anext(aiter(tokens))
    assert first == "la "
    assert not fake.disconnected.is_set()
    assert held_connections(remote) == 1
    await tokens.aclose()
    # Closed by aclose() itself, not later by the garbage collector's async-generator hook.
    assert held_connections(remote) == 0
    await asyncio.wait_for(fake.disconnected.wait(), HANG_GUARD)


def held_connections(generator: OpenAICompatGenerator) -> int:
    """Connections the generator's HTTP session has in use (aiohttp keeps them in _acquired)."""
    session = generator._session
    return 0 if session is None or session.connector is None else len(session.connector._acquired)


async def test_cancelling_the_consumer_closes_the_http_connection(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator
) -> None:
    fake.script.append(fake.endless())
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in remote.stream(MESSAGES, GREEDY):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), HANG_GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.disconnected.wait(), HANG_GUARD)


# -- secrets ---------------------------------------------------------------------------------


async def test_the_key_never_reaches_logs_or_messages(
    fake: FakeOpenAIServer, sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-" + secrets.token_hex(16)
    config = remote_config(fake.url, key=secret)
    messages: list[str] = [repr(config), str(config), config.model_dump_json()]

    # The server refuses it and echoes it back in its error body.
    generator = OpenAICompatGenerator(config, sleep=sleep)
    with pytest.raises(GeneratorError) as refused:
        await collect(generator)
    messages.append(str(refused.value))
    assert "bad credentials: Bearer [api key]" in str(refused.value)  # echoed, then redacted
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {secret}"  # it was sent
    messages.append(generator.render_prompt(MESSAGES))
    messages.append(generator.name)
    await generator.aclose()

    # Accepted after retries (each retry is logged), and through the start-up probe.
    fake.key = secret
    fake.script.extend([fake.status(500), fake.status(503)])
    generator = OpenAICompatGenerator(config, sleep=sleep)
    try:
        await generator.start()
        await collect(generator)
    finally:
        await generator.aclose()

    # Unreachable, with retries logged.
    unreachable = remote_config(f"http://127.0.0.1:{free_port()}", key=secret)
    generator = OpenAICompatGenerator(unreachable, sleep=sleep)
    with pytest.raises(GeneratorError) as down:
        await collect(generator)
    messages.append(str(down.value))
    await generator.aclose()

    assert caplog.records, "the flows above log; an empty capture would prove nothing"
    assert "retry 1 of 2" in caplog.text
    assert secret not in caplog.text
    for text in messages:
        assert secret not in text


async def test_replies_and_token_counts_share_a_few_connections(fake: FakeOpenAIServer) -> None:
    """llama.cpp's server answers connections from a pool of its slots plus two threads and
    keeps an idle keep-alive connection's thread for 5 s: four replies starting at once, each
    counting its new texts' tokens, once opened some 30 connections and waited 5 s. The
    client keeps to one connection per reply in flight plus one."""
    await fake.close()
    server = FakeOpenAIServer(serve_tokenize=True)
    await server.start()
    generator = OpenAICompatGenerator(remote_config(server.url, concurrency=4))
    try:
        await generator.start()
        assert generator.tokenizer is not None
        assert generator.tokenizer.path == "/tokenize"

        async def reply(channel: int) -> str:
            messages = [MESSAGES[0]]
            for turn in range(4):
                messages.append(ChatMessage("user", f"channel {channel}, question {turn}"))
                messages.append(ChatMessage("assistant", f"channel {channel}, answer {turn}"))
            messages.append(ChatMessage("user", f"channel {channel}: and now?"))
            return "".join([piece async for piece in generator.stream(messages, GREEDY)])

        async with asyncio.timeout(HANG_GUARD):
            replies = await asyncio.gather(*(reply(c) for c in range(4)))
    finally:
        await generator.aclose()
        await server.close()
    assert replies == ["Hello from the fake."] * 4
    # 4 replies x 10 new texts each were counted, yet never more than 5 connections.
    assert 1 < server.most_connections <= 5
