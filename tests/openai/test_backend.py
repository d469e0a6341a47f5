"""Choosing the remote backend (Tabby variables, .env), falling back to the local model, and
`doctor`'s view of the server."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.app import App
from agent.cli.doctor import run_doctor
from agent.config import load_config, select_backend
from agent.generators import load_generator
from agent.generators.base import GeneratorError
from agent.generators.fallback import FallbackGenerator
from agent.generators.openai_compat import OpenAICompatGenerator, load_remote_generator
from tests.conftest import write_config
from tests.openai.helpers import RecordingSleep, collect, doctor_config, remote_config
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound
from tests.support.openai_peer import FakeOpenAIServer, free_port

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
    async with App.open(load_config(_config_without_temperature(tmp_path), environ={})) as app:
        adapter = RecordingAdapter()
        reply = await (await app.core.submit(inbound("hi", channel="console:local"), adapter))
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
    generator = await load_generator(load_config(path, environ={}))
    try:
        pieces, stats = await collect(generator)
    finally:
        await generator.aclose()
    assert "".join(pieces).strip()
    assert stats.completion_tokens > 0
    assert "every message will try again" in caplog.text
    assert "answering with the local model" in caplog.text


# -- doctor ----------------------------------------------------------------------------------


async def test_doctor_checks_the_server(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    config = doctor_config(tmp_path, base_url=fake.url)
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
    assert await run_doctor(doctor_config(tmp_path, base_url=fake.url), out) == 1
    assert "FAIL" in out.getvalue()
    assert "wants an API key" in out.getvalue()
    out = io.StringIO()
    down = doctor_config(tmp_path, base_url=f"http://127.0.0.1:{free_port()}")
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
        config = doctor_config(tmp_path, base_url=fake.url, **values)
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
        code = await run_doctor(doctor_config(tmp_path, base_url=tabby.url), out)
    finally:
        await tabby.close()
    if chat_model:
        assert code == 0, out.getvalue()
        assert "chat model: SaigaGemma2-9B" in out.getvalue()
    else:
        assert code == 1
        assert "has no chat model" in out.getvalue()
