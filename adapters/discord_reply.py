"""Discord's surface for edited replies (adapters/streaming.py): posting, editing, typing.

An answer goes to a message (the first chunk replies to it, the rest follow in its channel)
or to a deferred slash command (every chunk through the interaction's follow-up webhook).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import discord

from adapters.split import DISCORD_LIMIT
from adapters.streaming import Clock, EditedReply, Failure, Kind, Sleep


class Editable(Protocol):
    async def edit(self, *, content: str) -> object: ...

    async def delete(self) -> None: ...


class DiscordSurface:
    def __init__(self, origin: discord.Message | discord.Interaction) -> None:
        self._origin = origin

    @property
    def label(self) -> str:
        origin = self._origin
        channel = origin.channel.id if isinstance(origin, discord.Message) else origin.channel_id
        return f"discord:{channel}"

    async def post(self, text: str, index: int) -> Editable:
        origin = self._origin
        if isinstance(origin, discord.Interaction):
            return await origin.followup.send(text, wait=True)
        if index == 0:
            return await origin.channel.send(
                text,
                reference=origin.to_reference(fail_if_not_exists=False),
                mention_author=False,
            )
        return await origin.channel.send(text)

    async def edit(self, handle: Editable, text: str, index: int) -> None:
        await handle.edit(content=text)

    async def delete(self, handle: Editable) -> None:
        await handle.delete()

    async def typing(self, until: asyncio.Event) -> None:
        if isinstance(self._origin, discord.Interaction):
            return  # the deferred response already shows "thinking…"
        # discord.py's context manager repeats the indicator every few seconds until exit.
        async with self._origin.channel.typing():
            await until.wait()

    def classify(self, error: Exception) -> Failure | None:
        if isinstance(error, discord.Forbidden):
            return Failure(Kind.FORBIDDEN, code="403")
        if isinstance(error, discord.DiscordServerError):
            # discord.py retries 500/502/504 itself, not 503: the whole text must arrive.
            return Failure(Kind.RETRY)
        if isinstance(error, discord.HTTPException):  # 429s are waited out by discord.py
            return Failure(Kind.FATAL)
        return None


def discord_reply(
    origin: discord.Message | discord.Interaction,
    *,
    clock: Clock,
    sleep: Sleep = asyncio.sleep,
    edit_interval: float = 1.0,
) -> EditedReply[Editable]:
    return EditedReply(
        DiscordSurface(origin),
        clock=clock,
        sleep=sleep,
        edit_interval=edit_interval,
        limit=DISCORD_LIMIT,
    )
