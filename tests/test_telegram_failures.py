"""Telegram faults from the outside, through the loopback Bot API, the real adapter (aiogram),
the real core and, where restarts matter, the real App and its supervisor: hostile text, an
update aiogram cannot read, an answer it cannot decode, a stop in the middle of a batch.
Nothing the person sent is lost, nothing is answered twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.registry import configured_adapters
from adapters.telegram.adapter import TelegramAdapter
from agent.app import App, build_core
from agent.config import (
    ChatConfig,
    Config,
    ContextConfig,
    ModelConfig,
    PersonaConfig,
    TelegramConfig,
    load_config,
)
from agent.events import Inbound
from agent.ports import ReplyTarget
from agent.runtime.supervisor import AdapterState, Backoff
from memory.db import Database
from memory.history import SqlHistoryStore
from tests.conftest import write_config
from tests.support import telegram_fake as tf
from tests.support.fakes import FakeGenerator, RecordedSleeps, SteppingClock
from tests.test_telegram import ALICE_KEY, StartBot, db, fake, start_bot  # noqa: F401 (fixtures)

ALICE = tf.ALICE["id"]


async def test_hostile_text_becomes_u_fffd_and_an_unreadable_update_is_skipped(
    start_bot: StartBot,  # noqa: F811
    fake: tf.TelegramFake,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_bot(attachments=True)
    indexed: list[str] = []

    async def hook(scope: str, name: str, data: bytes, lang: str) -> str:
        indexed.append(name)
        return f"Indexed {name}."

    bot.adapter.use_documents(hook)
    mallory = tf.user(666, "mal\ud800lory")
    # The fake answers with json.dumps: a lone surrogate goes out as the escape "\ud800",
    # which Python's json decodes into a string no encoder takes.
    await fake.send("abc\ud800def", author=mallory)
    assert await bot.answered(1, 666) == ["echo: abc\ufffddef"]
    # A file name goes back to Telegram in the notice; the caption is answered after it.
    await fake.send("what is in it\udc00?", document=fake.add_file("re\ud800port.md", b"x"))
    assert await bot.answered(2) == ["Indexed re\ufffdport.md.", "echo: what is in it\ufffd?"]
    assert indexed == ["re\ufffdport.md"]
    # An update aiogram cannot read (no chat type) fails its whole batch; it is skipped.
    await fake.deliver({"message": {"message_id": 90, "date": 0, "chat": {"id": ALICE}}})
    await fake.send("still there?")
    assert (await bot.answered(3))[-1] == "echo: still there?"
    assert "skipped update" in caplog.text
    assert "message.chat.type: Field required" in caplog.text
    assert "getUpdates failed" not in caplog.text  # read leniently, not retried
    assert bot.sleeps.delays == []
    stored = await bot.core.history.conversation(f"telegram:{666}")
    assert [(m.text, m.author_name) for m in stored if m.role == "user"] == [
        ("abc\ufffddef", "mal\ufffdlory")
    ]
    mine = await bot.core.history.conversation(ALICE_KEY)
    assert [m.text for m in mine if m.role == "user"] == ["what is in it\ufffd?", "still there?"]


async def test_a_stop_in_the_middle_of_a_batch_loses_nothing_and_answers_nothing_twice(
    start_bot: StartBot,  # noqa: F811
    fake: tf.TelegramFake,  # noqa: F811
    db: Database,  # noqa: F811
) -> None:
    # Written while Beseda was down: the first poll brings all three in one batch.
    for text in ("one", "two", "three"):
        await fake.send(text)
    config = Config(
        model=ModelConfig(max_tokens=64, temperature=0),
        persona=PersonaConfig(system_prompt="You are a test."),
        chat=ChatConfig(safety_margin_tokens=8),
        context=ContextConfig(date="off"),
    )
    core = build_core(config, SqlHistoryStore(db), FakeGenerator())
    adapter = TelegramAdapter(
        TelegramConfig(api_url=fake.url),
        fake.token,
        clock=SteppingClock(0.0),
        sleep=RecordedSleeps().sleep,
    )

    async def submit_then_stop(inbound: Inbound, target: ReplyTarget) -> object:
        # SIGTERM arrives while the batch is being taken in, right after its first message.
        taken = await core.submit(inbound, target)
        await adapter.stop()
        return taken

    await asyncio.wait_for(adapter.run(submit_then_stop), 10)
    await core.close(5)  # the drain: "one" is answered
    assert fake.texts(ALICE) == ["echo: one"]
    assert fake.confirmed == 0  # the batch was not confirmed: Telegram still has it

    again = await start_bot()
    texts = await again.answered(3)
    assert texts == ["echo: one", "echo: two", "echo: three"]
    assert [c[-1].content for c in again.generator.calls] == ["two", "three"]
    stored = await again.core.history.conversation(ALICE_KEY)
    assert [m.text for m in stored if m.role == "user"] == ["one", "two", "three"]


@contextlib.asynccontextmanager
async def serving(
    server: tf.TelegramFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[App, TelegramAdapter]]:
    """`run` as the command line does it, with a short back-off for the restarts."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_TOKEN", server.token)
    path = write_config(
        tmp_path / "config.toml",
        retrieval={"enabled": False},
        context={"date": "off", "summaries": False},
        telegram={"api_url": server.url},
    )
    async with App.open(load_config(path, environ={}), generator=FakeGenerator()) as app:
        app.backoff = Backoff(first=0.01, cap=0.05)
        [adapter] = configured_adapters(app.config, lambda: pytest.fail("console"))
        assert isinstance(adapter, TelegramAdapter)
        running = asyncio.create_task(app.serve([adapter]))
        try:
            await asyncio.wait_for(adapter._ready.wait(), 10)
            yield app, adapter
        finally:
            assert app.supervisor is not None
            await app.supervisor.stop()
            await asyncio.wait_for(running, 20)


