"""A per-channel cache of ChannelState for the history store (not the model-state cache
of agent/generators/state_cache.py).

Every message reads its channel's state twice (the history window, the persona choice) and
it changes only when a window moves, a summary is stored, the channel is reset or a persona
is chosen or greets: rarely. The store drops a channel's entry after each of those writes
commits, so a read never returns a state older than the last write made through it.

A read that was in flight while a write committed may have read the old state: it is not
cached (a per-channel write counter tells). Like the channel-id cache next to it, this
assumes the store is the only writer of its channels' rows, as one Beseda process per
database is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")

# Channels remembered at most; past that the cache starts afresh (a cheap bound).
MAX_CHANNELS = 10_000


class ChannelCache(Generic[T]):
    def __init__(self, max_channels: int = MAX_CHANNELS) -> None:
        self._max = max_channels
        self._values: dict[str, T] = {}
        # Writes committed per channel; a read caches only if none committed meanwhile.
        # Never trimmed (an int per channel, like the store's channel ids): forgetting a
        # count could let a racing read cache what it read before the write.
        self._writes: dict[str, int] = {}

    async def read(self, key: str, load: Callable[[], Awaitable[T | None]]) -> T | None:
        """The cached value, else ``load()`` (cached unless it is None or a write raced)."""
        if key in self._values:
            return self._values[key]
        writes = self._writes.get(key, 0)
        value = await load()
        if value is not None and self._writes.get(key, 0) == writes:
            if len(self._values) >= self._max:
                self._values.clear()
            self._values[key] = value
        return value

    def writes(self) -> dict[str, int]:
        """A snapshot of the write counts, to take before a bulk read (see ``fill``)."""
        return dict(self._writes)

    def fill(self, values: Mapping[str, T], writes: Mapping[str, int]) -> int:
        """Cache values read in bulk; ``writes``: the ``writes()`` snapshot taken before the
        read. A key written since, or already cached, is skipped (it may be newer than what
        was read). Stops when the cache is full. Returns how many were cached."""
        cached = 0
        for key, value in values.items():
            if len(self._values) >= self._max:
                break
            if key not in self._values and self._writes.get(key, 0) == writes.get(key, 0):
                self._values[key] = value
                cached += 1
        return cached

    def written(self, key: str, change: Callable[[T], T | None] | None = None) -> None:
        """Call after a write to ``key``'s state has committed (or failed).

        The cached value is dropped, unless ``change`` (given only for a write known to have
        committed) says what the write made of it: then the changed value is kept, and the
        next read needs no query. ``change`` returns None when it cannot tell.
        """
        old = self._values.pop(key, None)
        self._writes[key] = self._writes.get(key, 0) + 1
        new = change(old) if change is not None and old is not None else None
        if new is not None:
            self._values[key] = new

    def clear(self) -> None:
        self._values.clear()

    @contextmanager
    def writing(self, key: str) -> Iterator[None]:
        """Wrap a write to ``key``'s state (its transaction inside): drops the entry after."""
        try:
            yield
        finally:
            self.written(key)
