"""Rendering one answer on Discord: typing, streaming by throttled edits, splitting, failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import discord

from adapters.split import DISCORD_LIMIT, split_message

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
FINAL_ATTEMPTS = 4


class Editable(Protocol):
    async def edit(self, *, content: str) -> object: ...

    async def delete(self) -> None: ...


class Sink(Protocol):
    """Where an answer goes: a channel (replying to a message) or a slash-command interaction."""

    @property
    def label(self) -> str: ...

    async def send(self, content: str, *, first: bool) -> Editable: ...

    async def typing(self, until: asyncio.Event) -> None: ...


class MessageSink:
    """Answers a message: the first chunk replies to it, the rest follow in its channel."""

    def __init__(self, message: discord.Message) -> None:
        self._message = message

    @property
    def label(self) -> str:
        return f"discord:{self._message.channel.id}"

    async def send(self, content: str, *, first: bool) -> Editable:
        channel = self._message.channel
        if first:
            return await channel.send(
                content,
                reference=self._message.to_reference(fail_if_not_exists=False),
                mention_author=False,
            )
        return await channel.send(content)

    async def typing(self, until: asyncio.Event) -> None:
        # discord.py's context manager repeats the indicator every few seconds until exit.
        async with self._message.channel.typing():
            await until.wait()


class InteractionSink:
    """Answers a deferred slash command through its follow-up webhook."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self._interaction = interaction

    @property
    def label(self) -> str:
        return f"discord:{self._interaction.channel_id}"

    async def send(self, content: str, *, first: bool) -> Editable:
        return await self._interaction.followup.send(content, wait=True)

    async def typing(self, until: asyncio.Event) -> None:
        return None  # the deferred response already shows "thinking…"


class DiscordReply:
    """A ReplyStream: first tokens post a message, later tokens edit it (throttled)."""

    def __init__(
        self,
        sink: Sink,
        *,
        clock: Clock,
        edit_interval: float = 1.0,
        limit: int = DISCORD_LIMIT,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._sleep = sleep
        self._interval = edit_interval
        self._limit = limit
        self._buffer = ""
        self._shown: list[tuple[Editable, str]] = []
        self._last_render = -math.inf
        self._forbidden = False
        self._done = asyncio.Event()
        self._typing = asyncio.create_task(self._type(), name=f"typing:{sink.label}")

    async def push(self, delta: str) -> None:
        self._buffer += delta
        text = self._buffer.strip()
        if self._forbidden or not text or self._clock() - self._last_render < self._interval:
            return
        self._last_render = self._clock()
        try:
            await self._render(text)
        except discord.Forbidden:
            self._skip_forbidden()
        except discord.HTTPException as exc:  # the final render tries again
            log.warning("could not update a reply in %s: %s", self._sink.label, exc)

    async def finish(self, text: str) -> None:
        await self._stop_typing()
        for attempt in range(FINAL_ATTEMPTS):
            if self._forbidden:
                return
            try:
                await self._render(text, final=True)
                return
            except discord.Forbidden:
                self._skip_forbidden()
            except discord.DiscordServerError as exc:
                # discord.py retries 500/502/504 itself, not 503: the whole text must arrive.
                if attempt == FINAL_ATTEMPTS - 1:
                    raise
                log.warning("Discord error in %s, retrying the reply: %s", self._sink.label, exc)
                await self._sleep(2.0**attempt)

    async def fail(self, notice: str) -> None:
        await self._stop_typing()
        if self._forbidden:
            return
        try:
            await self._sink.send(notice, first=not self._shown)
        except discord.Forbidden:
            self._skip_forbidden()

    async def _render(self, text: str, *, final: bool = False) -> None:
        chunks = split_message(text, self._limit)
        for index, chunk in enumerate(chunks):
            if index < len(self._shown):
                message, shown = self._shown[index]
                if shown != chunk:
                    await message.edit(content=chunk)
                    self._shown[index] = (message, chunk)
            else:
                message = await self._sink.send(chunk, first=index == 0)
                self._shown.append((message, chunk))
        if final:
            # A streamed draft can have spilled over further than the final text.
            for message, _ in self._shown[len(chunks) :]:
                with contextlib.suppress(discord.HTTPException):
                    await message.delete()
            del self._shown[len(chunks) :]

    def _skip_forbidden(self) -> None:
        self._forbidden = True
        log.warning("missing permissions to answer in %s (403): skipped", self._sink.label)

    async def _type(self) -> None:
        try:
            await self._sink.typing(self._done)
        except discord.HTTPException as exc:  # e.g. no permission to type: answer anyway
            log.debug("no typing indicator in %s: %s", self._sink.label, exc)

    async def _stop_typing(self) -> None:
        self._done.set()
        await asyncio.wait({self._typing}, timeout=5)
