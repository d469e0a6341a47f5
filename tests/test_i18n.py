"""Beseda's own words in the message's language: the catalog, the choice, and every notice and
command answer of the core in Russian for Russian messages and in English for English ones."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Any

import pytest

from agent.config import ChatConfig, Config, ContextConfig, ModelConfig, PersonaConfig
from agent.config import PersonasConfig as PersonasSection
from agent.events import Inbound
from agent.i18n import LANGUAGES, Lang, Plural, Text, choose, detect, placeholders, plural_form
from agent.i18n import catalog as texts
from agent.prompt.citations import sources_line
from agent.runtime import chat_commands
from agent.runtime.core import Core
from agent.wiring import build_core
from memory.db import StorageError
from memory.history import SqlHistoryStore
from memory.records import Status
from tests.support.core import make_core
from tests.support.fakes import FakeGenerator, RecordingAdapter

# Real questions, as people write them.
ASKED: dict[Lang, list[str]] = {
    "en": ["What is two plus two?", "Recommend a book for a train journey."],
    "ru": ["Сколько будет два плюс два?", "Посоветуй книгу для поездки на поезде."],
}
# Words in Latin letters a Russian text may hold: command names, config keys, ids.
LATIN_ALLOWED = {
    *chat_commands.COMMANDS,
    "config",
    "toml",
    "pdf",  # a file format, written so in Russian too
    "personas",
    "channels",
    "discord",
    "beseda",
    "test",
    "name",
    "model",
    "en",
    "ru",
}


def catalog_entries() -> dict[str, Text | Plural]:
    return {k: v for k, v in vars(texts).items() if isinstance(v, Text | Plural)}


def leaks(text: str, lang: Lang) -> list[str]:
    """Words of the other language in ``text``: English words in a Russian answer (ids and
    command names aside), any Cyrillic in an English one."""
    if lang == "en":
        return re.findall(r"[А-Яа-яЁё]+", text)
    words = re.findall(r"[A-Za-z]{2,}", text)
    return [w for w in words if w.lower() not in LATIN_ALLOWED]


def assert_in(lang: Lang, shown: str | None, expected: str) -> None:
    assert shown == expected
    assert not leaks(shown, lang), shown


# -- the catalog ---------------------------------------------------------------------------------


def test_the_catalog_is_big_enough_to_mean_something() -> None:
    assert len(catalog_entries()) >= 60


@pytest.mark.parametrize("name", sorted(catalog_entries()))
def test_every_text_has_both_languages_with_the_same_placeholders(name: str) -> None:
    entry = catalog_entries()[name]
    variants = entry.variants()
    assert set(variants) == set(LANGUAGES)
    en, ru = variants["en"], variants["ru"]
    assert all(t.strip() for t in (*en, *ru)), name
    wanted = placeholders(en[0])
    for template in (*en, *ru):
        assert placeholders(template) == wanted, (name, template)
    for template in en:
        assert not re.search(r"[А-Яа-яЁё]", template), (name, template)
    for template in ru:
        assert re.search(r"[А-Яа-яЁё]", template), (name, template)  # translated
        unfilled = re.sub(r"\{\w+\}", "", template)
        assert not leaks(unfilled, "ru"), (name, template)


def test_every_command_has_russian_help_and_usage() -> None:
    for command in chat_commands.COMMANDS.values():
        assert command.help.ru != command.help.en
        if command.arg is not None:
            assert command.usage("ru") != command.usage("en")
            assert command.usage("ru").startswith(f"{command.name} ")


@pytest.mark.parametrize(
    ("count", "form"),
    [(1, 0), (2, 1), (4, 1), (5, 2), (11, 2), (12, 2), (14, 2), (21, 0), (22, 1), (111, 2)],
)
def test_russian_plural_forms(count: int, form: int) -> None:
    assert plural_form("ru", count) == form


def test_plural_texts_agree_with_the_number() -> None:
    assert texts.WITHDRAWN("ru", 1).startswith("Я больше не вижу 1 ваше сообщение,")
    assert texts.WITHDRAWN("ru", 3).startswith("Я больше не вижу 3 ваших сообщения,")
    assert texts.WITHDRAWN("ru", 25).startswith("Я больше не вижу 25 ваших сообщений,")
    assert "(its text is erased)" in texts.WITHDRAWN("en", 1)
    assert "(their text is erased)" in texts.WITHDRAWN("en", 2)


# -- the choice ----------------------------------------------------------------------------------


def test_detect_counts_letters_and_admits_when_it_cannot_tell() -> None:
    assert detect(ASKED["ru"][0]) == "ru"
    assert detect(ASKED["en"][0]) == "en"
    assert detect("Beseda, сколько будет 2+2?") == "ru"
    assert detect("2+2?") is None
    assert detect("👍") is None
    assert detect("") is None


def test_choose_persona_then_message_then_setting() -> None:
    assert choose("ru", ["Hello there"]) == "ru"  # the persona's language wins
    assert choose("en-GB", ["Привет"]) == "en"
    assert choose("de", ["Привет"]) == "ru"  # not one of ours: the message decides
    assert choose(None, ["2+2", "Привет"]) == "ru"  # the first text that tells
    assert choose(None, ["2+2"], "ru") == "ru"  # nothing tells: [chat] language
    assert choose(None, ["2+2"], "auto") == "en"


# -- through the core ----------------------------------------------------------------------------


def ask(text: str, *, channel: str = "test:1", author: str = "alice", admin: bool = False) -> Any:
    return Inbound(
        platform="test", channel_key=channel, author_id=author, author_name=author,
        text=text, is_admin=admin,
    )  # fmt: skip


async def send(core: Core, adapter: RecordingAdapter, event: Inbound) -> Any:
    return await (await core.submit(event, adapter))


@pytest.mark.parametrize("lang", LANGUAGES)
async def test_notices_of_the_core_follow_the_message(history: SqlHistoryStore, lang: Lang) -> None:
    question = ASKED[lang][0]
    adapter = RecordingAdapter()

    # Cut: a message longer than max_message_chars.
    core = make_core(history, FakeGenerator(), max_chars=100)
    await send(core, adapter, ask(" ".join([question] * 10)))
    assert_in(lang, adapter.replies[0].final, texts.CUT(lang, limit=100))

    # Nothing to answer: the message has no words, so the channel's last ones tell.
    reply = await send(core, adapter, ask("\u200b"))
    assert reply.status is Status.SKIPPED
    assert_in(lang, adapter.replies[-1].final, texts.NOTHING(lang))

    # The model fails, or says nothing.
    failing = FakeGenerator(fail_with=RuntimeError("boom"))
    core = make_core(history, failing)
    await send(core, adapter, ask(question, channel="test:2"))
    assert adapter.replies[-1].failure == texts.FAILED(lang, reason="boom")
    assert not leaks(texts.FAILED(lang, reason=""), lang)
    core = make_core(history, FakeGenerator(lambda _m: ""))
    await send(core, adapter, ask(question, channel="test:3"))
    assert_in(lang, adapter.replies[-1].failure, texts.EMPTY(lang))


@pytest.mark.parametrize("lang", LANGUAGES)
async def test_stop_and_shutdown_notices(history: SqlHistoryStore, lang: Lang) -> None:
    question = ASKED[lang][0]
    generator = FakeGenerator(lambda _m: "one two three")
    gate = asyncio.Event()
    generator.hold = lambda messages: gate if messages[-1].content == question else None
    core = make_core(history, generator)
    adapter = RecordingAdapter()
    pending = await core.submit(ask(question), adapter)
    await generator.wait_for_calls(1)
    stop = await send(core, adapter, ask("!stop"))
    assert_in(lang, stop.text, texts.STOPPED(lang))
    assert (await pending).status is Status.CANCELLED
    assert adapter.replies[0].failure == texts.STOPPED_MARK(lang)
    again = await send(core, adapter, ask("!stop"))
    assert_in(lang, again.text, texts.NOTHING_TO_STOP(lang))

    # Shutting down with a reply in flight.
    core = make_core(history, generator)
    pending = await core.submit(ask(question, channel="test:9"), adapter)
    await generator.wait_for_calls(2)
    await core.close(0)
    assert adapter.replies[-1].failure == texts.SHUTDOWN(lang)
    assert not leaks(texts.SHUTDOWN(lang), lang)


@pytest.mark.parametrize("lang", LANGUAGES)
async def test_limit_notices(history: SqlHistoryStore, lang: Lang) -> None:
    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    limits = {"user_burst": 1, "user_per_minute": 1, "channel_burst": 2, "channel_per_minute": 1}
    core = make_core(history, FakeGenerator(), clock=Clock(), limits=limits)
    adapter = RecordingAdapter()
    first, second = ASKED[lang]
    assert (await send(core, adapter, ask(first))).status is Status.DONE
    assert (await send(core, adapter, ask(second))).status is Status.SKIPPED
    assert_in(lang, adapter.replies[-1].final, texts.RATE(lang))
    assert (await send(core, adapter, ask(first, author="bob"))).status is Status.DONE
    assert (await send(core, adapter, ask(second, author="carol"))).status is Status.SKIPPED
    assert_in(lang, adapter.replies[-1].final, texts.CHANNEL_RATE(lang))

    # The channel's queue is full: one "busy" notice.
    generator = FakeGenerator(concurrency=1)
    gate = asyncio.Event()
    generator.hold = lambda _m: gate
    core = make_core(history, generator, limits={"channel_queue": 1})
    futures = [await core.submit(ask(first, channel="test:5", author="a"), adapter)]
    await generator.wait_for_calls(1)  # answering "a": the queue is empty again
    futures.append(await core.submit(ask(first, channel="test:5", author="b"), adapter))
    over = await send(core, adapter, ask(second, channel="test:5", author="c"))
    assert over.status is Status.SKIPPED
    assert_in(lang, adapter.replies[-1].final, texts.BUSY(lang))
    gate.set()
    await asyncio.gather(*futures)


class ReadOnlyHistory(SqlHistoryStore):
    async def append(self, *args: Any, **kwargs: Any) -> Any:
        raise StorageError("the database is read-only")


@pytest.mark.parametrize("lang", LANGUAGES)
async def test_a_message_that_cannot_be_stored_is_told_in_its_language(
    history: SqlHistoryStore, lang: Lang
) -> None:
    broken = ReadOnlyHistory(history._db)  # type: ignore[attr-defined]
    core = make_core(broken, FakeGenerator())
    adapter = RecordingAdapter()
    with pytest.raises(StorageError):
        await core.submit(ask(ASKED[lang][1]), adapter)
    reason = "the database is read-only"
    assert adapter.replies[-1].failure == texts.STORAGE(lang, reason=reason)


def expected_help(lang: Lang) -> str:
    lines = [texts.HELP_HEADING(lang)]
    for c in chat_commands.COMMANDS.values():
        lines.append(f"!{c.usage(lang)} — {c.help(lang)}")
    return "\n".join(lines)


@pytest.mark.parametrize("lang", LANGUAGES)
async def test_command_answers_follow_the_conversation(
    history: SqlHistoryStore, lang: Lang
) -> None:
    core = make_core(history, FakeGenerator())
    adapter = RecordingAdapter()
    await send(core, adapter, ask(ASKED[lang][0]))  # the channel's language

    async def answer(text: str, **kw: Any) -> str:
        reply = await send(core, adapter, ask(text, **kw))
        assert reply.status is Status.DONE, reply.error
        shown = adapter.replies[-1].final
        assert shown == reply.text
        # The cards' names are data, not Beseda's words.
        assert not leaks(shown.replace("Беседа", ""), lang), shown
        return str(shown)

    assert await answer("!help") == expected_help(lang)
    assert await answer("!") == expected_help(lang)
    assert await answer("!summary") == texts.NO_SUMMARY(lang)
    assert await answer("!memories") == texts.NO_MEMORY(lang)
    fact = {"en": "my cat is called Tom", "ru": "мою кошку зовут Мурка"}[lang]
    assert await answer(f"!remember {fact}") == texts.NO_MEMORY(lang)
    usage = texts.USAGE(lang, usage=f"!forget <{texts.ARG_TEXT(lang)}>")
    assert await answer("!forget") == usage
    assert await answer(f"!aboutme {fact}") == texts.NO_MEMORY(lang)
    assert await answer(f"!forget {fact}") == texts.NO_MEMORY(lang)
    assert await answer("!forgetme") == texts.NO_BACKGROUND(lang)
    shown = await answer("!persona")
    assert shown == texts.PERSONA_HERE(
        lang, id="beseda", name="Beseda", reason=texts.WHY_DEFAULT(lang)
    )
    assert (await answer("!personas")).startswith(texts.PERSONAS_HEADING(lang) + "\n")
    assert await answer("!persona beseda-en") == texts.ADMINS_ONLY(lang)
    assert await answer("!reset") == texts.RESET_DONE(lang)
    # After !reset the window is empty, but the stored messages still tell the language.
    assert await answer("!summary") == texts.NO_SUMMARY(lang)


async def test_a_command_in_words_of_its_own_language_beats_the_channel(
    history: SqlHistoryStore,
) -> None:
    core = make_core(history, FakeGenerator())
    adapter = RecordingAdapter()
    await send(core, adapter, ask(ASKED["en"][0]))
    reply = await send(core, adapter, ask("!forget мою кошку зовут Мурка"))
    assert reply.text == texts.NO_MEMORY("ru")
    reply = await send(core, adapter, ask("!forget my cat"))
    assert reply.text == texts.NO_MEMORY("en")


def persona_config(default: str, language: str = "auto") -> Config:
    return Config(
        model=ModelConfig(max_tokens=64, temperature=0),
        persona=PersonaConfig(system_prompt="You are a test."),
        personas=PersonasSection(default=default),
        chat=ChatConfig(safety_margin_tokens=8, language=language),  # type: ignore[arg-type]
        context=ContextConfig(date="off"),
    )


@pytest.mark.parametrize(("persona", "lang"), [("beseda-en", "en"), ("beseda-ru", "ru")])
async def test_the_persona_language_wins_over_the_message(
    history: SqlHistoryStore, persona: str, lang: Lang
) -> None:
    core = build_core(persona_config(persona), history, FakeGenerator())
    adapter = RecordingAdapter()
    other: Lang = "ru" if lang == "en" else "en"
    for question in ASKED[other]:
        await send(core, adapter, ask(question))
    help_text = (await send(core, adapter, ask("!help"))).text
    assert help_text == expected_help(lang)
    reply = await send(core, adapter, ask("!forget " + ASKED[other][0]))
    assert reply.text == texts.NO_MEMORY(lang)


@pytest.mark.parametrize(("setting", "lang"), [("auto", "en"), ("en", "en"), ("ru", "ru")])
async def test_chat_language_decides_when_nothing_else_tells(
    history: SqlHistoryStore, setting: str, lang: Lang
) -> None:
    core = build_core(persona_config("", setting), history, FakeGenerator())
    adapter = RecordingAdapter()
    reply = await send(core, adapter, ask("\u200b"))  # a new channel, no words
    assert reply.status is Status.SKIPPED
    assert adapter.replies[-1].final == texts.NOTHING(lang)
    assert (await send(core, adapter, ask("!help"))).text == expected_help(lang)
    # A message with words still decides for itself.
    other: Lang = "ru" if lang == "en" else "en"
    assert (await send(core, adapter, ask("!forget " + ASKED[other][0]))).text == (
        texts.NO_MEMORY(other)
    )


def test_the_sources_line_speaks_the_chosen_language() -> None:
    class Chunk:
        label = "zorbel.md"
        text = "Miriam Okafor founded Zorbel in 1987."

    answer = "It was Miriam Okafor, in 1987."
    assert sources_line(answer, "who?", [Chunk()]) == "Sources: [1] zorbel.md"
    assert sources_line(answer, "who?", [Chunk()], "ru") == "Источники: [1] zorbel.md"
    russian = "Её основала Miriam Okafor в 1987 году, так говорится в источнике."
    assert sources_line(russian, "кто?", [Chunk()]) == "Источники: [1] zorbel.md"


def test_the_persona_choice_reason_is_english_for_logs() -> None:
    from agent.prompt.personas import Choice  # noqa: PLC0415

    entry: Any = object()
    assert Choice(entry, "default").reason == "the default persona"
    assert Choice(entry, "config", "[personas] channels.x").reason == "[personas] channels.x"
    assert replace(Choice(entry, "chosen"), rule="chosen-parent").reason == (
        "chosen for its parent channel with !persona"
    )
