"""Telegram's ``/commands``: Beseda's chat commands (``!help`` …) as Telegram shows them.

``/help`` and ``/help@beseda_bot`` become ``!help``; ``/start`` (what a client sends when
someone opens the bot) is ``!help`` too; a command addressed to another bot
(``/help@other_bot``) is not for Beseda. The list is registered with ``setMyCommands`` in
English (the default) and in Russian (``language_code="ru"``), both from
the message catalog (agent/i18n).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiogram.types import BotCommand, MessageEntity

from agent.i18n import Lang
from agent.runtime import chat_commands

# Telegram accepts 1-32 lower-case letters, digits and underscores.
_VALID = re.compile(r"^[a-z0-9_]{1,32}$")
ALIASES = {"start": "help"}
# Telegram's longest command description.
DESCRIPTION_LIMIT = 256


@dataclass(frozen=True, slots=True)
class Parsed:
    text: str  # "!name args" for Beseda's commands, else the text as it was
    known: bool  # one of Beseda's commands
    elsewhere: bool  # addressed to another bot: "/help@other_bot"


def parse(text: str, entities: list[MessageEntity] | None, username: str) -> Parsed:
    command = next((e for e in entities or () if e.type == "bot_command" and e.offset == 0), None)
    if command is None:
        return Parsed(text, known=False, elsewhere=False)
    # Commands are ASCII, so UTF-16 offsets and Python indices agree up to its end.
    word, rest = text[: command.length], text[command.length :].strip()
    name, _, target = word[1:].partition("@")
    if target and target.lower() != username.lower():
        return Parsed(text, known=False, elsewhere=True)
    name = ALIASES.get(name.lower(), name.lower())
    if name not in chat_commands.COMMANDS:
        return Parsed(text, known=False, elsewhere=False)
    return Parsed(f"{chat_commands.PREFIX}{name} {rest}".strip(), known=True, elsewhere=False)


def command_lists() -> dict[str | None, list[BotCommand]]:
    """language code (None: everyone else) -> the commands with their descriptions."""
    commands = [c for c in chat_commands.COMMANDS.values() if _VALID.match(c.name)]
    lists: dict[str | None, list[BotCommand]] = {}
    languages: tuple[tuple[str | None, Lang], ...] = ((None, "en"), ("ru", "ru"))
    for code, lang in languages:
        lists[code] = [
            BotCommand(command=c.name, description=c.help(lang)[:DESCRIPTION_LIMIT])
            for c in commands
        ]
    return lists
