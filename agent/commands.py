"""Chat commands (``!help``, ``!reset``, ``!summary``): answered by Beseda, never the model.

A command runs on its channel's worker, in order with the messages around it, and neither
the command nor its answer enters the model's prompt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from memory.history import HistoryStore

PREFIX = "!"


@dataclass(frozen=True, slots=True)
class Invocation:
    name: str
    args: str
    channel_key: str
    message_id: int


Handler = Callable[[Invocation, HistoryStore], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    usage: str
    help: str
    handler: Handler


def parse(text: str) -> tuple[str, str] | None:
    """``("reset", "")`` for ``"!reset"``; None when the text is not a known command."""
    stripped = text.strip()
    if not stripped.startswith(PREFIX):
        return None
    name, _, args = stripped[len(PREFIX) :].partition(" ")
    name = name.lower()
    return (name, args.strip()) if name in COMMANDS else None


async def run(invocation: Invocation, history: HistoryStore) -> str:
    return await COMMANDS[invocation.name].handler(invocation, history)


async def _help(_invocation: Invocation, _history: HistoryStore) -> str:
    lines = ["Commands:"]
    lines += [f"{PREFIX}{c.usage} — {c.help}" for c in COMMANDS.values()]
    return "\n".join(lines)


async def _reset(invocation: Invocation, history: HistoryStore) -> str:
    await history.reset(invocation.channel_key, after_id=invocation.message_id)
    return (
        "Starting afresh: I no longer see the earlier messages of this channel (they stay stored)."
    )


async def _summary(invocation: Invocation, history: HistoryStore) -> str:
    state = await history.channel_state(invocation.channel_key)
    if state.summary is None:
        return "No summary yet: the whole conversation still fits in my context window."
    return f"Summary of the earlier conversation:\n{state.summary.text}"


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("help", "help", "list the commands", _help),
        Command("reset", "reset", "start this channel afresh (history is kept)", _reset),
        Command("summary", "summary", "show the summary of what fell out of context", _summary),
    )
}
