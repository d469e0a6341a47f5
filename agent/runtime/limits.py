"""Token-bucket rate limits per user and per channel, checked when a message arrives.

A bucket holds up to ``burst`` tokens and refills at ``per_minute``; each message takes one.
Over the limit, the message is still stored (as skipped) and the person is told once per
episode; the notice flag clears when their bucket lets a message through again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Clock = Callable[[], float]
Verdict = Literal["ok", "notice", "quiet"]


@dataclass(slots=True)
class TokenBucket:
    burst: int
    per_minute: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_minute / 60)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Buckets:
    """One bucket per key, created full; ``burst == 0`` or ``per_minute == 0`` is no limit."""

    # Buckets that have refilled completely carry no information; past this many keys the
    # full ones are dropped, so a stream of one-off users cannot grow memory without bound.
    PRUNE_AT = 10_000

    def __init__(self, burst: int, per_minute: float, clock: Clock = time.monotonic) -> None:
        self._burst = burst
        self._per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._noticed: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self._burst > 0 and self._per_minute > 0

    def check(self, key: str) -> Verdict:
        if not self.enabled:
            return "ok"
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(
                self._burst, self._per_minute, self._burst, now
            )
        if bucket.take(now):
            self._noticed.discard(key)
            return "ok"
        if key in self._noticed:
            return "quiet"
        self._noticed.add(key)
        return "notice"

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            refilled = bucket.tokens + (now - bucket.stamp) * self._per_minute / 60
            if refilled >= self._burst:
                del self._buckets[key]
                self._noticed.discard(key)


def per_window(messages: int, seconds: float, clock: Clock = time.monotonic) -> Buckets:
    """A platform's per-user limit: ``messages`` at once, refilled at that many per
    ``seconds`` (``[discord]``/``[matrix]`` rate_limit_messages and rate_limit_seconds)."""
    return Buckets(messages, messages * 60 / seconds, clock)
