"""A reply target that shows nothing: the benchmarks measure Beseda, not a platform."""

from __future__ import annotations

import sys

from agent.events import Inbound


class Sink:
    async def open_reply(self, inbound: Inbound) -> Sink:
        return self

    async def push(self, delta: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        return None

    async def fail(self, notice: str) -> None:
        print(f"reply failed: {notice}", file=sys.stderr)
