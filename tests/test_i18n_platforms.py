"""Beseda's own words end to end: Russian messages get Russian notices and command answers
on the console and on Discord (the real adapter driven through the loopback Discord fake),
English ones English; the console's one-time hint to Russian speakers."""

# The Discord fixtures come from tests/test_discord.py, hence the redefined names.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from agent.i18n import Lang, Text
from agent.i18n import catalog as texts
from agent.runtime import chat_commands
from memory.history import SqlHistoryStore
from tests.support import discord_fake as fk
from tests.support.core import make_core
from tests.support.fakes import FakeGenerator
from tests.test_discord import MENTION, StartBot, fake, start_bot  # noqa: F401 (fixtures)
from tests.test_i18n import ASKED, expected_help, leaks

HINT = "подсказка: встроенная модель не говорит по-русски (test)"
FACT: dict[Lang, str] = {"en": "my cat is called Tom", "ru": "мою кошку зовут Мурка"}


def english_sentences() -> list[str]:
    """Every English text of the catalog without placeholders, as it would be shown."""
    return [
        v.en
        for v in vars(texts).values()
        if isinstance(v, Text) and "{" not in v.en and len(v.en.split()) >= 3
    ]


def no_english_notice(shown: str) -> None:
    found = [sentence for sentence in english_sentences() if sentence in shown]
    assert not found, found


# -- the console ---------------------------------------------------------------------------------


async def chat_on_console(
    history: SqlHistoryStore, lines: list[str], hint: str | None = HINT
) -> tuple[str, str]:
    core = make_core(history, FakeGenerator(lambda m: f"echo: {m[-1].content}"))
    out, err = io.StringIO(), io.StringIO()
    console = ConsoleAdapter(
        channel="local", user_name="you", assistant_name="Beseda",
        stdin=io.StringIO("".join(f"{line}\n" for line in lines)), stdout=out, stderr=err,
        interactive=False, russian_hint=hint,
    )  # fmt: skip
    await asyncio.wait_for(console.run(core.submit), 30)
    await core.close(1)
    return out.getvalue(), err.getvalue()


@pytest.mark.parametrize("lang", ["en", "ru"])
async def test_the_console_answers_commands_and_notices_in_the_message_language(
    history: SqlHistoryStore, lang: Lang
) -> None:
    question = ASKED[lang][0]
    lines = [question, "!help", "\u200b", f"!forget {FACT[lang]}", "!memories", "!stop"]
    out, _err = await chat_on_console(history, lines)
    assert f"echo: {question}" in out
    assert expected_help(lang) in out
    assert texts.NOTHING(lang) in out
    assert out.count(texts.NO_MEMORY(lang)) == 2
    assert texts.NOTHING_TO_STOP(lang) in out
    if lang == "ru":
        no_english_notice(out)
        assert "Commands:" not in out
    else:
        assert not leaks(out, "en")


async def test_the_console_hint_is_shown_once_and_only_for_russian(
    history: SqlHistoryStore,
) -> None:
    _out, err = await chat_on_console(history, ["Hello!", *ASKED["ru"], "!help"])
    assert err.count(HINT) == 1
    assert err.index(HINT) == 0  # before the first Russian answer, not before English
    _out, english = await chat_on_console(history, ASKED["en"])
    assert HINT not in english
    _out, none = await chat_on_console(history, ASKED["ru"], hint=None)  # another model
    assert "подсказка" not in none


# -- Discord ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "ru"])
async def test_discord_answers_commands_and_notices_in_the_message_language(
    start_bot: StartBot, fake: fk.DiscordFake, lang: Lang
) -> None:
    bot = await start_bot()
    question = ASKED[lang][0]
    await fake.message_create(f"{MENTION} {question}", mentions=[fake.bot])
    assert await bot.answered(1) == [f"echo: {question}"]
    await fake.message_create("!help")
    await fake.message_create(MENTION, mentions=[fake.bot])  # nothing to answer
    await fake.message_create(f"!forget {FACT[lang]}")
    shown = await bot.answered(4)
    # The notice comes at once, the commands on the channel's worker: in either order.
    expected = [expected_help(lang), texts.NOTHING(lang), texts.NO_MEMORY(lang)]
    assert sorted(shown[1:]) == sorted(expected)
    # A slash command has no words of its own: the channel's language.
    await fake.slash("memories")
    await fake.wait_for(lambda: len(fake.contents()) >= 5)
    await bot.idle()
    assert fake.contents()[4] == texts.NO_MEMORY(lang)
    everything = "\n".join(fake.contents())
    if lang == "ru":
        no_english_notice(everything)
    else:
        assert not leaks(everything.replace(question, ""), "en")


@pytest.mark.parametrize("lang", ["en", "ru"])
async def test_discord_rate_notice_speaks_the_message_language(
    start_bot: StartBot, fake: fk.DiscordFake, lang: Lang
) -> None:
    bot = await start_bot(rate_limit_messages=1, rate_limit_seconds=60)
    for question in ASKED[lang]:
        await fake.message_create(f"{MENTION} {question}", mentions=[fake.bot])
    shown = await bot.answered(2)
    assert shown.count(texts.INTAKE_RATE(lang)) == 1


async def test_slash_commands_carry_russian_descriptions(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    await start_bot()
    [put] = [r for r in fake.requests if r.method == "PUT"]
    synced = {c["name"]: c for c in put.body}
    assert set(synced) == set(chat_commands.COMMANDS)
    for name, command in chat_commands.COMMANDS.items():
        body = synced[name]
        assert body["description"] == command.help.en[:100]
        assert body["description_localizations"] == {"ru": command.help.ru[:100]}
        assert re.search(r"[а-я]", body["description_localizations"]["ru"])
        options = body.get("options") or []
        if command.takes_args:
            [option] = options
            assert option["description_localizations"] == {"ru": texts.OPTION_TEXT.ru}
        else:
            assert options == []


async def test_a_refused_slash_command_speaks_the_persons_discord_language(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    await start_bot(users=[999])  # alice is not allowed
    await fake.slash("help", locale="ru")
    await fake.slash("help", locale="en-GB")
    await fake.wait_for(
        lambda: len([r for r in fake.requests if r.path.endswith("/callback")]) >= 2
    )
    answers = [r.body["data"]["content"] for r in fake.requests if r.path.endswith("/callback")]
    assert answers == [texts.NOT_ALLOWED.ru, texts.NOT_ALLOWED.en]


async def test_a_slash_command_in_a_new_channel_speaks_the_persons_discord_language(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot()
    await fake.slash("help", locale="ru")
    await fake.wait_for(lambda: bool(fake.contents()))
    await bot.idle()
    assert fake.contents() == [expected_help("ru")]


def test_the_telegram_command_lists_come_from_the_catalog() -> None:
    from adapters.telegram.commands import command_lists  # noqa: PLC0415 - imports aiogram

    lists = command_lists()
    russian = {c.command: c.description for c in lists["ru"]}
    english = {c.command: c.description for c in lists[None]}
    for name, command in chat_commands.COMMANDS.items():
        assert russian[name] == command.help.ru
        assert english[name] == command.help.en


def test_no_english_notice_in_russian_is_checked_for_real() -> None:
    with pytest.raises(AssertionError):
        no_english_notice(f"Привет!\n{texts.BUSY.en}")
    no_english_notice(texts.BUSY.ru)
    assert Path(__file__).name  # the module is importable on its own
