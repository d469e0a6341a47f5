"""The real Telegram adapter (aiogram) and the real core, driven through the loopback Bot API."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.attachments import channel_documents
from adapters.registry import configured_adapters
from adapters.telegram import telegram_adapter, telegram_token
from adapters.telegram.adapter import TelegramAdapter
from agent.app import App, build_core
from agent.cli.doctor import check_platforms, run_doctor
from agent.config import (
    ChatConfig,
    Config,
    ContextConfig,
    ModelConfig,
    PersonaConfig,
    PersonasConfig,
    TelegramConfig,
    load_config,
)
from agent.events import Inbound
from agent.generators.base import ChatMessage
from agent.i18n import Lang
from agent.i18n import catalog as texts
from agent.ports import platform_failures
from agent.runtime.core import NOTHING_NOTICE, Core
from agent.runtime.recovery import find_pending, resume
from memory.db import Database
from memory.documents import DocumentIndex
from memory.history import SqlHistoryStore
from memory.records import Status
from memory.vectors import ChromaStore, open_client
from tests.conftest import write_config
from tests.support import telegram_fake as tf
from tests.support.fakes import (
    FakeGenerator,
    RecordedSleeps,
    SteppingClock,
    held_documents,
    record_submissions,
)
from tests.support.retrieval import WordHashEmbedder
from tests.test_i18n import expected_help

ALICE_KEY = f"telegram:{tf.ALICE['id']}"
GROUP_KEY = f"telegram:{tf.GROUP_ID}"
MENTION = f"@{tf.BOT_USERNAME}"
FACT: dict[Lang, str] = {"en": "my cat is called Tom", "ru": "мою кошку зовут Мурка"}


class Bot:
    def __init__(
        self,
        fake: tf.TelegramFake,
        adapter: TelegramAdapter,
        core: Core,
        generator: FakeGenerator,
        sleeps: RecordedSleeps,
    ) -> None:
        self.fake = fake
        self.adapter = adapter
        self.core = core
        self.generator = generator
        self.sleeps = sleeps

    async def answered(self, count: int, chat_id: int = tf.ALICE["id"]) -> list[str]:
        """Wait until the bot shows ``count`` messages in the chat and the core is idle."""
        await self.fake.wait_for(lambda: len(self.fake.texts(chat_id)) >= count)
        await self.idle()
        return self.fake.texts(chat_id)

    async def idle(self) -> None:
        for _ in range(300):
            if not self.core._workers:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the core is still busy")


StartBot = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def fake() -> AsyncIterator[tf.TelegramFake]:
    server = tf.TelegramFake()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'history.db'}")
    await database.migrate()
    yield database
    await database.close()


@pytest.fixture
async def start_bot(fake: tf.TelegramFake, db: Database) -> AsyncIterator[StartBot]:
    running: list[tuple[TelegramAdapter, asyncio.Task[None], Core]] = []

    async def start(
        answer: Callable[[Sequence[ChatMessage]], str] | None = None,
        clock: Callable[[], float] | None = None,
        max_age: timedelta = timedelta(minutes=30),
        personas: PersonasConfig | None = None,
        **options: Any,
    ) -> Bot:
        generator = FakeGenerator(answer)
        config = Config(
            model=ModelConfig(max_tokens=64, temperature=0),
            persona=PersonaConfig(system_prompt="You are a test."),
            personas=personas or PersonasConfig(),
            chat=ChatConfig(safety_margin_tokens=8),
            context=ContextConfig(date="off"),
        )
        core = build_core(config, SqlHistoryStore(db), generator)
        sleeps = RecordedSleeps()
        adapter = TelegramAdapter(
            TelegramConfig(api_url=fake.url, **options),
            fake.token,
            max_age=max_age,
            clock=clock or SteppingClock(0.0),
            sleep=sleeps.sleep,
        )
        task = asyncio.create_task(adapter.run(core.submit))
        running.append((adapter, task, core))
        await asyncio.wait_for(adapter._ready.wait(), 10)
        return Bot(fake, adapter, core, generator, sleeps)

    yield start
    for adapter, task, core in running:
        await adapter.stop()
        await asyncio.wait_for(task, 10)
        await core.close(1)


async def test_a_private_message_is_answered_with_drafts_then_one_message(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    words = " ".join(f"word{i}" for i in range(12))
    bot = await start_bot(answer=lambda _m: words, clock=SteppingClock(0.4))
    asked = await fake.send("tell me")
    assert await bot.answered(1) == [words]
    [sent] = fake.shown(tf.ALICE["id"])
    assert sent.reply_to == asked
    drafts = fake.calls_of("sendMessageDraft")
    # Throttled previews, each a longer prefix, before the one message with the whole text.
    assert 1 <= len(drafts) < 12
    assert all(words.startswith(d["text"]) for d in drafts)
    assert len({d["draft_id"] for d in drafts}) == 1
    assert fake.calls_of("editMessageText") == []
    methods = [c.method for c in fake.calls]
    assert methods.index("sendChatAction") < methods.index("sendMessage")
    assert fake.calls_of("sendChatAction")[0]["action"] == "typing"
    stored = await bot.core._history.conversation(ALICE_KEY)
    assert [(m.author_name, m.text) for m in stored] == [
        ("Alice Smith", "tell me"),
        (None, words),
    ]


async def test_without_drafts_the_reply_is_sent_once_then_edited(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    words = " ".join(f"word{i}" for i in range(12))
    bot = await start_bot(answer=lambda _m: words, clock=SteppingClock(0.4), drafts=False)
    await fake.send("tell me")
    assert await bot.answered(1) == [words]
    assert len(fake.calls_of("sendMessage")) == 1
    edits = fake.calls_of("editMessageText")
    assert 1 <= len(edits) < 12
    assert edits[-1]["text"] == words
    assert fake.calls_of("sendMessageDraft") == []


async def test_a_refused_draft_switches_to_edits(
    start_bot: StartBot, fake: tf.TelegramFake, caplog: pytest.LogCaptureFixture
) -> None:
    words = " ".join(f"word{i}" for i in range(12))
    bot = await start_bot(answer=lambda _m: words, clock=SteppingClock(0.4))
    fake.fail_next("sendMessageDraft", 400, "Bad Request: method is not available")
    await fake.send("tell me")
    assert await bot.answered(1) == [words]
    assert len(fake.calls_of("sendMessageDraft")) == 1
    assert fake.calls_of("editMessageText")
    assert "editing instead" in caplog.text
    await fake.send("again")
    await bot.answered(2)
    assert len(fake.calls_of("sendMessageDraft")) == 1  # not tried again


async def test_in_groups_it_answers_mentions_replies_and_commands_only(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot()
    await fake.send("just chatting", chat=tf.GROUP)
    await fake.send(f"{MENTION} what is two plus two?", chat=tf.GROUP)
    [first] = await bot.answered(1, tf.GROUP_ID)
    assert first == "echo: what is two plus two?"
    [mine] = fake.shown(tf.GROUP_ID)
    await fake.send("and a reply", chat=tf.GROUP, author=tf.BOB, reply_to=mine.message_id)
    await bot.answered(2, tf.GROUP_ID)
    await fake.send("/help@other_bot", chat=tf.GROUP)
    await fake.send(f"/help@{tf.BOT_USERNAME}", chat=tf.GROUP)
    texts = await bot.answered(3, tf.GROUP_ID)
    # Bob is the second person here: his turn carries his name (README, "Group chats").
    assert texts[1] == "echo: Bob: and a reply"
    assert texts[2].startswith("Commands:")
    assert [c[-1].content for c in bot.generator.calls] == [
        "what is two plus two?", "Bob: and a reply"
    ]  # fmt: skip
    stored = await bot.core._history.conversation(GROUP_KEY)
    assert [m.author_name for m in stored if m.role == "user"] == ["Alice Smith", "Bob"]


async def test_start_and_commands_become_chat_commands(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot()
    await fake.send("/start")
    [text] = await bot.answered(1)
    assert text.startswith("Commands:")
    assert bot.generator.calls == []
    stored = await bot.core._history.conversation(ALICE_KEY)
    assert stored[0].text == "!help"


@pytest.mark.parametrize(("code", "lang"), [("ru", "ru"), ("en", "en"), (None, "en")])
async def test_start_greets_with_help_in_the_persons_language(
    start_bot: StartBot, fake: tf.TelegramFake, code: str | None, lang: Lang
) -> None:
    """/start is someone's first message: no words, no history; their Telegram language
    (language_code) decides."""
    bot = await start_bot()
    extra = {"language_code": code} if code else {}
    await fake.send("/start", author=tf.user(tf.ALICE["id"], "Alice", **extra))
    [text] = await bot.answered(1)
    assert text == expected_help(lang)
    # Words still win over the interface language.
    other: Lang = "en" if lang == "ru" else "ru"
    await fake.send(f"/forget {FACT[other]}", author=tf.user(tf.ALICE["id"], "Alice", **extra))
    assert (await bot.answered(2))[1] == texts.NO_MEMORY(other)


async def test_commands_are_registered_in_english_and_russian(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    await start_bot()
    await fake.wait_for(lambda: "ru" in fake.commands)
    english = {c["command"]: c["description"] for c in fake.commands[""]}
    russian = {c["command"]: c["description"] for c in fake.commands["ru"]}
    assert {"help", "reset", "summary", "stop"} <= english.keys()
    assert english.keys() == russian.keys()
    assert english["help"] == "list the commands"
    assert russian["help"] == "список команд"


async def test_commands_are_not_registered_when_off(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot(commands=False)
    await fake.send("hi")
    await bot.answered(1)
    assert fake.calls_of("setMyCommands") == []


async def test_an_all_messages_chat_answers_everything(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot(all_messages_chats=[tf.OTHER_GROUP_ID])
    await fake.send("anyone?", chat=tf.OTHER_GROUP)
    await fake.send("nobody asked", chat=tf.GROUP)
    assert await bot.answered(1, tf.OTHER_GROUP_ID) == ["echo: anyone?"]
    assert fake.texts(tf.GROUP_ID) == []


async def test_private_chats_are_ignored_when_dms_are_off(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot(dms=False)
    await fake.send("hi in private")
    await fake.send(f"{MENTION} and here?", chat=tf.GROUP)
    assert await bot.answered(1, tf.GROUP_ID) == ["echo: and here?"]
    assert fake.texts(tf.ALICE["id"]) == []


async def test_allow_lists_and_admins_mirror_discord(
    start_bot: StartBot, fake: tf.TelegramFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="adapters.telegram")
    carol = tf.user(333, "Carol")
    bot = await start_bot(chats=[tf.GROUP_ID], users=[111], admin_users=[333])
    await fake.send(f"{MENTION} from bob", chat=tf.GROUP, author=tf.BOB)
    await fake.send(f"{MENTION} elsewhere", chat=tf.OTHER_GROUP)
    await fake.send(f"{MENTION} from alice", chat=tf.GROUP)
    await fake.send(f"{MENTION} from the admin", chat=tf.OTHER_GROUP, author=carol)
    await fake.send("alice in private")  # the chat list concerns groups
    await bot.answered(1, tf.GROUP_ID)
    await bot.answered(1, tf.OTHER_GROUP_ID)
    await bot.answered(1)
    assert fake.texts(tf.GROUP_ID) == ["echo: from alice"]
    assert fake.texts(tf.OTHER_GROUP_ID) == ["echo: from the admin"]
    assert "ignored user 222" in caplog.text


async def test_a_fast_user_gets_one_polite_notice(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot(rate_limit_messages=2, rate_limit_seconds=60)
    for i in range(5):
        await fake.send(f"m{i}")
    texts = await bot.answered(3)
    notices = [t for t in texts if t.startswith("You're writing faster")]
    assert len(notices) == 1
    assert sorted(t for t in texts if t not in notices) == ["echo: m0", "echo: m1"]


async def test_a_forum_topic_is_its_own_channel(start_bot: StartBot, fake: tf.TelegramFake) -> None:
    bot = await start_bot()
    await fake.send(f"{MENTION} in a topic", chat=tf.FORUM, thread_id=77)
    assert await bot.answered(1, tf.FORUM_ID) == ["echo: in a topic"]
    [sent] = fake.shown(tf.FORUM_ID)
    assert sent.thread_id == 77
    assert fake.calls_of("sendChatAction")[0]["message_thread_id"] == "77"
    history = bot.core._history
    key = f"telegram:{tf.FORUM_ID}/77"
    assert [m.text for m in await history.conversation(key)] == [
        "in a topic",
        "echo: in a topic",
    ]
    assert await history.conversation(f"telegram:{tf.FORUM_ID}") == []
    # The topic's first message is no reply to quote; the topic's parent is the chat.
    assert bot.generator.calls[0][-1].content == "in a topic"
    place = bot.core._deps.personas._places[key]  # type: ignore[union-attr]
    assert place.parent_key == f"telegram:{tf.FORUM_ID}"


async def test_a_reply_to_another_person_quotes_the_chain_with_names(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot()
    first = await fake.send("the meeting moved to 5pm", chat=tf.GROUP, author=tf.BOB)
    second = await fake.send("no, it is at 6pm", chat=tf.GROUP, reply_to=first)
    carol = tf.user(333, "Carol")
    await fake.send(f"{MENTION} who is right?", chat=tf.GROUP, author=carol, reply_to=second)
    await bot.answered(1, tf.GROUP_ID)
    # Telegram nests one level; the one before it was seen by this process.
    assert bot.generator.calls[0][-1].content == (
        "> Bob wrote: the meeting moved to 5pm\n"
        "> Alice Smith wrote: no, it is at 6pm\n"
        "who is right?"
    )
    await fake.send(
        f"{MENTION} this part?", chat=tf.GROUP, author=carol, reply_to=first, quote="5pm"
    )
    await bot.answered(2, tf.GROUP_ID)
    assert bot.generator.calls[1][-1].content == "> Bob wrote: 5pm\nthis part?"


async def test_a_long_answer_is_split_at_4096_with_code_blocks_reopened(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    code = "\n".join(f"    value_{i} = compute({i}) < limit  # step {i}" for i in range(200))
    answer = "Here is **the code**:\n\n```python\n" + code + "\n```\n\n" + "Done. " * 300
    answer = answer.strip()
    assert len(answer) > 9000
    bot = await start_bot(answer=lambda _m: answer)
    await fake.send("code please")
    await bot.answered(3)
    shown = fake.shown(tf.ALICE["id"])
    assert len(shown) >= 3
    # The fake checked every message like Telegram: its tags balanced, at most 4,096.
    assert all(0 < tf.utf16(s.text) <= 4096 for s in shown)
    assert shown[0].html is not None
    assert shown[0].html.startswith("Here is <b>the code</b>:")
    assert '<pre><code class="language-python">' in shown[1].html  # type: ignore[operator]
    assert "&lt; limit" in shown[1].html  # type: ignore[operator]
    visible = "".join("".join(s.text.split()) for s in shown)
    plain = answer.replace("**", "").replace("```python", "").replace("```", "")
    assert visible == "".join(plain.split())


async def test_markdown_is_sent_as_escaped_html(start_bot: StartBot, fake: tf.TelegramFake) -> None:
    answer = "**Bold** & <script> — see [docs](https://example.org/?a=1&b=2)\n\n- one\n- two"
    bot = await start_bot(answer=lambda _m: answer)
    await fake.send("format")
    await bot.answered(1)
    [sent] = fake.shown(tf.ALICE["id"])
    assert sent.html == (
        '<b>Bold</b> &amp; &lt;script&gt; — see <a href="https://example.org/?a=1&amp;b=2">'
        "docs</a>\n\n• one\n• two"
    )
    assert sent.text == "Bold & <script> — see docs\n\n• one\n• two"


async def test_rejected_entities_fall_back_to_plain_text(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot(answer=lambda _m: "**bold** text")
    fake.fail_next("sendMessage", 400, "Bad Request: can't parse entities: whatever")
    await fake.send("format")
    assert await bot.answered(1) == ["**bold** text"]
    [sent] = fake.shown(tf.ALICE["id"])
    assert sent.html is None
    assert [c.get("parse_mode") for c in fake.calls_of("sendMessage")] == ["HTML", None]


async def test_message_is_not_modified_is_no_error(
    start_bot: StartBot, fake: tf.TelegramFake, caplog: pytest.LogCaptureFixture
) -> None:
    words = " ".join(f"word{i}" for i in range(8))
    bot = await start_bot(answer=lambda _m: words, clock=SteppingClock(0.4), drafts=False)
    fake.fail_next(
        "editMessageText",
        400,
        "Bad Request: message is not modified: specified new message content and reply "
        "markup are exactly the same",
        times=100,
    )
    await fake.send("tell me")
    await fake.wait_for(lambda: len(fake.calls_of("editMessageText")) >= 2)
    await bot.idle()
    stored = await bot.core._history.conversation(ALICE_KEY)
    assert stored[-1].status is Status.DONE
    assert "could not" not in caplog.text
    assert bot.sleeps.delays == []  # nothing retried


async def test_a_429_is_honoured_with_its_retry_after(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    words = " ".join(f"word{i}" for i in range(8))
    bot = await start_bot(answer=lambda _m: words, clock=SteppingClock(0.4), drafts=False)
    fake.fail_next(
        "editMessageText", 429, "Too Many Requests: retry after 7", times=2, retry_after=7
    )
    await fake.send("tell me")
    assert await bot.answered(1) == [words]
    # A streamed edit was refused and held back; the final edit waited out retry_after.
    assert bot.sleeps.delays == [7.0]
    assert len(fake.calls_of("editMessageText")) == 3


async def test_forbidden_is_logged_and_skipped(
    start_bot: StartBot, fake: tf.TelegramFake, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await start_bot(drafts=False)
    fake.fail_next("sendMessage", 403, "Forbidden: bot was blocked by the user", times=100)
    await fake.send("are you there?")
    await fake.wait_for(lambda: bool(fake.calls_of("sendMessage")))
    await bot.idle()
    assert f"{ALICE_KEY} (403)" in caplog.text
    fake.failures.clear()
    await fake.send("and now?")
    assert await bot.answered(1) == ["echo: and now?"]


async def test_a_server_error_on_the_final_text_is_retried(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot()
    fake.fail_next("sendMessage", 502, "Bad Gateway")
    await fake.send("persist")
    assert await bot.answered(1) == ["echo: persist"]
    assert bot.sleeps.delays == [1.0]


async def test_a_context_chat_submits_unaddressed_messages_as_ambient(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot(context_chats=[tf.GROUP_ID])
    submitted = record_submissions(bot.adapter)
    await fake.send("my favourite colour is green", chat=tf.GROUP)
    await fake.send("not kept", chat=tf.OTHER_GROUP)
    await fake.send(f"{MENTION} what is it?", chat=tf.GROUP, author=tf.BOB)
    assert await bot.answered(1, tf.GROUP_ID) == ["echo: what is it?"]
    assert [(i.ambient, i.author_name, i.text) for i in submitted] == [
        (True, "Alice Smith", "my favourite colour is green"),
        (False, "Bob", "what is it?"),
    ]
    assert len(bot.generator.calls) == 1


async def test_documents_are_indexed_into_the_chat_scope(
    start_bot: StartBot, fake: tf.TelegramFake, tmp_path: Path
) -> None:
    store = ChromaStore(open_client(tmp_path / "chroma"), "documents", WordHashEmbedder())
    index = DocumentIndex(store, chunk_tokens=30, overlap_tokens=8)
    bot = await start_bot(attachments=True)
    bot.adapter.use_documents(channel_documents(index, tmp_path / "attachments"))
    notes = fake.add_file("notes.md", b"Otters hold hands while sleeping.\n")
    await fake.send(None, document=notes)
    await fake.send(None, document=fake.add_file("tool.exe", b"MZ"))
    [notice] = await bot.answered(1)
    assert notice.startswith("Indexed notes.md for this channel")
    assert [Path(s).name for s in await index.indexed(ALICE_KEY)] == ["notes.md"]
    assert await index.indexed() == {}  # not global
    assert bot.generator.calls == []  # nothing else to answer


async def test_a_document_being_indexed_holds_up_only_its_own_chat(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    """Indexing a long document takes minutes: other chats are answered meanwhile, and the
    sender's next message waits for it (a question about the document is answered with it)."""
    bot = await start_bot(attachments=True)
    release = asyncio.Event()
    bot.adapter.use_documents(held_documents(release))
    ivan = tf.user(333, "Иван", language_code="ru")
    await fake.send(None, author=ivan, document=fake.add_file("manual.pdf", b"%PDF"))
    await fake.send("what does it say?", author=ivan)
    await fake.send("hello", author=tf.BOB)
    assert await bot.answered(1, tf.BOB["id"]) == ["echo: hello"]
    assert fake.texts(333) == []  # still indexing: the question waits behind the document
    release.set()
    assert await bot.answered(2, 333) == ["indexed manual.pdf (ru)", "echo: what does it say?"]


