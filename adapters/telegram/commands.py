"""Telegram's ``/commands``: Beseda's chat commands (``!help`` …) as Telegram shows them.

``/help`` and ``/help@beseda_bot`` become ``!help``; ``/start`` (what a client sends when
someone opens the bot) is ``!help`` too; a command addressed to another bot
(``/help@other_bot``) is not for Beseda. The list is registered with ``setMyCommands`` in
English (the default) and in Russian (``language_code="ru"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiogram.types import BotCommand, MessageEntity

from agent.runtime import chat_commands

# Telegram accepts 1-32 lower-case letters, digits and underscores.
_VALID = re.compile(r"^[a-z0-9_]{1,32}$")
ALIASES = {"start": "help"}

# The Russian descriptions. TODO(i18n): take them from the en/ru message catalogs once those
# exist (agent/i18n); until then they live here.
RUSSIAN = {
    "help": "список команд",
    "reset": "начать разговор здесь заново (история сохраняется)",
    "summary": "сводка того, что вышло за пределы контекста",
    "remember": "запомнить факт в этом чате",
    "aboutme": "запомнить факт о вас — во всех чатах, где вы со мной говорите",
    "forget": "забыть ближайший запомненный факт",
    "memories": "что я помню в этом чате",
    "persona": "персона этого чата; админы: сменить на NAME",
    "personas": "список персон",
    "stop": "остановить ответ, который я пишу",
}


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
    return {
        None: [BotCommand(command=c.name, description=(c.help or c.name)[:256]) for c in commands],
        "ru": [
            BotCommand(command=c.name, description=RUSSIAN.get(c.name, c.help or c.name)[:256])
            for c in commands
        ],
    }
