"""Prefix reuse in a group chat: the same conversation with one speaker and with several.

    python bench/context_cache_group.py [--turns 200] [--channels 1] [--speakers 3]
                                        [--max-tokens 24] [--threads 2] [--join-at 0]

Runs one scripted conversation twice through Beseda's real core on the bundled model
(n_ctx 1024, the default configuration, so ``[chat] speaker_names = "auto"``), in this
process: once with every message from one person, once with the messages of each channel
taking turns among ``--speakers`` people, so names come on (after the second person's
first message) and every user turn carries ``Name: ``. Prints the share of reply-prompt
tokens served from llama.cpp's cache for both, and their difference (the target: within
0.02). With ``--join-at N`` the others join only at each channel's N-th message, so names
come on late, over a full window (the one re-evaluation "auto" costs). The group mode of
bench/context_cache.py, kept apart while that benchmark is rewritten.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import Config, ContextConfig, ModelConfig
from agent.events import Inbound
from agent.generators.base import ChatMessage, SamplingParams, TokenStream
from agent.generators.gguf import bundled_model_path
from agent.generators.llama_cpp import LlamaCppGenerator
from agent.wiring import build_core
from bench.sink import Sink, Wrapped
from memory.db import Database
from memory.history import SqlHistoryStore
from memory.records import Status

N_CTX = 1024
PEOPLE = ("Alice", "Bob", "Carol", "Dmitri")
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


class Counting(Wrapped):
    """Tallies the prompt and cached tokens of replies (summaries are not counted)."""

    def __init__(self, inner: LlamaCppGenerator) -> None:
        super().__init__(inner)
        self.prompt = self.cached = 0

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        stream = self.inner.stream(messages, params)
        if messages[0].content.startswith(("You summarise", "Ты кратко")):
            return stream

        async def pieces():  # type: ignore[no-untyped-def]
            async for piece in stream:
                yield piece
            self.prompt += stream.stats.prompt_tokens
            self.cached += stream.stats.cached_tokens

        return TokenStream(pieces(), stream.stats)

    @property
    def reuse(self) -> float:
        return self.cached / self.prompt if self.prompt else 0.0


async def run(args: argparse.Namespace, speakers: int, data: Path) -> tuple[Counting, int]:
    """The conversation with ``speakers`` people per channel; the generator's tallies and
    how many channels switched names on."""
    turns, channels = args.turns, args.channels
    model = ModelConfig(
        n_ctx=N_CTX, n_threads=args.threads, temperature=0.0, max_tokens=args.max_tokens
    )
    config = Config(model=model, context=ContextConfig())
    cache = config.context.state_cache_mb * 1024 * 1024
    inner = LlamaCppGenerator.load(model, bundled_model_path(), state_cache_bytes=cache)
    generator = Counting(inner)
    db = Database(f"sqlite+aiosqlite:///{data / f'group-{speakers}.db'}")
    await db.migrate()
    history = SqlHistoryStore(db)
    core = build_core(config, history, generator)
    sink = Sink()
    for i in range(turns):
        channel, t = i % channels, i // channels
        person = PEOPLE[(t + channel) % speakers] if t >= args.join_at else PEOPLE[0]
        text = f"{QUESTIONS[(t + 5 * channel) % len(QUESTIONS)]} (#{t})"
        inbound = Inbound("bench", f"bench:{channel}", person.lower(), person, text)
        reply = await (await core.submit(inbound, sink))
        if reply.status is not Status.DONE:
            print(f"turn failed: {reply.error}", file=sys.stderr)
        await core.background.wait_quiet()
    named = [(await history.channel_state(f"bench:{c}")).speaker_names for c in range(channels)]
    await core.close(5)
    await generator.aclose()
    await db.close()
    return generator, sum(named)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--speakers", type=int, default=3, choices=range(2, len(PEOPLE) + 1))
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--join-at", type=int, default=0, help="others join at this turn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        single, _ = await run(args, 1, Path(folder))
        group, named = await run(args, args.speakers, Path(folder))
    print(
        f"# {args.turns} turns, {args.channels} channel(s), {args.speakers} speakers "
        f"(from turn {args.join_at}), "
        f"n_ctx {N_CTX}: single evaluated {single.prompt - single.cached} of {single.prompt} "
        f"prompt tokens, group {group.prompt - group.cached} of {group.prompt}; "
        f"{time.perf_counter() - started:.0f} s"
    )
    print(f"prefix_reuse_single={single.reuse:.3f}")
    print(f"prefix_reuse_group={group.reuse:.3f}")
    print(f"prefix_reuse_group_minus_single={group.reuse - single.reuse:+.3f}")
    print(f"channels_with_names={named}")


if __name__ == "__main__":
    asyncio.run(main())
