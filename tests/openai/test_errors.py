"""What the remote generator retries (429, 5xx, dropped connections) and what it reports at
once, naming the setting to change."""

from __future__ import annotations

import pytest

from agent.config import ModelConfig
from agent.generators.base import GeneratorError
from agent.generators.openai_compat import OpenAICompatGenerator
from agent.generators.openai_wire import RemoteUnavailableError
from tests.openai.helpers import RecordingSleep, collect, drain, remote_config
from tests.support.openai_peer import FakeOpenAIServer, free_port

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
