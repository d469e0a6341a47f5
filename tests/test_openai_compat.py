"""The remote generator (Tabby / any OpenAI-compatible server).

Error paths run against a scripted loopback server (tests/openai_peer.py); the happy path, the
key check, token counting and the CLI run against the real ``llama_cpp.server`` with the
bundled model. Waits between retries go through an injected ``sleep`` that records the delays,
so the retry policy is asserted exactly and nothing depends on the wall clock.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from agent.app import App
from agent.config import Config, ModelConfig, load_config, select_backend
from agent.doctor import run_doctor
from agent.generators import load_generator
from agent.generators.base import ChatMessage, GeneratorError, SamplingParams
from agent.generators.fallback import FallbackGenerator
from agent.generators.openai_compat import OpenAICompatGenerator, load_remote_generator
from agent.generators.openai_wire import RemoteUnavailableError, estimate_tokens, iter_sse_data
from tests.conftest import write_config
from tests.fakes import FakeGenerator, RecordingAdapter, inbound
from tests.openai_peer import FakeOpenAIServer, LlamaServer, free_port, sse_event

MESSAGES = [
    ChatMessage("system", "You are a helpful assistant. Answer briefly."),
    ChatMessage("user", "What is the capital of France?"),
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, seed=7)
HANG_GUARD = 30  # seconds; only stops a broken test from hanging, never a measured quantity


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def remote_config(url: str, key: str | None = "fake-key", **values: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "backend": "openai",
        "base_url": url,
        "n_ctx": 1024,
        "retry_backoff": 0.25,
        "max_retries": 2,
        "read_timeout": 30.0,
        "connect_timeout": 5.0,
    }
    if key is not None:
        settings["api_key"] = key
    settings.update(values)
    return ModelConfig.model_validate(settings)


async def collect(generator: Any, params: SamplingParams = GREEDY) -> tuple[list[str], Any]:
    tokens = generator.stream(MESSAGES, params)
    pieces = [piece async for piece in tokens]
    return pieces, tokens.stats


async def drain(generator: Any, into: list[str]) -> None:
    """Collect pieces into ``into`` so a test sees what arrived before an error."""
    async for piece in generator.stream(MESSAGES, GREEDY):
        into.append(piece)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
async def remote(fake: FakeOpenAIServer, sleep: RecordingSleep) -> AsyncIterator[Any]:
    generator = OpenAICompatGenerator(remote_config(fake.url), sleep=sleep)
    yield generator
    await generator.aclose()


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


# -- retries ---------------------------------------------------------------------------------


async def test_429_waits_as_long_as_retry_after_says(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator, sleep: RecordingSleep
) -> None:
    fake.script.extend([fake.status(429, headers={"Retry-After": "3"}), fake.stream(["ok"])])
    pieces, _ = await collect(remote)
    assert pieces == ["ok"]
    assert sleep.delays == [3.0]
    assert len(fake.requests) == 2


async def test_a_retry_after_beyond_the_limit_fails_at_once(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator, sleep: RecordingSleep
) -> None:
    fake.script.append(fake.status(429, headers={"Retry-After": "3600"}))
    with pytest.raises(RemoteUnavailableError, match=r"429.*wait 3600 s"):
        await collect(remote)
    assert sleep.delays == []
    assert len(fake.requests) == 1


async def test_5xx_is_retried_with_exponential_backoff(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator, sleep: RecordingSleep
) -> None:
    fake.script.extend([fake.status(500), fake.status(502), fake.stream(["fine"])])
    pieces, _ = await collect(remote)
    assert pieces == ["fine"]
    assert sleep.delays == [0.25, 0.5]
    assert len(fake.requests) == 3


async def test_retries_are_bounded(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator, sleep: RecordingSleep
) -> None:
    fake.default = fake.status(503, {"error": {"message": "overloaded"}})
    with pytest.raises(RemoteUnavailableError, match=r"503: overloaded"):
        await collect(remote)
    assert len(fake.requests) == 3  # the first try and max_retries = 2
    assert sleep.delays == [0.25, 0.5]


async def test_connection_refused_is_retried_then_reported(sleep: RecordingSleep) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    generator = OpenAICompatGenerator(remote_config(url), sleep=sleep)
    try:
        with pytest.raises(RemoteUnavailableError) as caught:
            await collect(generator)
    finally:
        await generator.aclose()
    assert "[model] base_url" in str(caught.value)
    assert url in str(caught.value)
    assert sleep.delays == [0.25, 0.5]


async def test_a_dropped_connection_before_any_token_is_retried(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator, sleep: RecordingSleep
) -> None:
    fake.script.extend([fake.drop([]), fake.stream(["second", " try"])])
    pieces, _ = await collect(remote)
    assert pieces == ["second", " try"]
    assert len(fake.requests) == 2
    assert sleep.delays == [0.25]


async def test_a_dropped_connection_after_tokens_is_reported_not_retried(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator, sleep: RecordingSleep
) -> None:
    fake.script.append(fake.drop(["Hel", "lo"]))
    received: list[str] = []
    with pytest.raises(GeneratorError, match="after 2 tokens") as caught:
        await drain(remote, received)
    assert not isinstance(caught.value, RemoteUnavailableError)
    assert received == ["Hel", "lo"]
    assert len(fake.requests) == 1
    assert sleep.delays == []


async def test_a_stream_without_done_or_finish_reason_is_incomplete(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator
) -> None:
    fake.script.append(fake.stream(["cut"], done=False, finish_reason=None))
    with pytest.raises(GeneratorError, match="incomplete"):
        await collect(remote)


# -- errors that are not retried -------------------------------------------------------------


async def test_501_names_tabbys_missing_chat_model(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator, sleep: RecordingSleep
) -> None:
    fake.script.append(fake.status(501, body=""))
    with pytest.raises(GeneratorError, match=r"501 Not Implemented.*--chat-model") as caught:
        await collect(remote)
    assert not isinstance(caught.value, RemoteUnavailableError)
    assert len(fake.requests) == 1
    assert sleep.delays == []


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_names_the_setting(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator, status: int
) -> None:
    fake.script.append(fake.status(status))
    with pytest.raises(
        GeneratorError, match=rf"refused the API key \({status}: status {status}\).*tabby_key"
    ):
        await collect(remote)
    assert len(fake.requests) == 1


async def test_a_missing_key_says_so(fake: FakeOpenAIServer) -> None:
    generator = OpenAICompatGenerator(remote_config(fake.url, key=None))
    try:
        with pytest.raises(GeneratorError, match=r"wants an API key.*none is set"):
            await collect(generator)
    finally:
        await generator.aclose()
    assert "Authorization" not in fake.requests[0].headers


async def test_404_points_at_base_url(fake: FakeOpenAIServer) -> None:
    generator = OpenAICompatGenerator(remote_config(fake.url + "/wrong/prefix"))
    try:
        with pytest.raises(GeneratorError, match=r"not found \(404.*\[model\] base_url"):
            await collect(generator)
    finally:
        await generator.aclose()


async def test_400_passes_the_servers_reason_on(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator
) -> None:
    fake.script.append(fake.status(400, {"error": {"message": "context window exceeded"}}))
    with pytest.raises(GeneratorError, match=r"400: context window exceeded"):
        await collect(remote)


async def test_a_validation_error_is_reported_without_the_echoed_request(
    fake: FakeOpenAIServer, remote: OpenAICompatGenerator, caplog: pytest.LogCaptureFixture
) -> None:
    # FastAPI servers (llama.cpp's Python server) echo the offending input: message text.
    detail = [{"loc": ["body", "messages"], "msg": "bad role", "input": "private words"}]
    fake.script.append(fake.status(422, {"detail": detail}))
    with pytest.raises(GeneratorError, match="bad role") as failure:
        await collect(remote)
    assert "private words" not in str(failure.value)
    assert "private words" not in caplog.text


@pytest.mark.parametrize("value", ["", "localhost:8080", "ftp://host/"])
def test_a_bad_base_url_names_the_setting(value: str) -> None:
    with pytest.raises(GeneratorError, match=r"\[model\] base_url"):
        OpenAICompatGenerator(ModelConfig(backend="openai", base_url=value))


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


# -- backend selection -----------------------------------------------------------------------


def test_tabby_variables_select_the_remote_backend(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.toml"), environ={})
    assert select_backend(config, {}) is config
    selected = select_backend(
        config,
        {"tabby_url": "http://tabby:8080", "tabby_key": "auth_123", "tabby_model": "Saiga"},
    )
    model = selected.model
    assert model.backend == "openai"
    assert model.base_url == "http://tabby:8080"
    assert model.api_key.get_secret_value() == "auth_123"
    assert model.model == "Saiga"
    assert select_backend(selected, {"tabby_url": "http://tabby:8080"}) == selected
    assert selected.storage == config.storage


def test_tabby_defaults_to_temperature_zero_unless_configured(tmp_path: Path) -> None:
    env = {"TABBY_URL": "http://tabby:8080"}  # the upper-case spelling works too
    plain = load_config(_config_without_temperature(tmp_path), environ={})
    assert plain.model.temperature == 0.3
    assert select_backend(plain, env).model.temperature == 0.0
    explicit = load_config(write_config(tmp_path / "b.toml", model={"temperature": 0.7}), {})
    assert select_backend(explicit, env).model.temperature == 0.7


def _config_without_temperature(tmp_path: Path) -> Path:
    """A config that leaves [model] temperature at its default (write_config sets it)."""
    path = tmp_path / "plain.toml"
    path.write_text(
        f"[storage]\ndata_dir = {str(tmp_path / 'data')!r}\n"
        f"[model]\nn_ctx = 1024\npath = {str(tmp_path / 'missing.gguf')!r}\n",
        encoding="utf-8",
    )
    return path


def test_tabby_variables_are_read_from_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("tabby_url", "tabby_key", "tabby_model", "TABBY_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "c.toml")
    (tmp_path / ".env").write_text("tabby_url=http://tabby:8080\ntabby_key=k\n", encoding="utf-8")
    model = select_backend(load_config(path)).model
    assert (model.backend, model.base_url, model.api_key.get_secret_value()) == (
        "openai",
        "http://tabby:8080",
        "k",
    )


async def test_the_factory_builds_the_remote_generator_from_tabby_variables(
    fake: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("tabby_url", fake.url)
    monkeypatch.setenv("tabby_key", "fake-key")
    config = load_config(write_config(tmp_path / "c.toml"), environ={})
    assert config.model.backend == "llama_cpp"
    generator = await load_generator(config)
    try:
        assert isinstance(generator, OpenAICompatGenerator)
        assert generator.name == f"openai:default@{fake.url}"
    finally:
        await generator.aclose()


async def test_the_app_answers_from_tabby_at_temperature_zero(
    fake: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("tabby_url", fake.url)
    monkeypatch.setenv("tabby_key", "fake-key")
    # A local model that cannot load: an answer can only come from the server.
    app = await App.start(load_config(_config_without_temperature(tmp_path), environ={}))
    try:
        adapter = RecordingAdapter()
        reply = await (await app.core.submit(inbound("hi", channel="console:local"), adapter))
    finally:
        await app.aclose()
    assert reply.text == "Hello from the fake."
    assert fake.requests[-1].body["temperature"] == 0.0


async def test_a_refused_key_fails_at_start_up(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.toml"), environ={})
    model = remote_config(fake.url, key="wrong")
    with pytest.raises(GeneratorError, match="refused the API key"):
        await load_remote_generator(config.model_copy(update={"model": model}))


# -- fallback to the local model -------------------------------------------------------------


async def test_fallback_answers_locally_when_the_server_is_unreachable(
    sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    remote = OpenAICompatGenerator(remote_config(f"http://127.0.0.1:{free_port()}"), sleep=sleep)
    local = FakeGenerator(lambda messages: "local answer")
    loads: list[int] = []

    async def load_local() -> FakeGenerator:
        loads.append(1)
        return local

    generator = FallbackGenerator(remote, load_local)
    try:
        for _ in range(2):
            pieces, stats = await collect(generator)
            assert "".join(pieces).strip() == "local answer"
            assert stats.completion_tokens == 2
    finally:
        await generator.aclose()
    assert loads == [1]  # loaded once, kept
    assert "answering with the local model" in caplog.text


async def test_fallback_is_not_used_for_a_refused_key(fake: FakeOpenAIServer) -> None:
    remote = OpenAICompatGenerator(remote_config(fake.url, key="wrong"))
    loads: list[int] = []

    async def load_local() -> FakeGenerator:
        loads.append(1)
        return FakeGenerator()

    generator = FallbackGenerator(remote, load_local)
    try:
        with pytest.raises(GeneratorError, match="refused the API key"):
            await collect(generator)
    finally:
        await generator.aclose()
    assert loads == []


async def test_fallback_answers_locally_when_5xx_outlasts_the_retries(
    fake: FakeOpenAIServer, sleep: RecordingSleep
) -> None:
    fake.default = fake.status(503)
    remote = OpenAICompatGenerator(remote_config(fake.url), sleep=sleep)
    generator = FallbackGenerator(remote, lambda: _fake_local("still here"))
    try:
        pieces, _ = await collect(generator)
    finally:
        await generator.aclose()
    assert "".join(pieces).strip() == "still here"
    assert len(fake.requests) == 3


async def _fake_local(text: str) -> FakeGenerator:
    return FakeGenerator(lambda messages: text)


@pytest.mark.model
async def test_fallback_to_the_bundled_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = write_config(
        tmp_path / "c.toml",
        model={
            "backend": "openai",
            "base_url": f"http://127.0.0.1:{free_port()}",
            "max_retries": 0,
            "fallback_to_local": True,
        },
    )
    generator = await load_remote_generator(load_config(path, environ={}))
    try:
        pieces, stats = await collect(generator)
    finally:
        await generator.aclose()
    assert "".join(pieces).strip()
    assert stats.completion_tokens > 0
    assert "every message will try again" in caplog.text
    assert "answering with the local model" in caplog.text


# -- doctor ----------------------------------------------------------------------------------


def _doctor_config(tmp_path: Path, **model: Any) -> Config:
    model = {"backend": "openai", "max_retries": 0, **model}
    return load_config(write_config(tmp_path / "c.toml", model=model), environ={})


async def test_doctor_checks_the_server(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    config = _doctor_config(tmp_path, base_url=fake.url)
    config = config.model_copy(
        update={"model": config.model.model_copy(update={"api_key": SecretStr("fake-key")})}
    )
    out = io.StringIO()
    assert await run_doctor(config, out) == 0, out.getvalue()
    line = next(x for x in out.getvalue().splitlines() if x.startswith("server"))
    assert "ok" in line
    assert "fake-model" in line
    assert "token counts estimated" in line
    assert "model " not in out.getvalue().replace("fake-model", "")  # no local model check


async def test_doctor_reports_a_refused_key_and_an_unreachable_server(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    out = io.StringIO()
    assert await run_doctor(_doctor_config(tmp_path, base_url=fake.url), out) == 1
    assert "FAIL" in out.getvalue()
    assert "wants an API key" in out.getvalue()
    out = io.StringIO()
    down = _doctor_config(tmp_path, base_url=f"http://127.0.0.1:{free_port()}")
    assert await run_doctor(down, out) == 1
    assert "cannot reach" in out.getvalue()


async def test_doctor_compares_n_ctx_and_the_model_with_what_the_server_serves(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake.max_model_len = 2048  # as vLLM reports it
    key = SecretStr("fake-key")
    cases = [
        ({"n_ctx": 2048}, 0, "fake-model"),
        ({"n_ctx": 4096}, 1, "[model] n_ctx 4096 is larger than the server's context of 2048"),
        ({"model": "other"}, 1, "does not serve [model] model 'other'; it serves: fake-model"),
    ]
    for values, code, expected in cases:
        config = _doctor_config(tmp_path, base_url=fake.url, **values)
        model = config.model.model_copy(update={"api_key": key})
        out = io.StringIO()
        assert await run_doctor(config.model_copy(update={"model": model}), out) == code
        assert expected in out.getvalue()


@pytest.mark.parametrize("chat_model", ["SaigaGemma2-9B", None])
async def test_doctor_understands_tabby(tmp_path: Path, chat_model: str | None) -> None:
    tabby = FakeOpenAIServer(key=None, serve_models=False, tabby_chat_model=chat_model)
    await tabby.start()
    try:
        out = io.StringIO()
        code = await run_doctor(_doctor_config(tmp_path, base_url=tabby.url), out)
    finally:
        await tabby.close()
    if chat_model:
        assert code == 0, out.getvalue()
        assert "chat model: SaigaGemma2-9B" in out.getvalue()
    else:
        assert code == 1
        assert "has no chat model" in out.getvalue()


# -- token counting --------------------------------------------------------------------------

ESTIMATE_SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll find it's not what they'd expected: a 3-day trip.",
    "a b c d e f g h i j k l m n o p",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Вчера вечером мы долго обсуждали, как лучше организовать хранение заметок.",
    # Capitals cost SmolLM2 most; upper() keeps look-alike letters out of the source.
    "внимание: сервер недоступен, повторите попытку позже.".upper(),
    "Ґрунтовні дослідження показали, що їхні пропозиції є обґрунтованими.",
    "Ёжик, щётка, подъезд, «цитата» — тире, №5, 10°C!",
    "def f(x: int) -> dict[str, list[int]]:\n    return {'a': [x, x + 1]}  # комментарий\n",
    '{"role": "user", "content": "Hi", "id": 12345, "tags": ["a", "b"]}',
    "https://example.com/path?query=value&lang=ru#section-2",
    "1234567890 3.14159 2026-11-23 +7 (999) 123-45-67",
    "🙂🙃😀 ok 👍🏽 ✨ 你好世界。",
    "0xDEADBEEF sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "a    b\t\tc\n\n\nd      e",
]


@pytest.fixture(scope="module")
def bundled_vocab() -> Iterator[Any]:
    from llama_cpp import Llama  # noqa: PLC0415 - heavy import, model tests only

    from agent.generators.llama_cpp import bundled_model_path  # noqa: PLC0415

    llama = Llama(model_path=str(bundled_model_path()), vocab_only=True, verbose=False)
    yield llama
    llama.close()


def _real_count(llama: Any, text: str) -> int:
    return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))


@pytest.mark.model
@pytest.mark.parametrize("text", ESTIMATE_SAMPLES)
def test_the_estimate_never_falls_short_of_the_bundled_tokenizer(
    bundled_vocab: Any, text: str
) -> None:
    # SmolLM2's English-centric vocabulary is the worst case for Cyrillic we can check offline.
    assert estimate_tokens(text) >= _real_count(bundled_vocab, text)


def test_the_estimate_of_nothing_is_nothing() -> None:
    assert estimate_tokens("") == 0


# -- against the real llama_cpp.server -------------------------------------------------------


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    server = LlamaServer(api_key="srv-" + secrets.token_hex(12), log_path=log)
    server.start()
    yield server
    server.stop()


def _server_config(server: LlamaServer, **values: Any) -> ModelConfig:
    return remote_config(server.url, key=server.api_key, n_ctx=server.n_ctx, **values)


async def _non_streamed(server: LlamaServer, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/v1/chat/completions", json=body, headers=headers) as answer,
    ):
        assert answer.status == 200, await answer.text()
        result: dict[str, Any] = await answer.json()
        return result


@pytest.mark.slow
@pytest.mark.model
async def test_streamed_reply_equals_the_non_streamed_reply(llama_server: LlamaServer) -> None:
    # llama.cpp reuses the KV cache of the longest common prefix with the previous request, and
    # evaluating a prompt in different batches changes the floating-point results slightly, so
    # at temperature 0 a reply can differ depending on what the server answered before. Both
    # replies are therefore produced by a freshly started server (empty cache): same state,
    # same request body except ``stream``.
    await asyncio.to_thread(llama_server.restart)
    generator = OpenAICompatGenerator(_server_config(llama_server))
    try:
        pieces, stats = await collect(generator)
        body = generator.request_body(MESSAGES, GREEDY, stream=False)
    finally:
        await generator.aclose()
    await asyncio.to_thread(llama_server.restart)
    whole = await _non_streamed(llama_server, body)

    streamed = "".join(pieces)
    assert len(pieces) > 1  # really streamed, token by token
    assert streamed.strip()
    assert streamed == whole["choices"][0]["message"]["content"]
    assert stats.finish_reason == whole["choices"][0]["finish_reason"]


@pytest.mark.slow
@pytest.mark.model
async def test_a_wrong_key_is_a_clear_401(llama_server: LlamaServer) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    generator = OpenAICompatGenerator(remote_config(llama_server.url, key=wrong))
    try:
        with pytest.raises(GeneratorError) as caught:
            await collect(generator)
        probe = await generator.probe()
    finally:
        await generator.aclose()
    message = str(caught.value)
    assert "refused the API key (401: Invalid API key)" in message
    assert "tabby_key or BESEDA_MODEL__API_KEY" in message
    assert wrong not in message
    assert probe.auth_failed


@pytest.mark.slow
@pytest.mark.model
async def test_token_counts_come_from_the_servers_tokenizer(
    llama_server: LlamaServer, bundled_vocab: Any
) -> None:
    generator = OpenAICompatGenerator(_server_config(llama_server))
    russian = ChatMessage("user", "Как называется столица Франции? Ответь одним словом.")
    messages = [*MESSAGES[:1], russian]
    try:
        await generator.start()
        assert generator.tokenizer is not None
        assert generator.tokenizer.path == "/extras/tokenize/count"
        estimated = [generator.count_tokens(m.content) for m in messages]
        await collect_messages(generator, messages)
        exact = [generator.count_tokens(m.content) for m in messages]
        prompt_estimate = generator.count_prompt_tokens(messages)
        body = generator.request_body(messages, GREEDY, stream=False)
    finally:
        await generator.aclose()
    real = [_real_count(bundled_vocab, m.content) for m in messages]
    assert exact == real
    assert all(e >= r for e, r in zip(estimated, real, strict=True))
    # The whole prompt, as the server's template renders it, fits in what we budget.
    usage = (await _non_streamed(llama_server, body))["usage"]
    assert prompt_estimate >= usage["prompt_tokens"]


async def collect_messages(generator: Any, messages: list[ChatMessage]) -> str:
    return "".join([piece async for piece in generator.stream(messages, GREEDY)])


@pytest.mark.slow
@pytest.mark.model
async def test_doctor_against_the_real_server(llama_server: LlamaServer, tmp_path: Path) -> None:
    config = _doctor_config(tmp_path, base_url=llama_server.url, n_ctx=llama_server.n_ctx)
    secret = SecretStr(llama_server.api_key)
    config = config.model_copy(
        update={"model": config.model.model_copy(update={"api_key": secret})}
    )
    out = io.StringIO()
    assert await run_doctor(config, out) == 0, out.getvalue()
    assert "token counts exact via /extras/tokenize/count" in out.getvalue()
    assert llama_server.api_key not in out.getvalue()


@pytest.mark.slow
@pytest.mark.model
def test_cli_chat_answers_from_the_server_named_by_tabby_variables(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    # The local model path points nowhere, so without the variables the command must fail,
    # and with them the answer can only come from the server (whose access log shows it).
    path = write_config(
        tmp_path / "c.toml",
        model={"path": str(tmp_path / "missing.gguf"), "n_ctx": llama_server.n_ctx},
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(("tabby_", "beseda_"))}
    command = [sys.executable, "-m", "agent", "--config", str(path), "chat", "--stats"]
    question = "What is the capital of France?"

    local = subprocess.run(
        [*command, question], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert local.returncode != 0
    assert "missing.gguf" in local.stderr

    served_before = llama_server.chat_requests_logged()
    env |= {"tabby_url": llama_server.url, "tabby_key": llama_server.api_key}
    remote = subprocess.run(
        [*command, question], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout.strip()
    assert "prompt_tokens=" in remote.stderr
    assert llama_server.chat_requests_logged() == served_before + 1
    assert llama_server.api_key not in remote.stdout + remote.stderr
