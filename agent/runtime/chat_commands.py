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

from agent.prompt.personas import RESET, Personas, Place
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
    usage: str
    help: str
    handler: Handler


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


async def _help(_invocation: Invocation, _deps: CommandDeps) -> str:
    lines = ["Commands:"]
    lines += [f"{PREFIX}{c.usage} — {c.help}" for c in COMMANDS.values()]
    return "\n".join(lines)


async def _reset(invocation: Invocation, deps: CommandDeps) -> str:
    await deps.history.reset(invocation.channel_key, after_id=invocation.message_id)
    return (
        "Starting afresh: I no longer see the earlier messages of this channel (they stay stored)."
    )


async def _summary(invocation: Invocation, deps: CommandDeps) -> str:
    state = await deps.history.channel_state(invocation.channel_key)
    if state.summary is None:
        return "No summary yet: the whole conversation still fits in my context window."
    return f"Summary of the earlier conversation:\n{state.summary.text}"


async def _stop(_invocation: Invocation, _deps: CommandDeps) -> str:
    # The core answers !stop itself, ahead of the queue; this runs only if it did not.
    return "Nothing to stop."


NO_MEMORY = "Long-term memory is not available (no vector store is configured)."


async def _remember(invocation: Invocation, deps: CommandDeps) -> str:
    if deps.retriever is None or deps.retriever.memories is None:
        return NO_MEMORY
    if not invocation.args:
        return f"Usage: {PREFIX}remember <text>"
    # A fact told in a channel (a direct conversation included) stays in that channel.
    memory = await deps.retriever.memories.remember(
        invocation.channel_key, invocation.args, author=invocation.author_name
    )
    return f"I will remember: {memory.text}"


async def _aboutme(invocation: Invocation, deps: CommandDeps) -> str:
    if deps.retriever is None or deps.retriever.memories is None:
        return NO_MEMORY
    if not invocation.args:
        return f"Usage: {PREFIX}aboutme <a fact about you>"
    if not invocation.author_id:
        return "I cannot tell who you are here, so I cannot remember this about you."
    # The person's own choice: shown wherever they take part (a channel's prompt carries the
    # memories of the people who spoke in it recently), unlike !remember.
    platform = invocation.channel_key.split(":", 1)[0]
    memory = await deps.retriever.memories.remember(
        user_scope(platform, invocation.author_id), invocation.args,
        author=invocation.author_name,
    )  # fmt: skip
    return f"I will remember about you, wherever you talk to me on {platform}: {memory.text}"


async def _forget(invocation: Invocation, deps: CommandDeps) -> str:
    if not invocation.args:
        return f"Usage: {PREFIX}forget <text>"
    # Your own messages here that were context only (ambient) and contain the text.
    withdrawn = 0
    if invocation.author_id:
        withdrawn = await deps.history.forget_ambient(
            invocation.channel_key, invocation.author_id, invocation.args
        )
    lines = [_withdrawn(withdrawn)] if withdrawn else []
    if deps.retriever is None or deps.retriever.memories is None:
        return "\n".join(lines) if lines else NO_MEMORY
    scopes = [invocation.channel_key]
    if invocation.author_id:
        platform = invocation.channel_key.split(":", 1)[0]
        scopes.append(user_scope(platform, invocation.author_id))
    gone = await deps.retriever.memories.forget(scopes, invocation.args, deps.forget_min_score)
    if gone:
        lines += ["Forgotten:", *(f"- {m.text}" for m in gone)]
    return "\n".join(lines) if lines else "I remember nothing like that here."


async def _forgetme(invocation: Invocation, deps: CommandDeps) -> str:
    if not invocation.author_id:
        return "I cannot tell who you are here, so I cannot tell your messages apart."
    withdrawn = await deps.history.forget_ambient(invocation.channel_key, invocation.author_id)
    if not withdrawn:
        return "I keep none of your messages here as background."
    return _withdrawn(withdrawn)


def _withdrawn(count: int) -> str:
    what = "message" if count == 1 else "messages"
    return (
        f"I no longer see {count} of your {what} written here without addressing me "
        "(their text is erased)."
    )


async def _memories(invocation: Invocation, deps: CommandDeps) -> str:
    if deps.retriever is None or deps.retriever.memories is None:
        return NO_MEMORY
    scopes = [s for s in await deps.retriever.scopes(invocation.channel_key) if s != "global"]
    found = await deps.retriever.memories.list(scopes)
    if not found:
        return f"I remember nothing here yet. Teach me with {PREFIX}remember <text>."
    return "What I remember here:\n" + "\n".join(f"- {m.text}" for m in found)


NO_PERSONAS = "Personas are not available here."


async def _persona(invocation: Invocation, deps: CommandDeps) -> str:
    if deps.personas is None:
        return NO_PERSONAS
    place = _place(invocation)
    if not invocation.args:
        choice = await deps.personas.choose(place)
        here = choice.entry
        return f"Persona here: {here.id} ({here.card.name}), {choice.reason}."
    if not invocation.is_admin:
        return "Only admins can switch the persona."
    name = invocation.args  # a card's name may have spaces: "Captain Hook"
    entry = await deps.personas.switch(place, name)
    if entry is None:
        return f"Cannot switch: {deps.personas.registry.unknown(name)}."
    if name.casefold() == RESET:
        return f"Persona here is back to the configured one: {entry.id} ({entry.card.name})."
    return f"Persona here is now {entry.id} ({entry.card.name})."


async def _personas(invocation: Invocation, deps: CommandDeps) -> str:
    if deps.personas is None:
        return NO_PERSONAS
    place = _place(invocation)
    current = (await deps.personas.choose(place)).entry.id
    lines = ["Personas:"]
    for name in deps.personas.registry.names():
        entry = deps.personas.registry.entries[name]
        language = f" [{entry.card.language}]" if entry.card.language else ""
        mark = " (here)" if name == current else ""
        lines.append(f"- {name}: {entry.card.name}{language}{mark}")
    return "\n".join(lines)


def _place(invocation: Invocation) -> Place:
    return Place(invocation.channel_key, invocation.server_id, invocation.parent_key)


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("help", "help", "list the commands", _help),
        Command("reset", "reset", "start this channel afresh (history is kept)", _reset),
        Command("summary", "summary", "show the summary of what fell out of context", _summary),
        Command("remember", "remember <text>", "remember a fact in this channel", _remember),
        Command(
            "aboutme",
            "aboutme <text>",
            "remember a fact about you, in every channel where you talk to me",
            _aboutme,
        ),
        Command(
            "forget",
            "forget <text>",
            "forget the closest fact remembered here or about you, and your background "
            "messages here that contain the text",
            _forget,
        ),
        Command(
            "forgetme",
            "forgetme",
            "erase every message you wrote here without addressing me, so I no longer see it",
            _forgetme,
        ),
        Command("memories", "memories", "list what I remember here", _memories),
        Command(
            "persona",
            "persona [name]",
            "show the persona here; admins: switch to NAME",
            _persona,
        ),
        Command("personas", "personas", "list the personas", _personas),
        Command(STOP, STOP, "stop the reply I am writing in this channel", _stop),
    )
}
