"""The history as a ledger of platform messages, for adapters that catch up after downtime.

An adapter that can list a channel's messages (Discord) asks, on every new gateway session,
which channels were active recently and where each one's stored history ends, fetches what
came after, and skips what is stored already. The history's unique (channel, platform id)
index is the final word: a message that slips through twice is refused by the database and
never answered twice (see memory/migrations/versions/0007_platform_message_ids.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from agent.ports import ChannelMark
from memory.history import HistoryStore

# A channel counts as active when a message was stored there this recently (or within
# max_age, if that is longer): each one costs a request per catch-up.
ACTIVE_WITHIN = timedelta(days=7)
ACTIVE_CHANNELS = 50


class HistoryLedger:
    def __init__(
        self,
        history: HistoryStore,
        max_age: timedelta,
        *,
        active_within: timedelta = ACTIVE_WITHIN,
        channels: int = ACTIVE_CHANNELS,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._history = history
        self._max_age = max_age
        self._active_within = max(active_within, max_age)
        self._channels = channels
        self._now = now

    @property
    def max_age(self) -> timedelta:
        return self._max_age

    async def active_channels(self, platform: str) -> list[ChannelMark]:
        if self._max_age <= timedelta(0):
            return []
        newest = await self._history.latest_from_platform(
            platform, since=self._now() - self._active_within, limit=self._channels
        )
        return [ChannelMark(m.channel_key, m.platform_message_id, m.created_at) for m in newest]

    async def stored(self, channel_key: str, message_ids: Sequence[str]) -> set[str]:
        return await self._history.known_platform_ids(channel_key, message_ids)