async def test_at_a_stop_the_messages_behind_a_document_are_still_taken_in(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    """Their updates were confirmed to Telegram already: dropped at a stop, they would be
    lost. The stop waits for the indexing (up to a grace) and they reach the core."""
    bot = await start_bot(attachments=True)
    release = asyncio.Event()
    bot.adapter.use_documents(held_documents(release))
    await fake.send(None, document=fake.add_file("manual.pdf", b"%PDF"))
    await fake.send("what does it say?")
    await fake.wait_for(lambda: len(fake.calls_of("getFile")) == 1)
    stopping = asyncio.create_task(bot.adapter.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the document
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert await bot.answered(2) == ["indexed manual.pdf (en)", "echo: what does it say?"]


async def test_documents_are_not_fetched_when_off(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot()
    added: list[str] = []

    async def hook(scope: str, name: str, data: bytes, lang: str) -> str:
        added.append(name)
        return "indexed"

    bot.adapter.use_documents(hook)
    await fake.send("see file", document=fake.add_file("a.txt", b"x"))
    assert await bot.answered(1) == ["echo: see file"]
    assert added == []
    assert fake.calls_of("getFile") == []


async def test_the_token_never_reaches_a_log_line(
    start_bot: StartBot, fake: tf.TelegramFake, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    bot = await start_bot(attachments=True)

    async def hook(scope: str, name: str, data: bytes, lang: str) -> str:
        return "indexed"

    bot.adapter.use_documents(hook)
    await fake.send("secret?")
    await bot.answered(1)
    await fake.send(None, document=fake.add_file("gone.txt", None))  # the download fails: 404
    await bot.answered(2)
    fake.fail_next("sendMessage", 502, "Bad Gateway")
    await fake.send("again")
    await bot.answered(3)
    assert "Make request with method='GetUpdates'" in caplog.text  # aiogram's request log
    secret = fake.token.split(":")[1]
    assert secret not in caplog.text
    assert "could not fetch gone.txt" in caplog.text
    assert secret not in repr(bot.adapter.config)
    assert fake.texts(tf.ALICE["id"])[1] == "I could not index gone.txt."


async def test_a_rejected_token_stops_telegram_with_a_clear_error(
    fake: tf.TelegramFake, caplog: pytest.LogCaptureFixture
) -> None:
    adapter = TelegramAdapter(TelegramConfig(api_url=fake.url), "999:not-the-right-token")

    async def submit(inbound: Inbound, target: object) -> None:
        raise AssertionError("nothing should be submitted")

    await asyncio.wait_for(adapter.run(submit), 10)  # returns instead of retrying forever
    assert adapter.failure == "Telegram rejected the bot token: check TELEGRAM_TOKEN"
    assert platform_failures([adapter]) == [adapter.failure]  # `run` exits 1 on these
    assert "not-the-right-token" not in caplog.text
    assert not adapter.connected
    malformed = TelegramAdapter(TelegramConfig(api_url=fake.url), "no colon here")
    await asyncio.wait_for(malformed.run(submit), 10)
    assert malformed.failure is not None
    assert "malformed" in malformed.failure


async def test_polling_resumes_after_the_bot_api_fails(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot()
    assert bot.adapter.connected
    fake.fail_next("getUpdates", 502, "Bad Gateway", times=2)
    await fake.wait_for(lambda: not fake.failures[0].times)
    await fake.send("still there?")
    assert await bot.answered(1) == ["echo: still there?"]
    assert bot.sleeps.delays[:2] == [0.5, 1.0]  # backed off, then resumed
    assert bot.adapter.connected


async def test_missed_updates_are_answered_once_and_old_ones_skipped(
    start_bot: StartBot, fake: tf.TelegramFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adapters.telegram")
    # Written while Beseda was down: Telegram kept them.
    await fake.send("from two hours ago", date=time.time() - 7200)
    await fake.send("from a minute ago", date=time.time() - 60)
    bot = await start_bot(max_age=timedelta(minutes=30))
    assert await bot.answered(1) == ["echo: from a minute ago"]
    assert "too old" in caplog.text
    # Handled, then confirmed by the next poll: a restart brings neither again (had the
    # confirmation been lost, the history would refuse the copy of the one taken in:
    # tests/test_telegram_failures.py).
    await fake.wait_for(lambda: fake.confirmed > 0)
    await bot.adapter.stop()
    again = await start_bot()
    await fake.send("new")
    assert await again.answered(2) == ["echo: from a minute ago", "echo: new"]
    assert [c[-1].content for c in again.generator.calls] == ["new"]


async def test_recovery_reopens_a_stored_message_and_replies_to_it(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot()
    history = bot.core._history
    stored = await history.append(
        GROUP_KEY, "user", "answer me after the crash", status=Status.RECEIVED,
        author_id="111", author_name="Alice Smith", platform_message_id="4242",
    )  # fmt: skip
    pending = await find_pending(history, timedelta(minutes=30))
    [reply] = await resume(bot.core, pending, [bot.adapter])
    await asyncio.wait_for(reply, 10)
    [sent] = fake.shown(tf.GROUP_ID)
    assert sent.text == "echo: answer me after the crash"
    assert sent.reply_to == 4242
    assert (await history.conversation(GROUP_KEY))[0].id == stored.id
    assert await bot.adapter.reopen("discord:1", "5") is None
    assert await bot.adapter.reopen(GROUP_KEY, "interaction:1") is None
    assert await bot.adapter.reopen(f"telegram:{tf.FORUM_ID}/77", "9") is bot.adapter


async def test_a_persona_can_be_assigned_to_the_platform(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot(personas=PersonasConfig(platforms={"telegram": "beseda-ru"}))
    await fake.send("привет")
    await bot.answered(1)
    assert "по-русски" in bot.generator.calls[0][0].content


async def test_the_factory_reads_the_token_and_doctor_agrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TELEGRAM_TOKEN", raising=False)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    path = write_config(tmp_path / "config.toml", telegram={"dms": False})
    config = load_config(path, environ={})
    assert telegram_adapter(config) is None
    (tmp_path / ".env").write_text("TELEGRAM_TOKEN=1:from-dotenv\n", encoding="utf-8")
    assert telegram_token(config) == "1:from-dotenv"
    assert check_platforms(config).detail == "credentials found for telegram"
    monkeypatch.setenv("TELEGRAM_TOKEN", "1:from-env")
    [only] = configured_adapters(config, lambda: pytest.fail("no console expected"))
    assert isinstance(only, TelegramAdapter)
    assert only.config.dms is False
    assert "from-env" not in repr(config)


@contextlib.asynccontextmanager
async def serving(
    fake: tf.TelegramFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **sections: Any
) -> AsyncIterator[tuple[App, TelegramAdapter]]:
    """`run` as the command line does it: the registry's Telegram adapter, served by App."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_TOKEN", fake.token)
    telegram = {"api_url": fake.url, **sections.pop("telegram", {})}
    path = write_config(
        tmp_path / "config.toml",
        retrieval={"enabled": False},
        context={"date": "off"},
        telegram=telegram,
        **sections,
    )
    async with App.open(load_config(path, environ={}), generator=FakeGenerator()) as app:
        [adapter] = configured_adapters(app.config, lambda: pytest.fail("console"))
        assert isinstance(adapter, TelegramAdapter)
        running = asyncio.create_task(app.serve([adapter]))
        try:
            yield app, adapter
        finally:
            await adapter.stop()  # the adapter's run ends, and with it serve
            await asyncio.wait_for(running, 20)


async def test_run_starts_telegram_through_the_registry_and_the_app(
    fake: tf.TelegramFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(fake, tmp_path, monkeypatch) as (_app, adapter):
        await asyncio.wait_for(adapter._ready.wait(), 10)
        await fake.send("through the app")
        await fake.wait_for(lambda: fake.texts(tf.ALICE["id"]) == ["echo: through the app"])


@pytest.mark.parametrize("metrics", [True, False])
async def test_a_webhook_is_served_by_the_operations_server(
    fake: tf.TelegramFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metrics: bool
) -> None:
    async with serving(
        fake,
        tmp_path,
        monkeypatch,
        metrics={"enabled": metrics, "port": 0},
        telegram={"webhook_url": "https://bot.example.org/tg/hook"},
    ) as (app, _adapter):
        await fake.wait_for(lambda: fake.webhook is not None)
        assert app.ops is not None  # it runs for the webhook even with [metrics] off
        url, secret = fake.webhook  # type: ignore[misc]
        assert url == "https://bot.example.org/tg/hook"
        # The reverse proxy in front of Beseda forwards the public URL to the server.
        fake.webhook = (f"{app.ops.url}/tg/hook", secret)
        await fake.send("through the webhook")
        await fake.wait_for(lambda: fake.texts(tf.ALICE["id"]) == ["echo: through the webhook"])
        assert fake.deliveries == [200]
        assert fake.calls_of("getUpdates") == []
        async with aiohttp.ClientSession() as http:
            forged = {"update_id": 1, "message": fake.received[(111, 1)]}
            async with http.post(f"{app.ops.url}/tg/hook", json=forged) as response:
                assert response.status == 401  # no secret token: refused
            async with http.post(
                f"{app.ops.url}/tg/hook",
                data="not json",
                headers={"X-Telegram-Bot-Api-Secret-Token": secret},
            ) as response:
                assert response.status == 400
            async with http.get(f"{app.ops.url}/metrics") as response:
                assert response.status == (200 if metrics else 404)
                exposition = await response.text()
        assert fake.token.split(":")[1] not in exposition
        if metrics:
            assert 'adapter="telegram"' in exposition


async def test_doctor_checks_the_token_with_telegram(
    fake: tf.TelegramFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_TOKEN", fake.token)
    path = write_config(tmp_path / "config.toml", telegram={"api_url": fake.url})
    config = load_config(path, environ={})
    await fake.send("waiting for the bot")
    out = io.StringIO()
    await run_doctor(config, out)
    [line] = [line for line in out.getvalue().splitlines() if line.startswith("telegram")]
    assert "ok" in line
    assert f"@{tf.BOT_USERNAME} (long polling; privacy mode on" in line
    assert "1 updates waiting" in line
    monkeypatch.setenv("TELEGRAM_TOKEN", "1:wrong-token")
    out = io.StringIO()
    assert await run_doctor(config, out) == 1
    assert "FAIL  Telegram rejected the token" in out.getvalue()
    assert "wrong-token" not in out.getvalue()


def test_the_commented_config_block_is_valid_and_the_readme_names_every_key(
    tmp_path: Path,
) -> None:
    lines = Path("config.toml").read_text(encoding="utf-8").splitlines()
    start = lines.index("# [telegram]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    keys = [line for line in block if " = " in line]
    path = tmp_path / "config.toml"
    path.write_text("[telegram]\n" + "\n".join(keys) + "\n", encoding="utf-8")
    telegram = load_config(path, environ={}).telegram
    assert telegram.poll_timeout == 30
    readme = Path("README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Telegram") :]
    for key in TelegramConfig.model_fields:
        assert f"`{key}`" in section, key


async def test_a_mention_with_nothing_else_gets_a_notice_and_no_generation(
    start_bot: StartBot, fake: tf.TelegramFake
) -> None:
    bot = await start_bot()
    await fake.send(f"{MENTION} \u200b", chat=tf.GROUP)
    assert await bot.answered(1, tf.GROUP_ID) == [NOTHING_NOTICE]
    assert bot.generator.calls == []
