"""Discord catch-up: what people wrote to the bot while it was away is answered once.

The gateway replays missed events only when a session is resumed. After a downtime, or a
RESUME that failed into a new IDENTIFY, it replays nothing; so on every READY the adapter
asks the history (the :class:`~agent.ports.Ledger` port) which channels were active
recently and where each one's stored history ends, fetches the messages that came after —
at most ``[recovery] max_age_minutes`` old — and hands those not stored yet to its own
intake, oldest first: the same decision as for a live message (addressed? allowed?), but
without the per-user rate limit (they were written over a longer time). Live messages wait
until the catch-up is done, so a channel is answered in order.

Never twice: what is stored already is skipped here, and a message the gateway delivers as
well is refused by the history's unique (channel, platform id) index in the core. A message
the bot has replied to is skipped too, though it is not stored: one that carried only a
document (its reply was the indexing notice) or one refused by the rate limit (its reply
said so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import discord
from discord.utils import time_snowflake

from agent.ports import ChannelMark, Ledger

log = logging.getLogger(__name__)

# Messages read per channel: a channel where more were written while the bot was away
# gets the oldest ones answered (each is a reply of its own).
PER_CHANNEL = 100

Intake = Callable[[discord.Message], Awaitable[None]]


class CatchUp:
    def __init__(self, intake: Intake) -> None:
        self._intake = intake
        self.ledger: Ledger | None = None
        self._task: asyncio.Task[int] | None = None

    def start(self, client: discord.Client) -> None:
        """Catch up in the background (called on every READY: a new session)."""
        if self.ledger is None:
            return
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self.run(client, self.ledger), name="discord:catch-up")

    async def wait(self) -> None:
        """Until a catch-up in progress is done (live messages come after it)."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(task)

    async def cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run(self, client: discord.Client, ledger: Ledger) -> int:
        """Hand the missed messages to the intake, oldest first; how many there were."""
        try:
            marks = await ledger.active_channels("discord")
        except Exception:  # e.g. the database is unavailable: live messages still work
            log.exception("discord: could not catch up on missed messages")
            return 0
        floor = time_snowflake(datetime.now(UTC) - ledger.max_age)
        missed: list[discord.Message] = []
        for mark in marks:
            try:
                missed.extend(await self._missed(client, ledger, mark, floor))
            except Exception:  # one channel must not cost the others their catch-up
                log.exception("discord: could not catch up in %s", mark.channel_key)
        missed.sort(key=lambda m: m.id)
        if missed:
            log.info("discord: catching up on %d missed messages", len(missed))
        for message in missed:
            await self._intake(message)
        return len(missed)

    async def _missed(
        self, client: discord.Client, ledger: Ledger, mark: ChannelMark, floor: int
    ) -> list[discord.Message]:
        """The channel's messages after the last one stored (and after ``floor``) that are
        not stored yet and that the bot has not replied to."""
        channel_id = int(mark.channel_key.removeprefix("discord:"))
        last = mark.message_id or ""
        # A slash command's id ("interaction:…") is no message: start from its time then.
        after = max(int(last) if last.isdigit() else time_snowflake(mark.at), floor)
        try:
            channel = client.get_channel(channel_id) or await client.fetch_channel(channel_id)
            if not isinstance(channel, discord.abc.Messageable):
                return []
            messages = [
                m
                async for m in channel.history(
                    limit=PER_CHANNEL, after=discord.Object(after), oldest_first=True
                )
            ]
        except discord.HTTPException as exc:  # gone, or no Read Message History permission
            log.warning("discord: cannot catch up in %s: %s", mark.channel_key, exc)
            return []
        stored = await ledger.stored(mark.channel_key, [str(m.id) for m in messages])
        me = client.user
        replied = {
            m.reference.message_id
            for m in messages
            if me is not None and m.author.id == me.id and m.reference is not None
        }
        return [m for m in messages if str(m.id) not in stored and m.id not in replied]