async def test_a_reply_in_flight_when_telegram_crashes_is_delivered_and_its_session_closed(
    fake: tf.TelegramFake,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run ends (a crash) while an answer is being generated: the answer is still sent
    through the old run's session, which is closed once it is done. The restarted run has
    a session of its own; the old one used to stay open for good (the whole suite's
    "Unclosed client session" at exit)."""
    async with serving(fake, tmp_path, monkeypatch) as (app, adapter):
        generator = app.generator
        assert isinstance(generator, FakeGenerator)
        release = asyncio.Event()
        generator.hold = lambda messages: release if messages[-1].content == "slow" else None
        await fake.send("slow")
        await generator.wait_for_calls(1)  # its reply is open, its generation held
        first = adapter.bot
        assert first is not None
        await fake.wait_for(lambda: fake.confirmed > 0)
        fake.garble_next("getUpdates")
        await fake.send("during")
        assert app.supervisor is not None
        [entry] = app.supervisor.adapters
        await fake.wait_for(lambda: entry.restarts == 1 and entry.state is AdapterState.RUNNING)
        assert adapter.bot is not first
        assert fake.texts(ALICE) == []
        release.set()  # "during" waits for "slow": one chat answers in order
        await fake.wait_for(lambda: fake.texts(ALICE) == ["echo: slow", "echo: during"])
        http = first.session._session  # aiogram's aiohttp session
        await fake.wait_for(lambda: http is None or http.closed)


async def test_an_adapter_that_raises_is_restarted_and_takes_each_message_once(
    fake: tf.TelegramFake,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(fake, tmp_path, monkeypatch) as (app, _adapter):
        await fake.send("before")
        await fake.wait_for(lambda: fake.texts(ALICE) == ["echo: before"])
        # The poll that confirms "before" is waiting for news; the one after it gets an
        # answer that is not UTF-8, and aiohttp's UnicodeDecodeError ends the adapter's run.
        await fake.wait_for(lambda: fake.confirmed > 0)
        fake.garble_next("getUpdates")
        await fake.send("during")
        await fake.wait_for(lambda: not fake.garbled["getUpdates"])
        assert app.supervisor is not None
        [entry] = app.supervisor.adapters
        await fake.wait_for(lambda: entry.restarts == 1 and entry.state is AdapterState.RUNNING)
        await fake.send("after")
        want = ["echo: before", "echo: during", "echo: after"]
        await fake.wait_for(lambda: fake.texts(ALICE) == want)
        stored = await app.core.history.conversation(ALICE_KEY)
        assert [m.text for m in stored if m.role == "user"] == ["before", "during", "after"]
    assert "telegram failed; restarting it in" in caplog.text
    assert "UnicodeDecodeError" in caplog.text
    # "during" was handled, its confirmation never arrived, so it came again after the
    # restart: the history's once-only check refused the copy.
    assert "taken in before" in caplog.text
    assert fake.texts(ALICE) == want
