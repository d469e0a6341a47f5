"""Generation slots shared by every channel: at most ``slots`` replies generate at once.

Each channel's worker asks for a slot before it builds a prompt and generates; a channel
never holds more than one slot or waits for more than one. Waiting channels are granted in
the order they asked, and a channel that has just been served asks again only after its
reply is done, so it goes to the back of the line: round-robin, one reply per channel per
turn of the wheel, however many messages a noisy channel has queued.

Background work (summaries, memory extraction) does not take slots: :class:`Background`
runs it only while no reply is queued or generating, which puts replies first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator


class Scheduler:
    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a scheduler needs at least one slot")
        self.slots = slots
        self._free = slots
        self._waiting: OrderedDict[str, asyncio.Future[None]] = OrderedDict()

    @property
    def busy(self) -> int:
        """Slots in use now."""
        return self.slots - self._free

    def waiting(self) -> list[str]:
        """Channels waiting for a slot, next first."""
        return list(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, channel_key: str) -> AsyncIterator[None]:
        """Hold one generation slot for ``channel_key`` while the block runs."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            if channel_key in self._waiting:
                raise RuntimeError(f"{channel_key} is already waiting for a slot")
            granted = asyncio.get_running_loop().create_future()
            self._waiting[channel_key] = granted
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted just as we were cancelled: pass it on
                else:
                    self._waiting.pop(channel_key, None)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _key, granted = self._waiting.popitem(last=False)
            if not granted.done():
                granted.set_result(None)  # the slot passes straight to the next channel
                return
        self._free += 1
