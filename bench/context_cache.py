"""How much of each prompt llama.cpp serves from its cache: Beseda vs a naive bot.

    python bench/context_cache.py [--turns 200] [--channels 8] [--max-tokens 24]
                                  [--evict-fraction F] [--multichannel-only]
                                  [--realistic-only | --plain-only] [--realistic-turns 40]

Both run the same scripted conversation on the bundled model with n_ctx 1024, in this
process, one after the other:

- beseda: the real core (SQLite history, block eviction, rolling summaries in the
  background, per-channel state cache), exactly as the agent runs it;
- naive: what most bots do: the date at the top of the system prompt, the oldest message
  dropped on every turn once the window is full, one llama.cpp context for every channel.

- old: the same core on bench/legacy_engine.py, the engine before the multi-sequence one
  (one context, whole-context snapshots, prefix reuse only).

The realistic mode runs the whole app (App.open, ``n_ctx`` 4096) with documents (the
bilingual corpus in tests/data/retrieval, ingested on start), memories (a few per channel)
and a persona with a lorebook all on: every other message asks about the documents, and
some name a lore key. It runs with 1 and 8 channels, for the new and the old engine, and prints
``evaluated_over_new_documents`` (evaluated prompt tokens ÷ the tokens that are new in each
reply's prompt: the last user turn with its volatile block and the template tokens around
it, summed over the run; 1.0 is the physical limit), ``prefix_reuse_documents`` (the share of
prompt tokens served from the cache, prefix and shifted runs), ``_multichannel`` variants and
``_old`` for the old engine. The default run prints both modes. With ``LLAMA_SERVER`` naming
a llama-server binary, the realistic mode also runs through Beseda's OpenAI-compatible
backend against it (``-np`` = the default ``[model] parallel``, ``--cache-reuse 16``; its
evaluated tokens from its /metrics) and prints ``_llama_server`` figures and
``evaluated_documents_vs_llama_server`` (Beseda's evaluated tokens ÷ the server's).

Between two messages of a channel the benchmark waits until background work is done, as a
person typing the next message would. The figures count the replies' prompts (the product
metric); the summaries' own prompt evaluation is printed separately and included in
``prompt_eval_tokens_ratio_with_summaries``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.app import App, build_core
from agent.config import Config, ContextConfig, ModelConfig
from agent.events import Inbound
from agent.generators.base import ChatMessage, Generator, SamplingParams, TokenStream
from agent.generators.gguf import bundled_model_path
from agent.generators.kv_reuse import common_prefix
from agent.generators.llama_cpp import LlamaCppGenerator
from agent.generators.openai_compat import OpenAICompatGenerator
from bench.legacy_engine import LegacyLlamaCppGenerator
from bench.sink import Sink, Wrapped
from memory.db import Database
from memory.history import SqlHistoryStore
from memory.records import Status

N_CTX = 1024
# The realistic mode runs with the default context: a 1,000-token volatile block (the
# default [retrieval] max_tokens) in a 1,024-token window would leave no history at all.
REALISTIC_N_CTX = ModelConfig().n_ctx
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "tests" / "data" / "retrieval"
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
    cached: int = 0  # the common prefix and shifted runs: everything not evaluated
    shifted: int = 0
    new: int = 0
    turns: int = 0

    def add(self, stream: TokenStream, new: int = 0) -> None:
        self.prompt += stream.stats.prompt_tokens
        self.cached += stream.stats.cached_tokens + stream.stats.shifted_tokens
        self.shifted += stream.stats.shifted_tokens
        self.new += new
        self.turns += 1

    @property
    def over_new(self) -> float:
        return self.evaluated / self.new if self.new else 0.0

    @property
    def evaluated(self) -> int:
        return self.prompt - self.cached

    @property
    def reuse(self) -> float:
        return self.cached / self.prompt if self.prompt else 0.0


class CountingGenerator(Wrapped):
    """Passes everything to the real generator and tallies every prompt it evaluates."""

    def __init__(
        self,
        inner: LlamaCppGenerator | LegacyLlamaCppGenerator | Generator,
        tokens: Callable[[Sequence[ChatMessage]], list[int]] | None = None,
        server: LlamaServer | None = None,
    ) -> None:
        super().__init__(inner)
        # exactly what the engine evaluates; a server's prompts are tokenised here the same way
        self.tokens = tokens or inner._prompt_tokens  # type: ignore[union-attr] # noqa: SLF001
        self.server = server
        self.replies = Tally()
        self.summaries = Tally()

    def new_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the prompt after what the earlier messages render to: the last user
        turn with its volatile block, and the template tokens around it."""
        whole = self.tokens(messages)
        return len(whole) - common_prefix(whole, self.tokens(messages[:-1]))

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        stream = self.inner.stream(messages, params)
        is_summary = messages[0].content.startswith(("You summarise", "Ты кратко"))
        tally = self.summaries if is_summary else self.replies
        new = 0 if is_summary else self.new_tokens(messages)

        async def pieces():  # type: ignore[no-untyped-def]
            before = await self.server.evaluated() if self.server else 0
            async for piece in stream:
                yield piece
            if self.server:  # the server's own count: prompt tokens it did not take from cache
                evaluated = await self.server.evaluated() - before
                stream.stats.prompt_tokens = len(self.tokens(messages))
                stream.stats.cached_tokens = stream.stats.prompt_tokens - evaluated
            tally.add(stream, new)

        return TokenStream(pieces(), stream.stats)


