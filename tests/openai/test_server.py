"""Against the real ``llama_cpp.server`` with the bundled model: streamed equals non-streamed,
the key check, token counting from the server's tokenizer, doctor and the CLI."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from agent.cli.doctor import run_doctor
from agent.config import ModelConfig
from agent.generators.base import ChatMessage, GeneratorError
from agent.generators.openai_compat import OpenAICompatGenerator
from agent.generators.openai_wire import estimate_tokens
from tests.conftest import write_config
from tests.openai.helpers import (
    GREEDY,
    MESSAGES,
    collect,
    doctor_config,
    remote_config,
)
from tests.support.openai_peer import LlamaServer

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

    from agent.generators.gguf import bundled_model_path  # noqa: PLC0415

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
    config = doctor_config(tmp_path, base_url=llama_server.url, n_ctx=llama_server.n_ctx)
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
