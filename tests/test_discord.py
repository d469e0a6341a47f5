"""The real Discord adapter and the real core, driven through the loopback Discord fake."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import discord
import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.attachments import channel_documents
from adapters.discord import DiscordAdapter, discord_adapter, discord_token
from adapters.intake import RATE_NOTICE
from adapters.registry import configured_adapters
from adapters.split import split_parts
from agent.app import App, build_core
from agent.cli.doctor import check_platforms
from agent.config import (
    ChatConfig,
    Config,
    ContextConfig,
    DiscordConfig,
    ModelConfig,
    PersonaConfig,
    load_config,
)
from agent.events import Inbound
from agent.generators.base import ChatMessage
from agent.ports import platform_failures
from agent.runtime.core import NOTHING_NOTICE, Core
from memory.db import Database
from memory.documents import DocumentIndex
from memory.history import SqlHistoryStore
from memory.vectors import ChromaStore, open_client
from tests.conftest import write_config
from tests.support import discord_fake as fk
from tests.support.fakes import FakeGenerator, SteppingClock, held_documents, record_submissions
from tests.support.retrieval import WordHashEmbedder

ALICE = fk.user(111, "alice")
BOB = fk.user(222, "bob")
MENTION = f"<@{fk.BOT_ID}>"


class RecordedSleeps:
    """The adapter's own back-off sleeps: recorded, not waited."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)


class Bot:
    def __init__(
        self,
        fake: fk.DiscordFake,
        adapter: DiscordAdapter,
        core: Core,
        gen: FakeGenerator,
        sleeps: RecordedSleeps,
    ) -> None:
        self.sleeps = sleeps
        self.fake = fake
        self.adapter = adapter
        self.core = core
        self.generator = gen

    async def answered(self, count: int, channel_id: int = fk.CHANNEL_ID) -> list[str]:
        """Wait until the bot has ``count`` messages in the channel and the core is idle."""
        await self.fake.wait_for(lambda: len(self.fake.contents(channel_id)) >= count)
        await self.idle()
        return self.fake.contents(channel_id)

    async def idle(self) -> None:
        for _ in range(200):
            if not self.core._workers:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the core is still busy")


StartBot = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[fk.DiscordFake]:
    server = fk.DiscordFake()
    await server.start()
    monkeypatch.setattr(Route, "BASE", server.api_base)
    monkeypatch.setattr(
        DiscordWebSocket, "DEFAULT_GATEWAY", discord.utils.yarl.URL(server.gateway_url)
    )  # type: ignore[attr-defined]
    yield server
    await server.stop()


@pytest.fixture
async def start_bot(fake: fk.DiscordFake, tmp_path: Path) -> AsyncIterator[StartBot]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'history.db'}")
    await db.migrate()
    running: list[tuple[DiscordAdapter, asyncio.Task[None], Core]] = []
    sleeps = RecordedSleeps()

    async def start(
        answer: Callable[[Sequence[ChatMessage]], str] | None = None,
        clock: Callable[[], float] | None = None,
        **discord_options: Any,
    ) -> Bot:
        generator = FakeGenerator(answer)
        config = Config(
            model=ModelConfig(max_tokens=64, temperature=0),
            persona=PersonaConfig(system_prompt="You are a test."),
            chat=ChatConfig(safety_margin_tokens=8),
            context=ContextConfig(date="off"),
        )
        core = build_core(config, SqlHistoryStore(db), generator)
        adapter = DiscordAdapter(
            DiscordConfig(**discord_options),
            fk.TOKEN,
            clock=clock or SteppingClock(0.0),
            sleep=sleeps.sleep,
            client_options={"guild_ready_timeout": 0.05},
        )
        task = asyncio.create_task(adapter.run(core.submit))
        running.append((adapter, task, core))
        await fake.wait_ready()
        client = adapter.client
        assert client is not None
        await asyncio.wait_for(client.wait_until_ready(), 10)
        return Bot(fake, adapter, core, generator, sleeps)

    yield start
    for adapter, task, core in running:
        await adapter.stop()
        await asyncio.wait_for(task, 10)
        await core.close(1)
    await db.close()


