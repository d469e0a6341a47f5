"""Discord faults from the outside, through the loopback fake and the real App: a hostile
frame, an answer discord.py cannot parse, an adapter that raises, messages written while the
bot was away or while its session was lost. Nothing the person sent is lost, nothing is
answered twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.attachments import DocumentsHook
from adapters.discord import DiscordAdapter
from agent.app import App
from agent.config import DiscordConfig, load_config
from agent.runtime.supervisor import AdapterState, Backoff
from memory.records import Status, StoredMessage
from tests.conftest import write_config
from tests.support import discord_fake as fk
from tests.support.fakes import FakeGenerator
from tests.test_discord import BOB, MENTION, StartBot, fake, start_bot  # noqa: F401 (fixtures)

KEY = f"discord:{fk.CHANNEL_ID}"
THREAD_KEY = f"discord:{fk.THREAD_ID}"


class Served:
    """One `run` of Beseda (App, supervisor and the real Discord adapter) on the fake."""

    def __init__(self, app: App, adapter: DiscordAdapter, generator: FakeGenerator) -> None:
        self.app = app
        self.adapter = adapter
        self.generator = generator

    async def stored(self, key: str = KEY) -> list[StoredMessage]:
        return await self.app.core.history.conversation(key)

    async def idle(self) -> None:
        for _ in range(500):
            if not self.app.core._workers:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the core is still busy")


Serve = Callable[..., contextlib.AbstractAsyncContextManager[Served]]


@pytest.fixture
def serve(fake: fk.DiscordFake, tmp_path: Path) -> Serve:  # noqa: F811
    @contextlib.asynccontextmanager
    async def running(
        max_age_minutes: float = 30, documents: DocumentsHook | None = None
    ) -> AsyncIterator[Served]:
        path = write_config(
            tmp_path / "config.toml",
            retrieval={"enabled": False},
            context={"date": "off", "summaries": False},
            recovery={"max_age_minutes": max_age_minutes},
        )
        generator = FakeGenerator()
        async with App.open(load_config(path, environ={}), generator) as app:
            app.backoff = Backoff(first=0.01, cap=0.05)
            adapter = DiscordAdapter(
                DiscordConfig(attachments=documents is not None),
                fk.TOKEN,
                client_options={"guild_ready_timeout": 0.05},
            )
            if documents is not None:
                adapter.use_documents(documents)
            serving = asyncio.create_task(app.serve([adapter]))
            try:
                for _ in range(1000):
                    if adapter.client is not None or serving.done():
                        break
                    await asyncio.sleep(0.01)
                assert adapter.client is not None
                await asyncio.wait_for(adapter.client.wait_until_ready(), 10)
                await adapter.catch_up.wait()
                yield Served(app, adapter, generator)
            finally:
                assert app.supervisor is not None
                await app.supervisor.stop()
                await asyncio.wait_for(serving, 20)

    return running


async def answered(server: fk.DiscordFake, served: Served, want: list[str], channel: int) -> None:
    """Wait until the bot's messages in ``channel`` read ``want`` and the core is idle."""
    try:
        await server.wait_for(lambda: server.contents(channel) == want)
    except TimeoutError:
        assert server.contents(channel) == want  # shows the difference
    await served.idle()


