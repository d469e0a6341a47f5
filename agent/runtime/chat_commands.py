"""Chat commands (``!help``, ``!reset``, ``!summary``, memories, personas): answered by
Beseda, never the model.

A command runs on its channel's worker, in order with the messages around it, and neither
the command nor its answer enters the model's prompt. ``!stop`` is the exception: the core
runs it at once, ahead of the queue (see agent/runtime/core.py).

Invisible formatting characters (zero-width spaces and joiners, direction marks and
overrides) are ignored when recognising a command, so ``\u200b!reset`` is still ``!reset``;
the text itself is stored as written. The prefix alone (``!``) is read as ``!help``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.i18n import Lang, Text
from agent.i18n import catalog as texts
from agent.prompt.personas import RESET, Choice, Personas, Place
from memory.history import HistoryStore
from memory.memories import user_scope

if TYPE_CHECKING:
    from agent.prompt.retrieval import Retriever

PREFIX = "!"
STOP = "stop"


@dataclass(frozen=True, slots=True)
class Invocation:
    name: str
    args: str
    channel_key: str
    message_id: int
    author_id: str = ""
    author_name: str = ""
    # The adapter's verdict (Inbound.is_admin): admin-only commands check it.
    is_admin: bool = False
    # For persona assignment: the server, and a thread's parent channel.
    server_id: str | None = None
    parent_key: str | None = None
    # The language of the answer (agent/i18n: the persona's, else the message's, …).
    language: Lang = "en"


@dataclass(frozen=True, slots=True)
class CommandDeps:
    """What command handlers may use; the memory commands need a retriever."""

    history: HistoryStore
    retriever: Retriever | None = None
    forget_min_score: float = 0.85
    personas: Personas | None = None


Handler = Callable[[Invocation, CommandDeps], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: Text
    handler: Handler
    # The argument's placeholder in usage lines ("!remember <text>"); None: no argument.
    arg: Text | None = None
    # The argument may be left out ("!persona [name]").
    optional: bool = False

    def usage(self, lang: Lang = "en") -> str:
        """``remember <text>`` (without the prefix), in ``lang``."""
        if self.arg is None:
            return self.name
        arg = f"[{self.arg(lang)}]" if self.optional else f"<{self.arg(lang)}>"
        return f"{self.name} {arg}"

    @property
    def takes_args(self) -> bool:
        return self.arg is not None

    @property
    def in_words(self) -> bool:
        """The argument is the person's own words (a fact), not a name: it tells their
        language."""
        return self.arg is not None and self.arg is not texts.ARG_NAME


def parse(text: str) -> tuple[str, str] | None:
    """``("reset", "")`` for ``"!reset"``; None when the text is not a known command."""
    stripped = visible(text).strip()
    if not stripped.startswith(PREFIX):
        return None
    if stripped == PREFIX:
        return ("help", "")
    name, _, args = stripped[len(PREFIX) :].partition(" ")
    name = name.lower()
    return (name, args.strip()) if name in COMMANDS else None


def visible(text: str) -> str:
    """``text`` without invisible format characters (Unicode category Cf)."""
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


async def run(invocation: Invocation, deps: CommandDeps | HistoryStore) -> str:
    if not isinstance(deps, CommandDeps):
        deps = CommandDeps(deps)
    return await COMMANDS[invocation.name].handler(invocation, deps)


async def _help(invocation: Invocation, _deps: CommandDeps) -> str:
    lang = invocation.language
    lines = [texts.HELP_HEADING(lang)]
    lines += [f"{PREFIX}{c.usage(lang)} — {c.help(lang)}" for c in COMMANDS.values()]
    return "\n".join(lines)


async def _reset(invocation: Invocation, deps: CommandDeps) -> str:
    await deps.history.reset(invocation.channel_key, after_id=invocation.message_id)
    return texts.RESET_DONE(invocation.language)


async def _summary(invocation: Invocation, deps: CommandDeps) -> str:
    state = await deps.history.channel_state(invocation.channel_key)
    if state.summary is None:
        return texts.NO_SUMMARY(invocation.language)
    return f"{texts.SUMMARY_HEADING(invocation.language)}\n{state.summary.text}"


async def _stop(invocation: Invocation, _deps: CommandDeps) -> str:
    # The core answers !stop itself, ahead of the queue; this runs only if it did not.
    return texts.NOTHING_TO_STOP_SHORT(invocation.language)


# The English wording (for code and tests that name it).
NO_MEMORY = texts.NO_MEMORY.en


def _usage(name: str, lang: Lang) -> str:
    return texts.USAGE(lang, usage=f"{PREFIX}{COMMANDS[name].usage(lang)}")


async def _remember(invocation: Invocation, deps: CommandDeps) -> str:
    lang = invocation.language
    if deps.retriever is None or deps.retriever.memories is None:
        return texts.NO_MEMORY(lang)
    if not invocation.args:
        return _usage("remember", lang)
    # A fact told in a channel (a direct conversation included) stays in that channel.
    memory = await deps.retriever.memories.remember(
        invocation.channel_key, invocation.args, author=invocation.author_name
    )
    return texts.REMEMBERED(lang, text=memory.text)


async def _aboutme(invocation: Invocation, deps: CommandDeps) -> str:
    lang = invocation.language
    if deps.retriever is None or deps.retriever.memories is None:
        return texts.NO_MEMORY(lang)
    if not invocation.args:
        return _usage("aboutme", lang)
    if not invocation.author_id:
        return texts.WHO_ARE_YOU(lang)
    # The person's own choice: shown wherever they take part (a channel's prompt carries the
    # memories of the people who spoke in it recently), unlike !remember.
    platform = invocation.channel_key.split(":", 1)[0]
    memory = await deps.retriever.memories.remember(
        user_scope(platform, invocation.author_id), invocation.args,
        author=invocation.author_name,
    )  # fmt: skip
    return texts.REMEMBERED_ABOUT_YOU(lang, platform=platform, text=memory.text)


async def _forget(invocation: Invocation, deps: CommandDeps) -> str:
    lang = invocation.language
    if not invocation.args:
        return _usage("forget", lang)
    # Your own messages here that were context only (ambient) and contain the text.
    withdrawn = 0
    if invocation.author_id:
        withdrawn = await deps.history.forget_ambient(
            invocation.channel_key, invocation.author_id, invocation.args
        )
    lines = [texts.WITHDRAWN(lang, withdrawn)] if withdrawn else []
    if deps.retriever is None or deps.retriever.memories is None:
        return "\n".join(lines) if lines else texts.NO_MEMORY(lang)
    scopes = [invocation.channel_key]
    if invocation.author_id:
        platform = invocation.channel_key.split(":", 1)[0]
        scopes.append(user_scope(platform, invocation.author_id))
    gone = await deps.retriever.memories.forget(scopes, invocation.args, deps.forget_min_score)
    if gone:
        lines += [texts.FORGOTTEN(lang), *(f"- {m.text}" for m in gone)]
    return "\n".join(lines) if lines else texts.NOTHING_LIKE_THAT(lang)


async def _forgetme(invocation: Invocation, deps: CommandDeps) -> str:
    lang = invocation.language
    if not invocation.author_id:
        return texts.WHO_ARE_YOU_MESSAGES(lang)
    withdrawn = await deps.history.forget_ambient(invocation.channel_key, invocation.author_id)
    if not withdrawn:
        return texts.NO_BACKGROUND(lang)
    return texts.WITHDRAWN(lang, withdrawn)


async def _memories(invocation: Invocation, deps: CommandDeps) -> str:
    lang = invocation.language
    if deps.retriever is None or deps.retriever.memories is None:
        return texts.NO_MEMORY(lang)
    scopes = [s for s in await deps.retriever.scopes(invocation.channel_key) if s != "global"]
    found = await deps.retriever.memories.list(scopes)
    if not found:
        return texts.NO_MEMORIES(lang, command=f"{PREFIX}{COMMANDS['remember'].usage(lang)}")
    return f"{texts.MEMORIES_HEADING(lang)}\n" + "\n".join(f"- {m.text}" for m in found)


# The English wording (for code and tests that name it).
NO_PERSONAS = texts.NO_PERSONAS.en


async def _persona(invocation: Invocation, deps: CommandDeps) -> str:
    lang = invocation.language
    if deps.personas is None:
        return texts.NO_PERSONAS(lang)
    place = _place(invocation)
    if not invocation.args:
        choice = await deps.personas.choose(place)
        here = choice.entry
        reason = _why(choice, lang)
        return texts.PERSONA_HERE(lang, id=here.id, name=here.card.name, reason=reason)
    if not invocation.is_admin:
        return texts.ADMINS_ONLY(lang)
    name = invocation.args  # a card's name may have spaces: "Captain Hook"
    entry = await deps.personas.switch(place, name)
    if entry is None:
        return texts.CANNOT_SWITCH(lang, problem=deps.personas.registry.unknown(name))
    if name.casefold() == RESET:
        return texts.PERSONA_RESET(lang, id=entry.id, name=entry.card.name)
    return texts.PERSONA_NOW(lang, id=entry.id, name=entry.card.name)


def _why(choice: Choice, lang: Lang) -> str:
    """Why this persona speaks here, in ``lang``."""
    if choice.rule == "chosen":
        return texts.WHY_CHOSEN_HERE(lang)
    if choice.rule == "chosen-parent":
        return texts.WHY_CHOSEN_PARENT(lang)
    if choice.rule == "config":
        return texts.WHY_CONFIGURED(lang, key=choice.key)
    return texts.WHY_DEFAULT(lang)


async def _personas(invocation: Invocation, deps: CommandDeps) -> str:
    lang = invocation.language
    if deps.personas is None:
        return texts.NO_PERSONAS(lang)
    place = _place(invocation)
    current = (await deps.personas.choose(place)).entry.id
    lines = [texts.PERSONAS_HEADING(lang)]
    for name in deps.personas.registry.names():
        entry = deps.personas.registry.entries[name]
        language = f" [{entry.card.language}]" if entry.card.language else ""
        mark = f" {texts.PERSONA_MARK_HERE(lang)}" if name == current else ""
        lines.append(f"- {name}: {entry.card.name}{language}{mark}")
    return "\n".join(lines)


def _place(invocation: Invocation) -> Place:
    return Place(invocation.channel_key, invocation.server_id, invocation.parent_key)


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("help", texts.HELP_HELP, _help),
        Command("reset", texts.HELP_RESET, _reset),
        Command("summary", texts.HELP_SUMMARY, _summary),
        Command("remember", texts.HELP_REMEMBER, _remember, texts.ARG_TEXT),
        Command("aboutme", texts.HELP_ABOUTME, _aboutme, texts.ARG_FACT),
        Command("forget", texts.HELP_FORGET, _forget, texts.ARG_TEXT),
        Command("forgetme", texts.HELP_FORGETME, _forgetme),
        Command("memories", texts.HELP_MEMORIES, _memories),
        Command("persona", texts.HELP_PERSONA, _persona, texts.ARG_NAME, optional=True),
        Command("personas", texts.HELP_PERSONAS, _personas),
        Command(STOP, texts.HELP_STOP, _stop),
    )
}
