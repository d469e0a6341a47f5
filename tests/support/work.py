"""Work shaped like a message's handling, for benchmarks that measure what other work on the
machine does to the bot's chats (bench/pdf.py, bench/ingest_queries.py)."""

from __future__ import annotations

import asyncio
import statistics
import time

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
