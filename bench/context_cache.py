"""How much of each prompt llama.cpp serves from its cache: Beseda vs a naive bot.

    python bench/context_cache.py [--turns 200] [--channels 8] [--max-tokens 24]
                                  [--evict-fraction F] [--multichannel-only]

Both run the same scripted conversation on the bundled model with n_ctx 1024, in this
process, one after the other:

- beseda: the real core (SQLite history, block eviction, rolling summaries in the
  background, per-channel state cache), exactly as the agent runs it;
- naive: what most bots do: the date at the top of the system prompt, the oldest message
  dropped on every turn once the window is full, one llama.cpp context for every channel.

Between two messages of a channel the benchmark waits until background work is done, as a
person typing the next message would. The figures count the replies' prompts (the product
metric); the summaries' own prompt evaluation is printed separately and included in
``prompt_eval_tokens_ratio_with_summaries``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.app import build_core
from agent.config import Config, ContextConfig, ModelConfig
from agent.events import Inbound
from agent.generators.base import ChatMessage, SamplingParams, TokenStream
from agent.generators.gguf import bundled_model_path
from agent.generators.llama_cpp import LlamaCppGenerator
from bench.sink import Sink, Wrapped
from memory.db import Database
from memory.history import SqlHistoryStore
from memory.records import Status

N_CTX = 1024
QUESTIONS = [
    "What is a good name for a cat?",
    "How do I boil an egg?",
    "Что посмотреть в Казани?",
    "Give me a tip for learning to play the guitar.",
    "What is the capital of Canada?",
    "Как будет «спасибо» по-английски?",
    "Suggest a short book to read on a train.",
    "Why is the sky blue?",
    "What should I pack for a weekend hike?",
    "Назови три овоща для супа.",
    "How many legs does a spider have?",
    "What is a haiku?",
]


@dataclass
class Tally:
    prompt: int = 0
    cached: int = 0
    turns: int = 0

    def add(self, stream: TokenStream) -> None:
        self.prompt += stream.stats.prompt_tokens
        self.cached += stream.stats.cached_tokens
        self.turns += 1

    @property
    def evaluated(self) -> int:
        return self.prompt - self.cached

    @property
    def reuse(self) -> float:
        return self.cached / self.prompt if self.prompt else 0.0


class CountingGenerator(Wrapped):
    """Passes everything to the real generator and tallies every prompt it evaluates."""

    def __init__(self, inner: LlamaCppGenerator) -> None:
        super().__init__(inner)
        self.replies = Tally()
        self.summaries = Tally()

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        stream = self.inner.stream(messages, params)
        is_summary = messages[0].content.startswith(("You summarise", "Ты кратко"))
        tally = self.summaries if is_summary else self.replies

        async def pieces():  # type: ignore[no-untyped-def]
            async for piece in stream:
                yield piece
            tally.add(stream)

        return TokenStream(pieces(), stream.stats)


def script(turns: int, channels: int) -> list[tuple[int, str]]:
    """(channel, message) in the order they arrive: channels interleaved round-robin.

    Each channel walks the questions from its own starting point: identical conversations
    in every channel would let the naive bot reuse one channel's prompt for the next.
    """
    return [
        (c, f"{QUESTIONS[(t + 5 * c) % len(QUESTIONS)]} (#{t})")
        for i in range(turns)
        for c, t in [(i % channels, i // channels)]
    ]


async def run_beseda(
    turns: int, channels: int, max_tokens: int, evict_fraction: float, data: Path
) -> CountingGenerator:
    model = ModelConfig(n_ctx=N_CTX, n_threads=2, temperature=0.0, max_tokens=max_tokens)
    config = Config(model=model, context=ContextConfig(evict_fraction=evict_fraction))
    cache = config.context.state_cache_mb * 1024 * 1024
    inner = LlamaCppGenerator.load(model, bundled_model_path(), state_cache_bytes=cache)
    generator = CountingGenerator(inner)
    db = Database(f"sqlite+aiosqlite:///{data / f'bench-{channels}.db'}")
    await db.migrate()
    core = build_core(config, SqlHistoryStore(db), generator)
    sink = Sink()
    for channel, text in script(turns, channels):
        inbound = Inbound("bench", f"bench:{channel}", "user", "user", text)
        reply = await (await core.submit(inbound, sink))
        if reply.status is not Status.DONE:
            print(f"turn failed: {reply.error}", file=sys.stderr)
        await core.background.wait_quiet()
    await core.close(5)
    await generator.aclose()
    await db.close()
    return generator


async def run_naive(turns: int, channels: int, max_tokens: int) -> Tally:
    model = ModelConfig(n_ctx=N_CTX, n_threads=2, temperature=0.0, max_tokens=max_tokens)
    generator = LlamaCppGenerator.load(model, bundled_model_path())
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    budget = N_CTX - max_tokens - 32
    histories: dict[int, list[ChatMessage]] = {c: [] for c in range(channels)}
    tally = Tally()
    for channel, text in script(turns, channels):
        history = histories[channel]
        history.append(ChatMessage("user", text))
        while True:
            date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
            system = ChatMessage("system", f"Current date: {date}. You are a helpful assistant.")
            messages = [system, *history]
            if generator.count_prompt_tokens(messages) <= budget or len(history) == 1:
                break
            history.pop(0)  # the oldest message goes, one at a time
        stream = generator.stream(messages, params)
        answer = "".join([piece async for piece in stream]).strip()
        tally.add(stream)
        history.append(ChatMessage("assistant", answer or "…"))
    await generator.aclose()
    return tally


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument(
        "--evict-fraction", type=float, default=ContextConfig().evict_fraction,
        help="share of the history budget evicted at once (default: the configured default)",
    )  # fmt: skip
    parser.add_argument(
        "--multichannel-only", action="store_true", help="skip the single-channel run"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        counts = [args.channels] if args.multichannel_only else [1, args.channels]
        for channels in dict.fromkeys(counts):
            started = time.perf_counter()
            beseda = await run_beseda(
                args.turns, channels, args.max_tokens, args.evict_fraction, data
            )
            naive = await run_naive(args.turns, channels, args.max_tokens)
            suffix = "" if channels == 1 else "_multichannel"
            replies, summaries = beseda.replies, beseda.summaries
            with_summaries = replies.evaluated + summaries.evaluated
            print(
                f"# {args.turns} turns, {channels} channel(s), n_ctx {N_CTX}, "
                f"evict_fraction {args.evict_fraction}: "
                f"beseda evaluated {replies.evaluated} of {replies.prompt} prompt tokens "
                f"(+{summaries.evaluated} for {summaries.turns} summaries), naive "
                f"{naive.evaluated} of {naive.prompt}; {time.perf_counter() - started:.0f} s"
            )
            results = {
                f"prefix_reuse_beseda{suffix}": replies.reuse,
                f"prefix_reuse_naive{suffix}": naive.reuse,
                f"prompt_eval_tokens_ratio{suffix}": naive.evaluated / max(replies.evaluated, 1),
                f"prompt_eval_tokens_ratio_with_summaries{suffix}": naive.evaluated
                / max(with_summaries, 1),
            }
            for name, value in results.items():
                print(f"{name}={value:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