SERVER_ARGS = "LLAMA_SERVER_ARGS"


class LlamaServer:
    """llama.cpp's own server on the bundled model (``LLAMA_SERVER`` names the binary), with
    ``--cache-reuse`` as the issue's anchor ran it, and any ``LLAMA_SERVER_ARGS`` (such as
    ``-kvu``, one KV buffer for all slots as Beseda's engine has); ``evaluated`` reads its
    /metrics."""

    def __init__(
        self, binary: str, slots: int, n_ctx: int, *, port: int = 18100, threads: int = 2
    ) -> None:
        self.binary, self.slots, self.n_ctx, self.port = binary, slots, n_ctx, port
        self.threads = threads
        self.url = f"http://127.0.0.1:{port}"
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> LlamaServer:
        self.process = await asyncio.create_subprocess_exec(
            self.binary, "-m", str(bundled_model_path()), "--port", str(self.port),
            "-c", str(self.n_ctx * self.slots), "-np", str(self.slots), "--cache-reuse", "16",
            "--metrics", "-t", str(self.threads), *shlex.split(os.environ.get(SERVER_ARGS, "")),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(300):
            try:
                await self.evaluated()
                return self
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.binary} did not start")

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            await self.process.wait()

    async def evaluated(self) -> int:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as r:
            r.raise_for_status()
            for line in (await r.text()).splitlines():
                if line.startswith("llamacpp:prompt_tokens_total "):
                    return int(float(line.split()[1]))
        raise RuntimeError("llama-server's /metrics has no llamacpp:prompt_tokens_total")


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


def load_engine(kind: str, config: Config) -> LlamaCppGenerator | LegacyLlamaCppGenerator:
    cache = config.context.state_cache_mb * 1024 * 1024
    if kind == "old":
        return LegacyLlamaCppGenerator.load(
            config.model, bundled_model_path(), state_cache_bytes=cache
        )
    return LlamaCppGenerator.load(
        config.model,
        bundled_model_path(),
        state_cache_bytes=cache,
        reuse_min_tokens=config.context.reuse_min_tokens,
    )


async def run_beseda(
    turns: int, channels: int, max_tokens: int, evict_fraction: float, data: Path,
    *, kind: str = "new",
) -> CountingGenerator:  # fmt: skip
    model = ModelConfig(n_ctx=N_CTX, n_threads=2, temperature=0.0, max_tokens=max_tokens)
    config = Config(model=model, context=ContextConfig(evict_fraction=evict_fraction))
    generator = CountingGenerator(load_engine(kind, config))
    db = Database(f"sqlite+aiosqlite:///{data / f'bench-{kind}-{channels}.db'}")
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
    # One context for every channel, as most bots have: the engine before Beseda's own,
    # without its state cache.
    generator = CountingGenerator(LegacyLlamaCppGenerator.load(model, bundled_model_path()))
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
        tally.add(stream, generator.new_tokens(messages))
        history.append(ChatMessage("assistant", answer or "…"))
    await generator.aclose()
    return tally


LORE = [
    {
        "keys": ["Kazan", "Казань", "Казани"],
        "content": "Kazan is the capital of Tatarstan, on the Volga; its kremlin is a UNESCO site.",
    },
    {
        "keys": ["guitar", "гитара"],
        "content": "Ivan, the channel's regular, has played classical guitar for ten years.",
    },
    {"keys": ["cat", "кот"], "content": "The channel's mascot is a grey cat called Pirozhok."},
]
MEMORIES = [
    "The user is learning Russian and asks many questions about Russian culture.",
    "The user lives in Kazan and likes long walks by the Volga.",
    "The user's favourite drink is tea with lemon.",
]


def realistic_config(data: Path, max_tokens: int) -> Config:
    card = {
        "name": "Beseda",
        "system_prompt": "You are Beseda, a friendly and concise assistant. Answer in the "
        "language of the user's last message, using the notes you are given.",
        "lorebook": {"entries": LORE},
    }
    return Config.model_validate(
        {
            "storage": {"data_dir": str(data)},
            "model": {
                "n_ctx": REALISTIC_N_CTX,
                "n_threads": 2,
                "temperature": 0.0,
                "max_tokens": max_tokens,
            },
            "documents": {"path": str(DOCS / "docs"), "ingest_on_start": True},
            "personas": {"default": "bench", "cards": {"bench": card}},
        }
    )


