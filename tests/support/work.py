"""For benchmarks: work shaped like a message's handling, to measure what other work on the
machine does to the bot's chats (bench/pdf.py, bench/ingest_queries.py), and percentiles."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

SENTENCE = "The pressure relief valve opens at four bar and closes again at three point five. "


async def busy() -> float:
    """Milliseconds of a piece of work shaped like a message's handling: pure-Python work
    (counting words) between calls handed to a worker thread and awaited (as aiosqlite runs
    each query)."""
    started = time.perf_counter()
    counts: dict[str, int] = {}
    for _ in range(20):
        for _ in range(20):
            for word in SENTENCE.lower().split():
                counts[word] = counts.get(word, 0) + 1
        await asyncio.to_thread(len, counts)
    return (time.perf_counter() - started) * 1000


async def busy_median(rounds: int) -> float:
    times = []
    for _ in range(rounds):
        times.append(await busy())
        await asyncio.sleep(0.005)
    return statistics.median(times)


async def busy_beside(work: Awaitable[T], rounds: int) -> tuple[float, asyncio.Task[T]]:
    """The median of :func:`busy` over ``rounds`` while ``work`` runs beside it (given
    0.3 s to get under way), and the task still running it: the caller awaits or cancels
    it. Raises when ``work`` ended before the timing did (the figure would be idle's)."""
    task = asyncio.ensure_future(work)
    await asyncio.sleep(0.3)
    median = await busy_median(rounds)
    if task.done():
        await task
        raise RuntimeError("the work beside ended before the timing did: make it longer")
    return median, task


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]
