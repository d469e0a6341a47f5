"""Hostile or odd input has bounded behaviour, and never stops a worker or the process."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

from adapters.attachments import channel_documents
from agent.cli.personas import run_persona
from agent.config import load_config
from agent.runtime import chat_commands
from agent.runtime.core import CUT_NOTICE, Core
from memory.documents import DocumentIndex
from memory.history import SqlHistoryStore
from memory.records import Status
from memory.text import loads_valid, valid_text
from memory.vectors import ChromaStore, open_client
from personas.card import load_card
from tests.conftest import write_config
from tests.support import discord_fake as fk
from tests.support.core import make_core
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound
from tests.support.retrieval import WordHashEmbedder
from tests.test_discord import MENTION, StartBot, fake, start_bot  # noqa: F401 (fixtures)


async def still_answers(core: Core, adapter: RecordingAdapter) -> None:
    reply = await (await core.submit(inbound("still there?", author="someone else"), adapter))
    assert reply.status is Status.DONE
    assert adapter.replies[-1].inbound.text == "still there?"


async def test_a_100k_character_message_is_cut_and_the_person_is_told(
    history: SqlHistoryStore,
) -> None:
    generator = FakeGenerator(lambda _m: "ok")
    core = make_core(history, generator, summaries=False)
    adapter = RecordingAdapter()
    reply = await (await core.submit(inbound("y " * 50_000), adapter))
    assert reply.status is Status.DONE
    notice, answer = adapter.replies
    assert notice.final == CUT_NOTICE.format(limit=20_000)  # told first, then answered
    assert answer.final == "ok"
    [user] = [m for m in await history.conversation("test:1") if m.role == "user"]
    assert len(user.text) < 20_100
    assert user.text.endswith("[… cut: longer than 20000 characters]")
    # The prompt the model saw is bounded, too.
    assert sum(len(m.content) for m in generator.calls[0]) < 21_000
    await still_answers(core, adapter)


async def test_nul_bytes_are_removed_from_text_and_names(history: SqlHistoryStore) -> None:
    core = make_core(history, FakeGenerator(), summaries=False)
    adapter = RecordingAdapter()
    reply = await (await core.submit(inbound("nul\x00here", author="ev\x00il"), adapter))
    assert reply.text == "echo: nulhere"
    [user, _] = await history.conversation("test:1")
    assert (user.text, user.author_name) == ("nulhere", "evil")
    await still_answers(core, adapter)


async def test_lone_surrogates_become_u_fffd_in_text_names_and_ids(
    history: SqlHistoryStore,
) -> None:
    """Python's json turns "\\ud800" into a lone surrogate, a command line turns undecodable
    bytes into them; no database driver, tokenizer or terminal takes one."""
    generator = FakeGenerator()
    core = make_core(history, generator, summaries=False)
    adapter = RecordingAdapter()
    hostile = replace(inbound("abc\ud800def \U0001f600", author="ev\udcffil"), message_id="m\udfff")
    reply = await (await core.submit(hostile, adapter))
    assert reply.status is Status.DONE
    assert reply.text == "echo: abc\ufffddef \U0001f600"  # what the model saw was valid too
    [user, _] = await history.conversation("test:1")
    assert (user.text, user.author_name, user.author_id) == (
        "abc\ufffddef \U0001f600",
        "ev\ufffdil",
        "ev\ufffdil",
    )
    assert user.platform_message_id == "m\ufffd"
    # A surrogate pair written as two code points is the character it spells.
    assert valid_text("\ud83d\ude00") == "\U0001f600"
    # Platform JSON read with loads_valid (Telegram's answers) never holds a lone one.
    escaped = '{"t\\ud800": ["a\\udfffb", "\\ud83d\\ude00", "\\u00e9"]}'
    for raw in (escaped, escaped.encode()):
        assert loads_valid(raw) == {"t\ufffd": ["a\ufffdb", "\U0001f600", "\u00e9"]}
    # Whatever writes to the store directly (a summary, the model's text) is made valid too.
    await history.update(user.id, text="x\ud800")
    assert (await history.get(user.id)).text == "x\ufffd"  # type: ignore[union-attr]
    await still_answers(core, adapter)


async def test_a_document_with_an_undecodable_file_name_is_indexed(tmp_path: Path) -> None:
    store = ChromaStore(open_client(tmp_path / "chroma"), "documents", WordHashEmbedder())
    index = DocumentIndex(store, chunk_tokens=30, overlap_tokens=8)
    folder = tmp_path / "docs"
    folder.mkdir()
    # Not UTF-8: Python names it with a surrogate (surrogateescape), which Chroma refuses.
    (folder / os.fsdecode(b"notes-\xff.txt")).write_text("Otters hold hands.\n", "utf-8")
    report = await index.ingest(folder)
    assert report.failed == []
    assert list(await index.indexed()) == ["notes-\ufffd.txt"]


def test_a_persona_card_with_a_lone_surrogate_is_imported_as_valid_text(tmp_path: Path) -> None:
    card = tmp_path / "card.json"
    card.write_text(
        '{"name": "Evil\\ud800", "description": "bad \\udfff text", "character_book": '
        '{"entries": [{"keys": ["k"], "content": "lore \\ud800"}]}}',
        encoding="utf-8",
    )
    config = load_config(write_config(tmp_path / "c.toml"), environ={})
    out = io.StringIO()
    assert run_persona(config, "import", out, file=str(card)) == 0
    [written] = (tmp_path / "personas").glob("*.toml")
    imported = load_card(written)
    assert imported.name == "Evil\ufffd"
    assert imported.description == "bad \ufffd text"
    assert imported.lorebook is not None
    assert imported.lorebook.entries[0].content == "lore \ufffd"
    assert "(Evil\ufffd)" in out.getvalue()


async def test_a_binary_attachment_is_rejected_with_a_notice(tmp_path: Path) -> None:
    store = ChromaStore(open_client(tmp_path / "chroma"), "documents", WordHashEmbedder())
    index = DocumentIndex(store, chunk_tokens=30, overlap_tokens=8)
    add = channel_documents(index, tmp_path / "attachments")
    notice = await add("test:1", "broken.txt", b"caf\xe9 \xff\xfe not utf-8 \x00", "en")
    assert notice == "I could not read broken.txt: it is not text."
    assert not list((tmp_path / "attachments").rglob("broken.txt"))  # not kept to fail again
    # The channel's documents still work, a Windows-1251 file too.
    notice = await add("test:1", "fine.txt", b"Otters hold hands.\n", "en")
    assert notice.startswith("Indexed fine.txt")
    notice = await add(
        "test:1", "выдры.txt", "Выдры держатся за лапы во сне.".encode("cp1251"), "en"
    )
    assert notice.startswith("Indexed выдры.txt")
    assert sorted(Path(s).name for s in await index.indexed("test:1")) == ["fine.txt", "выдры.txt"]
    texts = [item.text for item in await index.store.get()]
    assert "Выдры держатся за лапы во сне." in texts


async def test_zero_width_and_direction_marks_do_not_hide_commands(
    history: SqlHistoryStore,
) -> None:
    generator = FakeGenerator()
    core = make_core(history, generator, summaries=False)
    adapter = RecordingAdapter()
    for text in ("\u200b!help", "!\u200dhelp", "\u202e!help", "\ufeff!HELP"):
        reply = await (await core.submit(inbound(text), adapter))
        assert reply.text.startswith("Commands:"), text
    assert generator.calls == []  # none of them reached the model
    # Ordinary text keeps its invisible and right-to-left characters, as written.
    rtl = "\u202eolleh \u200bשלום"
    assert (await (await core.submit(inbound(rtl), adapter))).text == f"echo: {rtl}"
    assert chat_commands.parse("hello\u200b!help") is None


async def test_the_command_prefix_alone_shows_the_help(history: SqlHistoryStore) -> None:
    generator = FakeGenerator()
    core = make_core(history, generator, summaries=False)
    adapter = RecordingAdapter()
    for text in ("!", "  !  ", "\u200b!"):
        reply = await (await core.submit(inbound(text), adapter))
        assert reply.text.startswith("Commands:")
    assert generator.calls == []
    # An unknown command is an ordinary message.
    assert (await (await core.submit(inbound("!nonsense"), adapter))).text == "echo: !nonsense"


async def test_a_flood_of_mentions_pings_nobody(
    start_bot: StartBot,  # noqa: F811 (the fixture imported above)
    fake: fk.DiscordFake,  # noqa: F811
) -> None:
    bot = await start_bot()  # the fake generator echoes the message back, mentions and all
    flood = " ".join(f"<@{700 + i}>" for i in range(150)) + " @everyone @here <@&555>"
    await fake.message_create(f"{MENTION} {flood}", mentions=[fake.bot])
    answered = await bot.answered(1)
    assert "@everyone" in "".join(answered)  # echoed as text...
    sent = [r for r in fake.requests if r.method in {"POST", "PATCH"} and "/messages" in r.path]
    assert sent
    for request in sent:  # ...but every send and edit forbids pinging anyone
        assert request.body["allowed_mentions"]["parse"] == [], request.body
        assert not request.body["allowed_mentions"].get("users")
        assert not request.body["allowed_mentions"].get("roles")
    # The bot keeps working.
    await fake.message_create(f"{MENTION} and now", mentions=[fake.bot])
    assert (await bot.answered(len(answered) + 1))[-1] == "echo: and now"