def realistic_script(turns: int, channels: int) -> list[tuple[int, str]]:
    """Every other message asks about the documents (ru and en); the others are small talk,
    some of it naming a lore key."""
    documents = [q["question"] for q in json.loads((DOCS / "questions.json").read_text())]
    chat = [*QUESTIONS, "I got a new cat today!", "Any tips for playing guitar in Kazan?"]
    messages = []
    for i in range(turns):
        c, t = i % channels, i // channels
        pool = documents if t % 2 == 0 else chat
        messages.append((c, f"{pool[(t // 2 + 3 * c) % len(pool)]} (#{t})"))
    return messages


async def run_realistic(
    kind: str, turns: int, channels: int, max_tokens: int, data: Path, *, server: str = ""
) -> CountingGenerator:
    config = realistic_config(data / f"{kind}-{channels}", max_tokens)
    async with contextlib.AsyncExitStack() as stack:
        if kind == "llama-server":
            llama_server = await stack.enter_async_context(
                LlamaServer(server, ModelConfig().parallel, config.model.n_ctx)
            )
            remote_model = config.model.model_copy(
                update={"backend": "openai", "base_url": llama_server.url,
                        "concurrency": ModelConfig().parallel},
            )  # fmt: skip
            config = config.model_copy(update={"model": remote_model})
            local = LlamaCppGenerator.load(
                ModelConfig(n_ctx=config.model.n_ctx, parallel=1), bundled_model_path()
            )
            stack.push_async_callback(local.aclose)
            remote = OpenAICompatGenerator(config.model)
            await remote.start()
            generator = CountingGenerator(remote, local._prompt_tokens, llama_server)  # noqa: SLF001
        else:
            generator = CountingGenerator(load_engine(kind, config))
        sink = Sink()
        app = await stack.enter_async_context(App.open(config, generator))
        assert app.knowledge is not None, "retrieval is off"
        for c in range(channels):
            for memory in MEMORIES:
                await app.knowledge.memories.remember(f"bench:{c}", memory)
        for channel, text in realistic_script(turns, channels):
            inbound = Inbound("bench", f"bench:{channel}", "user", "user", text)
            reply = await (await app.core.submit(inbound, sink))
            if reply.status is not Status.DONE:
                print(f"turn failed: {reply.error}", file=sys.stderr)
            await app.core.background.wait_quiet()
    return generator


async def realistic(args: argparse.Namespace, data: Path) -> None:
    server = os.environ.get("LLAMA_SERVER", "")
    kinds = ("new", "old", "llama-server") if server else ("new", "old")
    for channels in dict.fromkeys([1, args.channels]):
        suffix = "" if channels == 1 else "_multichannel"
        evaluated: dict[str, int] = {}
        for kind in kinds:
            started = time.perf_counter()
            run = await run_realistic(
                kind, args.realistic_turns, channels, args.max_tokens, data, server=server
            )
            replies = run.replies
            evaluated[kind] = replies.evaluated
            print(
                f"# documents, memories and lore on, {args.realistic_turns} turns, {channels} "
                f"channel(s), {kind} engine: evaluated {replies.evaluated} of "
                f"{replies.prompt} prompt tokens ({replies.shifted} shifted into place), "
                f"{replies.new} new; {time.perf_counter() - started:.0f} s"
            )
            tail = {"new": "", "old": "_old", "llama-server": "_llama_server"}[kind]
            print(f"evaluated_over_new_documents{suffix}{tail}={replies.over_new:.3f}")
            print(f"prefix_reuse_documents{suffix}{tail}={replies.reuse:.3f}")
        if server:
            ratio = evaluated["new"] / max(evaluated["llama-server"], 1)
            print(f"evaluated_documents_vs_llama_server{suffix}={ratio:.3f}")


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
    parser.add_argument("--realistic-turns", type=int, default=40)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--realistic-only", action="store_true", help="documents on only")
    mode.add_argument("--plain-only", action="store_true", help="documents off only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        if not args.plain_only:
            await realistic(args, data)
        if args.realistic_only:
            return
        counts = [args.channels] if args.multichannel_only else [1, args.channels]
        for channels in dict.fromkeys(counts):
            started = time.perf_counter()
            beseda = await run_beseda(
                args.turns, channels, args.max_tokens, args.evict_fraction, data
            )
            old = await run_beseda(
                args.turns, channels, args.max_tokens, args.evict_fraction, data, kind="old"
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
                f"prefix_reuse_beseda_old{suffix}": old.replies.reuse,
                f"evaluated_over_new_beseda{suffix}": replies.over_new,
                f"evaluated_over_new_beseda_old{suffix}": old.replies.over_new,
                f"evaluated_over_new_naive{suffix}": naive.over_new,
                f"prefix_reuse_naive{suffix}": naive.reuse,
                f"prompt_eval_tokens_ratio{suffix}": naive.evaluated / max(replies.evaluated, 1),
                f"prompt_eval_tokens_ratio_with_summaries{suffix}": naive.evaluated
                / max(with_summaries, 1),
            }
            for name, value in results.items():
                print(f"{name}={value:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
