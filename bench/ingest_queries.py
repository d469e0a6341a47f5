"""What indexing one chat's document costs the other chats: their query embeddings wait
for the embedder, and their handling for the interpreter lock.

    python bench/ingest_queries.py [--paragraphs 6000]

The default embedder (``use``) embeds one thing at a time. A document sent to one chat is
embedded in batches; a message in another chat needs its query embedded meanwhile.
memory/embeddings.py gives a waiting query the next turn and embeds passages
PASSAGES_PER_TURN at a time, so a query waits for one small batch, not a whole ingest batch.

Figures (query embeddings every 50 ms, timed from the call to the vector):

- ``query_p50_ms_idle``/``query_p95_ms_idle``: with nothing else running (the baseline);
- ``query_p50_ms_ingest``/``query_p95_ms_ingest``/``query_max_ms_ingest``: while a Russian and
  English text of ``--paragraphs`` paragraphs (6000: 1,500 chunks) is ingested;
- ``query_p95_ingest_over_idle``: the ratio;
- ``ingest_seconds_quiet``: the same text ingested before any query (no chat going on:
  whole batches), ``ingest_seconds_during_queries`` the ingest above (small batches), and
  ``ingest_during_queries_over_quiet`` their ratio;
- ``busy_ms_idle``: the median time of work shaped like a message's handling
  (tests/support/work.py) with nothing else running; ``busy_ms_chunking_default``/
  ``busy_ms_chunking_run`` the same while three times that text is chunked on a worker
  thread (pure Python: the embedder's tokenizer), with Python's default switch interval
  (5 ms) and with the one ``run`` sets (agent/app.py, ``share_the_interpreter``), and
  ``busy_chunking_default_over_idle``/``busy_chunking_run_over_idle`` the ratios;
  ``chunking_seconds_default``/``chunking_seconds_run`` how long the chunking took.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.app import SWITCH_INTERVAL
from memory.documents import DocumentIndex, Page, chunk_pages
from memory.embeddings import Embedder, load_embedder
from memory.vectors import ChromaStore, open_client
from tests.support.work import busy_beside, busy_median, percentile

QUESTION = "какое давление открывает клапан?"


async def query_times(embedder: Embedder, stop: asyncio.Event) -> list[float]:
    times = []
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.to_thread(embedder.embed_query, QUESTION)
        times.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.05)
    return times


async def busy_while_chunking(
    embedder: Embedder, text: str, interval: float
) -> tuple[float, float]:
    """The median of the message-shaped work while ``text`` is chunked on a thread, and the
    chunking's seconds, with the interpreter's switch interval at ``interval``."""
    default = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        started = time.perf_counter()
        chunking = asyncio.to_thread(
            chunk_pages, [Page(0, text)], embedder.count_tokens, max_tokens=200, overlap_tokens=40
        )
        busy, task = await busy_beside(chunking, 10)
        await task
        return busy, time.perf_counter() - started
    finally:
        sys.setswitchinterval(default)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paragraphs", type=int, default=6000)
    args = parser.parse_args()
    embedder = load_embedder("use")
    embedder.embed_passages(["warm up"])  # loads the model; no query yet: no chat going on
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "documents"
        folder.mkdir()
        text = "\n\n".join(
            f"Абзац {n}: клапан открывается при давлении {n % 9} бар и закрывается при "
            f"меньшем. Paragraph {n}: the valve opens at {n % 7} bar and closes below it."
            for n in range(args.paragraphs)
        )
        (folder / "manual.txt").write_text(text, encoding="utf-8")
        client = open_client(Path(tmp) / "chroma")
        started = time.perf_counter()
        await DocumentIndex(ChromaStore(client, "quiet", embedder)).ingest(folder)
        quiet = time.perf_counter() - started

        stop = asyncio.Event()
        idle_task = asyncio.ensure_future(query_times(embedder, stop))
        await asyncio.sleep(3)
        stop.set()
        idle = await idle_task

        stop = asyncio.Event()
        during_task = asyncio.ensure_future(query_times(embedder, stop))
        started = time.perf_counter()
        report = await DocumentIndex(ChromaStore(client, "documents", embedder)).ingest(folder)
        seconds = time.perf_counter() - started
        stop.set()
        during = await during_task
    print(f"chunks={report.chunks}")
    print(f"ingest_seconds_quiet={quiet:.1f}")
    print(f"ingest_seconds_during_queries={seconds:.1f}")
    print(f"ingest_during_queries_over_quiet={seconds / quiet:.2f}")
    print(f"query_p50_ms_idle={statistics.median(idle):.1f}")
    print(f"query_p95_ms_idle={percentile(idle, 0.95):.1f}")
    print(f"query_p50_ms_ingest={statistics.median(during):.1f}")
    print(f"query_p95_ms_ingest={percentile(during, 0.95):.1f}")
    print(f"query_max_ms_ingest={max(during):.1f}")
    print(f"query_p95_ingest_over_idle={percentile(during, 0.95) / percentile(idle, 0.95):.1f}")

    idle_work = await busy_median(10)
    default_work, default_seconds = await busy_while_chunking(embedder, text * 3, 0.005)
    run_work, run_seconds = await busy_while_chunking(embedder, text * 3, SWITCH_INTERVAL)
    print(f"busy_ms_idle={idle_work:.2f}")
    print(f"busy_ms_chunking_default={default_work:.1f}")
    print(f"busy_ms_chunking_run={run_work:.1f}")
    print(f"busy_chunking_default_over_idle={default_work / idle_work:.1f}")
    print(f"busy_chunking_run_over_idle={run_work / idle_work:.1f}")
    print(f"chunking_seconds_default={default_seconds:.1f}")
    print(f"chunking_seconds_run={run_seconds:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