def chunks_are_well_formed(chunks: list[str]) -> None:
    for chunk in chunks:
        assert 0 < len(chunk) <= 2000
        fences = [line for line in chunk.split("\n") if line.strip().startswith("```")]
        assert len(fences) % 2 == 0, chunk


async def test_a_mention_is_answered_by_a_reply_streamed_with_edits(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    words = " ".join(f"word{i}" for i in range(12))
    bot = await start_bot(answer=lambda _m: words, clock=SteppingClock(0.4))
    asked = await fake.message_create(f"{MENTION} tell me", mentions=[fake.bot])
    assert await bot.answered(1) == [words]
    [post] = fake.posted()
    assert int(post.body["message_reference"]["message_id"]) == asked
    assert words.startswith(post.body["content"])
    edits = fake.edits()
    # Throttled: fewer edits than tokens, each showing a longer prefix, the last one whole.
    assert 1 <= len(edits) < 12
    assert all(words.startswith(e.body["content"]) for e in edits)
    assert edits[-1].body["content"] == words
    # The typing indicator came before the first message.
    paths = [r.path for r in fake.requests]
    assert paths.index(f"/channels/{fk.CHANNEL_ID}/typing") < paths.index(post.path)
    # The bot's own mention is not part of what the model saw.
    assert bot.generator.calls[0][-1].content == "tell me"


async def test_a_frozen_clock_allows_no_edit_until_the_final_text(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot(answer=lambda _m: "one two three four five six")
    await fake.message_create(f"{MENTION} count", mentions=[fake.bot])
    assert await bot.answered(1) == ["one two three four five six"]
    assert len(fake.posted()) == 1
    assert len(fake.edits()) == 1  # only the final, whole text


async def test_a_long_answer_is_split_with_intact_code_fences(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(120))
    answer = "Here is the code:\n\n```python\n" + code + "\n```\n\n" + "Done. " * 100
    answer = answer.strip()
    assert len(answer) > 4500
    bot = await start_bot(answer=lambda _m: answer)
    await fake.message_create(f"{MENTION} code please", mentions=[fake.bot])
    await bot.answered(3)
    contents = fake.contents()
    assert len(contents) >= 3
    chunks_are_well_formed(contents)
    assert "".join(
        "".join(c.replace("```python", "").replace("```", "").split()) for c in contents
    ) == ("".join(answer.replace("```python", "").replace("```", "").split()))
    # The second chunk reopens the python block the first one had to close.
    assert contents[1].startswith("```python\n")


async def test_plain_messages_are_ignored_unless_the_channel_takes_all(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot(all_messages_channels=[fk.OTHER_CHANNEL_ID])
    await fake.message_create("just chatting")
    await fake.message_create("anyone?", channel_id=fk.OTHER_CHANNEL_ID)
    assert await bot.answered(1, fk.OTHER_CHANNEL_ID) == ["echo: anyone?"]
    assert fake.contents() == []
    assert len(bot.generator.calls) == 1


async def test_direct_messages_are_answered_when_enabled(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    await fake.message_create("hi in private", channel_id=fk.DM_CHANNEL_ID, guild=False)
    assert await bot.answered(1, fk.DM_CHANNEL_ID) == ["echo: hi in private"]


async def test_direct_messages_are_ignored_when_disabled(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot(dms=False)
    await fake.message_create("hi in private", channel_id=fk.DM_CHANNEL_ID, guild=False)
    await fake.message_create(f"{MENTION} and here?", mentions=[fake.bot])
    assert await bot.answered(1) == ["echo: and here?"]
    assert fake.contents(fk.DM_CHANNEL_ID) == []


async def test_allow_lists_admit_listed_users_and_roles_only(
    start_bot: StartBot, fake: fk.DiscordFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="adapters.discord")
    carol = fk.user(333, "carol")
    bot = await start_bot(users=[222], roles=[fk.ROLE_ID])
    await fake.message_create(f"{MENTION} from alice", mentions=[fake.bot], author=ALICE)
    await fake.message_create(
        f"{MENTION} from carol", mentions=[fake.bot], author=carol, roles=[fk.ROLE_ID]
    )
    await fake.message_create(f"{MENTION} from bob", mentions=[fake.bot], author=BOB)
    await bot.answered(2)
    # Whoever the core heard second is named (see tests/test_groups.py); discord.py
    # dispatches each event in a task of its own, so either may come first.
    assert sorted(fake.contents()) in (
        ["echo: bob: from bob", "echo: from carol"],
        ["echo: carol: from carol", "echo: from bob"],
    )
    assert "ignored user 111" in caplog.text


async def test_channel_allow_list_denies_other_channels(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot(channels=[fk.OTHER_CHANNEL_ID])
    await fake.message_create(f"{MENTION} here", mentions=[fake.bot])
    await fake.message_create(
        f"{MENTION} there", mentions=[fake.bot], channel_id=fk.OTHER_CHANNEL_ID
    )
    assert await bot.answered(1, fk.OTHER_CHANNEL_ID) == ["echo: there"]
    assert fake.contents() == []


async def test_other_bots_are_ignored(start_bot: StartBot, fake: fk.DiscordFake) -> None:
    other_bot = fk.user(444, "otherbot", bot=True)
    bot = await start_bot()
    await fake.message_create(f"{MENTION} ping", mentions=[fake.bot], author=other_bot)
    await fake.message_create(f"{MENTION} human", mentions=[fake.bot])
    assert await bot.answered(1) == ["echo: human"]
    assert len(bot.generator.calls) == 1


async def test_a_thread_is_its_own_channel(start_bot: StartBot, fake: fk.DiscordFake) -> None:
    bot = await start_bot()
    await fake.message_create(
        f"{MENTION} in a thread", mentions=[fake.bot], channel_id=fk.THREAD_ID
    )
    assert await bot.answered(1, fk.THREAD_ID) == ["echo: in a thread"]
    history = bot.core._history
    stored = await history.conversation(f"discord:{fk.THREAD_ID}")
    assert [m.text for m in stored] == ["in a thread", "echo: in a thread"]
    assert await history.conversation(f"discord:{fk.CHANNEL_ID}") == []


async def test_a_reply_to_the_bot_is_answered_and_a_quoted_message_is_context(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    await fake.message_create(f"{MENTION} first", mentions=[fake.bot])
    await bot.answered(1)
    [mine] = list(fake.messages.values())
    await fake.message_create("and a reply", reference=mine)
    await bot.answered(2)
    other = {
        "id": "123", "channel_id": str(fk.CHANNEL_ID), "author": BOB, "content": "the sky is green",
        "timestamp": fk.TIMESTAMP, "edited_timestamp": None, "tts": False,
        "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [],
        "embeds": [], "pinned": False, "type": 0,
    }  # fmt: skip
    await fake.message_create(f"{MENTION} is that right?", mentions=[fake.bot], reference=other)
    await bot.answered(3)
    assert bot.generator.calls[1][-1].content == "and a reply"
    assert bot.generator.calls[2][-1].content == ("> bob wrote: the sky is green\nis that right?")


async def test_a_reply_chain_is_quoted_oldest_first_fetching_what_discord_leaves_out(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    carol = fk.user(333, "carol")
    # Both were written while the bot was away: it has neither in its cache.
    first = await fake.message_create("the meeting moved to 5pm", author=carol, dispatch=False)
    second = await fake.message_create(
        "no, it is at 6pm", author=BOB, reference=fake.received[first], dispatch=False
    )
    await fake.message_create(
        f"{MENTION} who is right?", mentions=[fake.bot], reference=fake.received[second]
    )
    await bot.answered(1)
    assert bot.generator.calls[0][-1].content == (
        "> carol wrote: the meeting moved to 5pm\n> bob wrote: no, it is at 6pm\nwho is right?"
    )
    # Discord sent only the nearest message; the one before it was read through REST.
    fetched = [r.path for r in fake.requests if r.method == "GET" and "/messages/" in r.path]
    assert fetched == [f"/channels/{fk.CHANNEL_ID}/messages/{first}"]


async def test_a_reply_chain_stops_at_a_deleted_message_and_at_its_depth(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    ids = [await fake.message_create("zero", author=BOB)]
    for word in ["one", "two", "three", "four"]:
        ids.append(await fake.message_create(word, author=BOB, reference=fake.received[ids[-1]]))
    await fake.message_create(
        f"{MENTION} sum up", mentions=[fake.bot], reference=fake.received[ids[-1]]
    )
    await bot.answered(1)
    quoted = bot.generator.calls[0][-1].content
    assert quoted == "> bob wrote: two\n> bob wrote: three\n> bob wrote: four\nsum up"
    await fake.message_delete(ids[1])  # "one" deleted: the chain above it cannot be read
    await fake.message_create(
        f"{MENTION} and now?", mentions=[fake.bot], reference=fake.received[ids[2]]
    )
    await bot.answered(2)
    assert bot.generator.calls[1][-1].content == "> bob wrote: two\nand now?"


async def test_commands_work_as_messages_and_are_synced_as_slash_commands(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    [put] = [r for r in fake.requests if r.method == "PUT"]
    assert put.path == f"/applications/{fk.APP_ID}/commands"
    assert {"help", "reset", "summary"} <= {c["name"] for c in put.body}
    await fake.message_create("!help")
    [text] = await bot.answered(1)
    assert text.startswith("Commands:")
    assert bot.generator.calls == []


async def test_a_slash_command_is_answered_through_the_interaction(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    interaction = await fake.slash("help")
    await fake.wait_for(lambda: bool(fake.contents()))
    await bot.idle()
    [callback] = [r for r in fake.requests if r.path.startswith("/interactions/")]
    assert callback.path.startswith(f"/interactions/{interaction}/")
    assert callback.body["type"] == 5  # deferred: "Beseda is thinking…"
    [followup] = [r for r in fake.requests if r.path.startswith("/webhooks/")]
    assert followup.body["content"].startswith("Commands:")
    stored = await bot.core._history.conversation(f"discord:{fk.CHANNEL_ID}")
    assert [(m.role, m.text[:9]) for m in stored] == [("command", "!help"), ("notice", "Commands:")]
    assert bot.generator.calls == []


async def test_a_fast_user_gets_one_polite_notice(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot(rate_limit_messages=2, rate_limit_seconds=60)
    for i in range(5):
        await fake.message_create(f"{MENTION} m{i}", mentions=[fake.bot])
    await bot.answered(3)
    await fake.message_create(f"{MENTION} other", mentions=[fake.bot], author=BOB)
    contents = await bot.answered(4)
    assert contents.count(RATE_NOTICE) == 1
    assert sorted(c for c in contents if c != RATE_NOTICE) == [
        "echo: bob: other", "echo: m0", "echo: m1"
    ]  # fmt: skip


async def test_the_bot_resumes_after_the_gateway_drops(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    await fake.message_create(f"{MENTION} before", mentions=[fake.bot])
    await bot.answered(1)
    await fake.drop(4000)
    await fake.wait_ready()
    assert (fake.identifies, fake.resumes) == (1, 1)
    await fake.message_create(f"{MENTION} after", mentions=[fake.bot])
    assert await bot.answered(2) == ["echo: before", "echo: after"]


async def test_forbidden_is_logged_and_skipped(
    start_bot: StartBot, fake: fk.DiscordFake, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await start_bot()
    forbidden = {"message": "Missing Permissions", "code": 50013}
    fake.fail_next("POST", rf"/channels/{fk.CHANNEL_ID}/(messages|typing)", 403, forbidden, 100)
    await fake.message_create(f"{MENTION} can you?", mentions=[fake.bot])
    await fake.wait_for(lambda: len(fake.posted()) >= 1)
    await bot.idle()
    assert f"discord:{fk.CHANNEL_ID} (403)" in caplog.text
    fake.failures.clear()
    await fake.message_create(f"{MENTION} and now?", mentions=[fake.bot])
    assert await bot.answered(1) == ["echo: and now?"]


async def test_a_429_on_an_edit_is_waited_out_and_retried(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    limited = {"message": "You are being rate limited.", "retry_after": 0.05, "global": False}
    fake.fail_next("PATCH", rf"/channels/{fk.CHANNEL_ID}/messages/\d+", 429, limited)
    await fake.message_create(f"{MENTION} quick", mentions=[fake.bot])
    assert await bot.answered(1) == ["echo: quick"]
    assert len(fake.edits()) == 2  # the 429 and its retry


async def test_a_server_error_is_retried(start_bot: StartBot, fake: fk.DiscordFake) -> None:
    bot = await start_bot()
    fake.fail_next("POST", rf"/channels/{fk.CHANNEL_ID}/messages", 502, {"message": "Bad Gateway"})
    await fake.message_create(f"{MENTION} again", mentions=[fake.bot])
    assert await bot.answered(1) == ["echo: again"]
    assert len(fake.posted()) == 2


def test_split_parts_keep_every_character() -> None:
    parts = split_parts("a" * 4500, 2000)
    assert [len(p.piece) for p in parts] == [1996, 1996, 508]


async def test_a_malformed_event_does_not_stop_the_bot(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    await fake.dispatch("MESSAGE_CREATE", {"id": "1", "channel_id": str(fk.CHANNEL_ID)})
    await fake.message_create(f"{MENTION} still there?", mentions=[fake.bot])
    assert await bot.answered(1) == ["echo: still there?"]


async def test_the_token_is_never_logged(
    start_bot: StartBot, fake: fk.DiscordFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bot = await start_bot()
    await fake.message_create(f"{MENTION} secret?", mentions=[fake.bot])
    await bot.answered(1)
    assert caplog.records  # discord.py did log at debug level
    assert fk.TOKEN not in caplog.text
    assert fk.TOKEN not in repr(bot.adapter.config)


def test_the_factory_needs_a_token_and_reads_the_discord_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    path = write_config(tmp_path / "config.toml", discord={"dms": False, "answer_bots": True})
    with path.open("a", encoding="utf-8") as toml:
        toml.write("channels = [1, 2]\n")  # [discord] is the last table written
    config = load_config(path, environ={})
    assert discord_adapter(config) is None
    monkeypatch.setenv("DISCORD_TOKEN", "from-env")
    adapter = discord_adapter(config)
    assert isinstance(adapter, DiscordAdapter)
    assert adapter.config.channels == (1, 2)
    assert (adapter.config.dms, adapter.config.answer_bots) == (False, True)
    [only] = configured_adapters(config, lambda: pytest.fail("no console expected"))
    assert isinstance(only, DiscordAdapter)
    assert "from-env" not in repr(config)


def test_the_token_can_come_from_a_dotenv_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    (tmp_path / ".env").write_text("DISCORD_TOKEN=from-dotenv\nOTHER=1\n", encoding="utf-8")
    config = load_config(write_config(tmp_path / "config.toml"), environ={})
    assert discord_token(config) == "from-dotenv"
    assert "OTHER" not in os.environ
    # doctor makes the same decision as `run`.
    assert check_platforms(config).detail == "credentials found for discord"
    (tmp_path / ".env").unlink()
    assert "no Discord or Matrix credentials" in check_platforms(config).detail


async def test_attachments_are_indexed_into_the_channel_scope(
    start_bot: StartBot, fake: fk.DiscordFake, tmp_path: Path
) -> None:
    store = ChromaStore(open_client(tmp_path / "chroma"), "documents", WordHashEmbedder())
    index = DocumentIndex(store, chunk_tokens=30, overlap_tokens=8)
    bot = await start_bot(attachments=True)
    bot.adapter.use_documents(channel_documents(index, tmp_path / "attachments"))
    files = {"notes.md": b"Otters hold hands while sleeping.\n", "tool.exe": b"MZ"}
    await fake.message_create(MENTION, mentions=[fake.bot], files=files)
    [notice] = await bot.answered(1)
    assert notice.startswith("Indexed notes.md for this channel")
    scope = f"discord:{fk.CHANNEL_ID}"
    assert [Path(source).name for source in await index.indexed(scope)] == ["notes.md"]
    assert await index.indexed() == {}  # not global
    assert bot.generator.calls == []  # nothing else to answer


async def test_a_question_after_a_document_waits_for_its_indexing(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    """Discord delivers the question while the document is still being indexed: the question
    is answered after it, with it; another channel is answered meanwhile."""
    bot = await start_bot(attachments=True, all_messages_channels=[fk.OTHER_CHANNEL_ID])
    release = asyncio.Event()
    bot.adapter.use_documents(held_documents(release))
    await fake.message_create(MENTION, mentions=[fake.bot], files={"отчёт.pdf": b"%PDF"})
    await fake.message_create(f"{MENTION} what does it say?", mentions=[fake.bot])
    await fake.message_create("hello", channel_id=fk.OTHER_CHANNEL_ID)
    assert await bot.answered(1, fk.OTHER_CHANNEL_ID) == ["echo: hello"]
    assert fake.contents(fk.CHANNEL_ID) == []
    release.set()
    assert await bot.answered(2) == ["indexed отчёт.pdf (ru)", "echo: what does it say?"]


async def test_attachments_are_not_fetched_when_disabled(
    start_bot: StartBot, fake: fk.DiscordFake, tmp_path: Path
) -> None:
    bot = await start_bot()
    added: list[str] = []

    async def hook(scope: str, name: str, data: bytes, lang: str) -> str:
        added.append(name)
        return "indexed"

    bot.adapter.use_documents(hook)
    await fake.message_create(MENTION, mentions=[fake.bot], files={"a.txt": b"x"})
    # The message with nothing but a file (not indexed here) has nothing to answer.
    assert await bot.answered(1) == [NOTHING_NOTICE]
    await fake.message_create(f"{MENTION} see file", mentions=[fake.bot], files={"a.txt": b"x"})
    assert await bot.answered(2) == [NOTHING_NOTICE, "echo: see file"]
    assert added == []
    assert len(bot.generator.calls) == 1


async def test_a_failed_generation_is_told_in_a_reply(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    bot.generator.fail_with = RuntimeError("model exploded")
    await fake.message_create(f"{MENTION} hello?", mentions=[fake.bot])
    [notice] = await bot.answered(1)
    assert "model exploded" in notice
    [post] = fake.posted()
    assert "message_reference" in post.body


async def test_a_thread_created_later_is_answered_under_its_own_key(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot(channels=[fk.CHANNEL_ID])  # the thread passes through its parent
    new_thread = fake.next_id()
    await fake.dispatch(
        "THREAD_CREATE",
        {
            "id": str(new_thread),
            "type": 11,
            "name": "new thread",
            "guild_id": str(fk.GUILD_ID),
            "parent_id": str(fk.CHANNEL_ID),
            "owner_id": "111",
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "newly_created": True,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": fk.TIMESTAMP,
                "locked": False,
            },
        },
    )
    await fake.message_create(f"{MENTION} new here", mentions=[fake.bot], channel_id=new_thread)
    assert await bot.answered(1, new_thread) == ["echo: new here"]
    stored = await bot.core._history.conversation(f"discord:{new_thread}")
    assert [m.text for m in stored] == ["new here", "echo: new here"]


async def test_run_starts_discord_through_the_registry_and_the_app(
    fake: fk.DiscordFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", fk.TOKEN)
    path = write_config(
        tmp_path / "config.toml", retrieval={"enabled": False}, context={"date": "off"}
    )
    async with App.open(load_config(path, environ={}), generator=FakeGenerator()) as app:
        [adapter] = configured_adapters(app.config, lambda: pytest.fail("console"))
        assert isinstance(adapter, DiscordAdapter)
        serving = asyncio.create_task(app.serve([adapter]))
        try:
            await fake.wait_ready()
            await fake.message_create(f"{MENTION} through the app", mentions=[fake.bot])
            await fake.wait_for(lambda: fake.contents() == ["echo: through the app"])
        finally:
            await adapter.stop()  # the adapter's run ends, and with it serve
            await asyncio.wait_for(serving, 20)


async def test_a_slash_command_with_text_becomes_the_same_bang_command(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    [put] = [r for r in fake.requests if r.method == "PUT"]
    synced = {c["name"]: c for c in put.body}
    assert [(o["name"], o["type"]) for o in synced["remember"]["options"]] == [("text", 3)]
    assert synced["help"].get("options", []) == []
    await fake.slash("remember", {"text": "otters hold hands"})
    await fake.wait_for(lambda: bool(fake.contents()))
    await bot.idle()
    stored = await bot.core._history.conversation(f"discord:{fk.CHANNEL_ID}")
    assert (stored[0].role, stored[0].text) == ("command", "!remember otters hold hands")


async def test_a_mention_of_the_bots_managed_role_counts_as_a_mention(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    await fake.message_create(f"<@&{fk.ROLE_ID}> not for the bot", mention_roles=[fk.ROLE_ID])
    await fake.message_create(f"<@&{fk.BOT_ROLE_ID}> hi role", mention_roles=[fk.BOT_ROLE_ID])
    assert await bot.answered(1) == ["echo: hi role"]
    assert len(bot.generator.calls) == 1


async def test_a_503_on_the_final_text_is_retried_by_the_adapter(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    unavailable = {"message": "Service Unavailable"}
    # discord.py itself retries 500/502/504 but raises on 503: the draft and the first
    # attempt at the final text fail, the adapter's retry delivers it.
    fake.fail_next("POST", rf"/channels/{fk.CHANNEL_ID}/messages", 503, unavailable, 2)
    await fake.message_create(f"{MENTION} persist", mentions=[fake.bot])
    assert await bot.answered(1) == ["echo: persist"]
    assert len(fake.posted()) == 3
    assert bot.sleeps.delays == [1.0]


@pytest.mark.parametrize(
    ("token", "content_allowed", "said"),
    [("wrong-token", True, "rejected the bot token"), (fk.TOKEN, False, "Message Content")],
)
async def test_a_bad_token_or_missing_intent_stops_discord_with_a_clear_error(
    fake: fk.DiscordFake,
    caplog: pytest.LogCaptureFixture,
    token: str,
    content_allowed: bool,
    said: str,
) -> None:
    fake.message_content_allowed = content_allowed
    adapter = DiscordAdapter(DiscordConfig(), token, client_options={"guild_ready_timeout": 0.05})
    submitted: list[Inbound] = []

    async def submit(inbound: Inbound, target: object) -> None:
        submitted.append(inbound)

    await asyncio.wait_for(adapter.run(submit), 20)  # returns instead of raising
    assert said in caplog.text
    assert adapter.failure is not None
    assert said in adapter.failure
    assert platform_failures([adapter]) == [adapter.failure]  # `run` exits 1 on these
    assert token not in caplog.text
    assert submitted == []


async def test_connected_follows_the_gateway_connection(start_bot: StartBot) -> None:
    """What /healthz reports for Discord."""
    assert not DiscordAdapter(DiscordConfig(), fk.TOKEN).connected  # not started
    bot = await start_bot()
    assert bot.adapter.connected
    await bot.adapter.stop()
    assert not bot.adapter.connected


async def test_a_context_channel_submits_unaddressed_messages_as_ambient(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot(context_channels=[fk.CHANNEL_ID])
    submitted = record_submissions(bot.adapter)
    other = {
        "id": "124", "channel_id": str(fk.CHANNEL_ID), "author": BOB, "content": "it is green",
        "timestamp": fk.TIMESTAMP, "edited_timestamp": None, "tts": False,
        "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [],
        "embeds": [], "pinned": False, "type": 0,
    }  # fmt: skip
    await fake.message_create("my favourite colour is green", author=ALICE)
    await fake.message_create("chatting elsewhere", channel_id=fk.OTHER_CHANNEL_ID)
    await fake.message_create("a reply to bob", author=ALICE, reference=other)
    await fake.message_create(f"{MENTION} what is it?", mentions=[fake.bot], author=BOB)
    assert await bot.answered(1) == ["echo: what is it?"]
    assert [(i.ambient, i.author_name, i.text) for i in submitted] == [
        (True, "alice", "my favourite colour is green"),
        (True, "alice", "a reply to bob"),
        (False, "bob", "what is it?"),
    ]
    assert {i.channel_key for i in submitted} == {f"discord:{fk.CHANNEL_ID}"}
    assert len(bot.generator.calls) == 1


async def test_all_channels_can_be_context_channels(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot(context_channels="all", users=[111])
    submitted = record_submissions(bot.adapter)
    await fake.message_create("from a listed user", channel_id=fk.OTHER_CHANNEL_ID)
    await fake.message_create("from someone else", author=BOB)  # the allow-list still holds
    await fake.message_create(f"{MENTION} hi", mentions=[fake.bot])
    await bot.answered(1)
    assert [(i.ambient, i.text) for i in submitted] == [
        (True, "from a listed user"),
        (False, "hi"),
    ]