async def test_a_lone_surrogate_in_a_gateway_frame_becomes_u_fffd_on_the_same_connection(
    start_bot: StartBot,  # noqa: F811
    fake: fk.DiscordFake,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_bot()
    mallory = fk.user(666, "mal\ud800lory")
    # json.dumps writes the lone surrogate as the escape "\ud800": the hostile frame itself.
    await fake.message_create(f"{MENTION} abc\ud800def", mentions=[fake.bot], author=mallory)
    assert await bot.answered(1) == ["echo: abc\ufffddef"]
    # A frame that is no JSON at all is skipped with a log line.
    await fake.send_raw('{"op": 0, "t": "MESSAGE_CREATE", "d": {"content": "cut')
    await fake.message_create(f"{MENTION} still there?", mentions=[fake.bot])
    # A second person has spoken: the echo model sees Alice's turn with her name.
    assert await bot.answered(2) == ["echo: abc\ufffddef", "echo: alice: still there?"]
    assert "skipped a gateway frame that is not JSON" in caplog.text
    assert (fake.identifies, fake.resumes) == (1, 0)  # never reconnected
    stored = await bot.core.history.conversation(KEY)
    assert [(m.role, m.text, m.author_name) for m in stored if m.role == "user"] == [
        ("user", "abc\ufffddef", "mal\ufffdlory"),
        ("user", "still there?", "alice"),
    ]


async def test_a_slash_command_answer_discord_py_cannot_parse_is_only_a_warning(
    start_bot: StartBot,  # noqa: F811
    fake: fk.DiscordFake,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The sync answer lacks "id": discord.py raised KeyError in app_commands/models.py.
    fake.fail_next("PUT", rf"/applications/{fk.APP_ID}/commands", 200, [{"name": "help"}])  # type: ignore[arg-type]
    bot = await start_bot()
    await fake.message_create(f"{MENTION} hello", mentions=[fake.bot])
    assert await bot.answered(1) == ["echo: hello"]
    assert "could not sync slash commands (KeyError" in caplog.text
    await fake.message_create("!help")  # the commands still work as messages
    assert (await bot.answered(2))[1].startswith("Commands:")


async def test_an_adapter_that_raises_is_restarted_and_answers_again(
    serve: Serve,
    fake: fk.DiscordFake,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serve() as served:
        await fake.message_create(f"{MENTION} before", mentions=[fake.bot])
        await answered(fake, served, ["echo: before"], fk.CHANNEL_ID)
        # The next HELLO has no heartbeat interval: discord.py's KeyError ends client.start,
        # so the adapter's run raises.
        fake.broken_hellos = 1
        await fake.drop()
        await fake.wait_for(lambda: fake.identifies == 2)
        assert served.app.supervisor is not None
        [entry] = served.app.supervisor.adapters
        assert entry.restarts == 1
        assert entry.state is AdapterState.RUNNING
        await fake.wait_ready()
        await fake.message_create(f"{MENTION} after", mentions=[fake.bot])
        await answered(fake, served, ["echo: before", "echo: after"], fk.CHANNEL_ID)
        assert "discord failed; restarting it in" in caplog.text
        assert [m.text for m in await served.stored() if m.role == "user"] == ["before", "after"]


async def test_messages_written_while_the_bot_was_stopped_are_answered_once_oldest_first(
    serve: Serve,
    fake: fk.DiscordFake,  # noqa: F811
) -> None:
    async with serve() as served:
        await fake.message_create(f"{MENTION} before", mentions=[fake.bot])
        await fake.message_create(
            f"{MENTION} in the thread", mentions=[fake.bot], channel_id=fk.THREAD_ID
        )
        await answered(fake, served, ["echo: before"], fk.CHANNEL_ID)
        await answered(fake, served, ["echo: in the thread"], fk.THREAD_ID)
    # Beseda is stopped; people write. The gateway is gone: nothing reaches the bot.
    now = datetime.now(UTC)
    await fake.message_create(
        f"{MENTION} too old", mentions=[fake.bot], at=now - timedelta(hours=2)
    )
    await fake.message_create(f"{MENTION} first", mentions=[fake.bot])
    await fake.message_create("just chatting, not for the bot", author=BOB)
    await fake.message_create(f"{MENTION} second", mentions=[fake.bot], author=BOB)
    await fake.message_create(
        f"{MENTION} missed in the thread", mentions=[fake.bot], channel_id=fk.THREAD_ID
    )
    assert fake.contents() == ["echo: before"]

    async with serve() as served:
        # Bob is the second person in the channel: his turn reaches the model with his name.
        await answered(
            fake, served, ["echo: before", "echo: first", "echo: bob: second"], fk.CHANNEL_ID
        )
        await answered(
            fake, served, ["echo: in the thread", "echo: missed in the thread"], fk.THREAD_ID
        )
        users = [(m.text, m.status) for m in await served.stored() if m.role == "user"]
        assert users == [(text, Status.RECEIVED) for text in ("before", "first", "second")]
        # Each missed message was fetched once, after the last one stored.
        path = f"/channels/{fk.CHANNEL_ID}/messages"
        reads = [r for r in fake.requests if (r.method, r.path) == ("GET", path)]
        assert len(reads) == 1
        assert served.generator.calls[-1][-1].content in {"bob: second", "missed in the thread"}

    async with serve() as served:  # and again: nothing is answered twice
        await asyncio.sleep(0.3)  # time for a wrong answer to show up
        await served.idle()
        assert served.generator.calls == []
    assert fake.contents() == ["echo: before", "echo: first", "echo: bob: second"]


async def test_a_message_the_bot_replied_to_without_storing_it_is_not_caught_up_again(
    serve: Serve,
    fake: fk.DiscordFake,  # noqa: F811
) -> None:
    """A message with only a document is answered by its notice and never stored; after a
    restart it must not be indexed and confirmed a second time."""
    indexed: list[str] = []

    async def documents(scope: str, name: str, data: bytes, lang: str) -> str:
        indexed.append(name)
        return f"indexed {name}" if len(indexed) == 1 else f"{name} is already there"

    async with serve(documents=documents) as served:
        await fake.message_create(f"{MENTION} before", mentions=[fake.bot])
        await answered(fake, served, ["echo: before"], fk.CHANNEL_ID)
        await fake.message_create(MENTION, mentions=[fake.bot], files={"notes.md": b"otters"})
        await answered(fake, served, ["echo: before", "indexed notes.md"], fk.CHANNEL_ID)
    await fake.message_create(f"{MENTION} while away", mentions=[fake.bot])

    async with serve(documents=documents) as served:
        await answered(
            fake, served, ["echo: before", "indexed notes.md", "echo: while away"], fk.CHANNEL_ID
        )
        assert indexed == ["notes.md"]


async def test_a_resume_that_fails_into_a_new_identify_catches_up_once(
    serve: Serve,
    fake: fk.DiscordFake,  # noqa: F811
) -> None:
    async with serve() as served:
        await fake.message_create(f"{MENTION} before", mentions=[fake.bot])
        await answered(fake, served, ["echo: before"], fk.CHANNEL_ID)
        # A long outage: the session is gone, and what was written meanwhile is not replayed.
        fake.forget_sessions()
        missed = await fake.message_create(f"{MENTION} during", mentions=[fake.bot], dispatch=False)
        await fake.drop()
        await answered(fake, served, ["echo: before", "echo: during"], fk.CHANNEL_ID)
        assert (fake.identifies, fake.resumes) == (2, 0)
        assert fake.sent_ops.count(fk.RESUME) == 1  # tried, refused
        # The gateway delivers it after all (a late event): stored already, not answered.
        await fake.dispatch("MESSAGE_CREATE", fake.received[missed])
        await fake.message_create(f"{MENTION} after", mentions=[fake.bot])
        await answered(fake, served, ["echo: before", "echo: during", "echo: after"], fk.CHANNEL_ID)
        users = [m.text for m in await served.stored() if m.role == "user"]
        assert users == ["before", "during", "after"]
        assert len(served.generator.calls) == 3


async def test_a_resumed_session_is_replayed_by_the_gateway_not_fetched(
    serve: Serve,
    fake: fk.DiscordFake,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="adapters.discord_catchup")
    async with serve() as served:
        await fake.message_create(f"{MENTION} before", mentions=[fake.bot])
        await answered(fake, served, ["echo: before"], fk.CHANNEL_ID)
        await fake.drop()
        await fake.message_create(f"{MENTION} while away", mentions=[fake.bot])
        await answered(fake, served, ["echo: before", "echo: while away"], fk.CHANNEL_ID)
        assert (fake.identifies, fake.resumes) == (1, 1)
        reads = [r for r in fake.requests if r.path.endswith("/messages") and r.method == "GET"]
        assert reads == []  # RESUMED: the gateway replayed it, nothing to fetch
