"""Several channels writing at the same moment: the multi-sequence engine vs one at a time.

    python bench/concurrency.py [--channels 1,2,4,8] [--max-tokens 64] [--rounds 2]
                                [--parallel 4] [--threads 2]

For each C, C channels (each with its own short conversation) send one message at once;
every reply goes through the real scheduler (slots = the generator's concurrency, round
robin) and streams from the bundled model at temperature 0. The same script runs on:

- new: the engine in agent/ (``[model] parallel`` sequences decoded in one batch per step);
- old: bench/legacy_engine.py, the engine before it (one reply at a time, whole-context
  snapshots).

Each engine (and llama-server, below) is loaded fresh for each round, so no prompt is
cached at the start. Printed per C: aggregate generated tokens/s, p50/p95 time to first
token and to the whole reply, for both, and the ratios; the default run ends with
``aggregate_speedup_c4=`` and ``last_reply_time_ratio_c4=`` (new ÷ old: the last channel's
whole reply). Rounds alternate new and old, and the figures are medians over rounds (the
machine may be shared).

``single_stream_ratio=`` compares one channel streaming through Beseda with
llama-cpp-python's own ``create_completion`` on the same prompt (tokens/s after the first).

With ``LLAMA_SERVER`` naming a llama-server binary, the same script also runs against it
through Beseda's OpenAI-compatible backend (``-np C --cache-reuse 16``) and the ratios
``aggregate_vs_llama_server_cC=``, ``last_reply_vs_llama_server_cC=`` and
``evaluated_vs_llama_server_cC=`` (prompt tokens evaluated, the server's from its /metrics)
are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import ModelConfig
from agent.generators.base import ChatMessage, Generator, SamplingParams
from agent.generators.gguf import bundled_model_path
from agent.generators.llama_cpp import LlamaCppGenerator
from agent.runtime.scheduler import Scheduler
from bench.context_cache import LlamaServer
from bench.legacy_engine import LegacyLlamaCppGenerator

N_CTX = 1024
SYSTEM = "You are Beseda, a friendly and concise assistant in a group chat."
TOPICS = ["cats", "the sea", "bread", "trains", "music", "winter", "chess", "tea", "rivers"]
# Questions that get long answers: the benchmark is about generating, not stopping early.
QUESTIONS = [
    "Write a long story about {t}.",
    "Explain everything you know about {t}, in detail.",
    "Write a detailed essay about {t}.",
    "Describe {t} in great detail, with many examples.",
]


def channel_prompt(channel: int, round_: int) -> list[ChatMessage]:
    """A short conversation of the channel's own, then its new message."""
    topic = TOPICS[channel % len(TOPICS)]
    messages = [ChatMessage("system", SYSTEM)]
    for i in range(2):
        messages.append(ChatMessage("user", f"Hi! Question {i} about {topic}, please."))
        messages.append(ChatMessage("assistant", f"Sure, ask me anything about {topic}."))
    question = QUESTIONS[(channel + round_) % len(QUESTIONS)].format(t=topic)
    messages.append(ChatMessage("user", f"{question} (round {round_})"))
    return messages


@dataclass
class Run:
    first: list[float] = field(default_factory=list)  # seconds to the first token
    whole: list[float] = field(default_factory=list)  # seconds to the whole reply
    tokens: int = 0
    wall: float = 0.0
    evaluated: int = 0

    @property
    def rate(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


async def one_round(gen: Generator, channels: int, round_: int, max_tokens: int) -> Run:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    scheduler = Scheduler(gen.concurrency)
    run = Run()
    start = time.perf_counter()

    async def channel(c: int) -> None:
        async with scheduler.slot(f"bench:{c}"):
            stream = gen.stream(channel_prompt(c, round_), params)
            first = None
            async for _piece in stream:
                if first is None:
                    first = time.perf_counter() - start
            run.first.append(first if first is not None else time.perf_counter() - start)
            run.whole.append(time.perf_counter() - start)
            run.tokens += stream.stats.completion_tokens
            run.evaluated += stream.stats.evaluated_tokens

    await asyncio.gather(*(channel(c) for c in range(channels)))
    run.wall = time.perf_counter() - start
    return run


async def warm(gen: Generator) -> None:
    """One throw-away reply: llama.cpp sizes its buffers on the first decode."""
    stream = gen.stream([ChatMessage("user", "Hello")], SamplingParams(max_tokens=4))
    async for _piece in stream:
        pass


def load(kind: str, parallel: int, threads: int) -> Generator:
    model = ModelConfig(n_ctx=N_CTX, n_threads=threads, temperature=0.0, parallel=parallel)
    if kind == "new":
        return LlamaCppGenerator.load(model, bundled_model_path())
    return LegacyLlamaCppGenerator.load(model, bundled_model_path())


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(kind: str, channels: int, round_: int, args: argparse.Namespace) -> Run:
    gen = load(kind, args.parallel, args.threads)
    try:
        await warm(gen)
        return await one_round(gen, channels, round_, args.max_tokens)
    finally:
        await gen.aclose()


def summary(runs: list[Run]) -> dict[str, float]:
    return {
        "tokens_per_s": statistics.median(r.rate for r in runs),
        "ttft_p50": statistics.median(pct(r.first, 0.5) for r in runs),
        "ttft_p95": statistics.median(pct(r.first, 0.95) for r in runs),
        "reply_p50": statistics.median(pct(r.whole, 0.5) for r in runs),
        "reply_p95": statistics.median(pct(r.whole, 0.95) for r in runs),
        "last_reply": statistics.median(max(r.whole) for r in runs),
        "evaluated": statistics.median(r.evaluated for r in runs),
        # Replies end at the model's end token, so engines may generate different amounts.
        "generated": statistics.median(r.tokens for r in runs),
    }


async def single_stream_ratio(args: argparse.Namespace) -> float:
    """Beseda's streaming vs create_completion on one prompt: tokens/s after the first."""
    from llama_cpp import Llama  # noqa: PLC0415

    messages = channel_prompt(0, 99)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    ours: list[float] = []
    theirs: list[float] = []
    gen = LlamaCppGenerator.load(
        ModelConfig(n_ctx=N_CTX, n_threads=args.threads, parallel=args.parallel),
        bundled_model_path(),
    )
    llama = Llama(
        model_path=str(bundled_model_path()), n_ctx=N_CTX, n_threads=args.threads, verbose=False
    )
    tokens = gen.tokenize(gen.render_prompt(messages), special=True)
    try:
        for _ in range(3):
            # Fresh prompts for both: nothing cached on either side.
            await gen.aclose()
            gen = LlamaCppGenerator.load(
                ModelConfig(n_ctx=N_CTX, n_threads=args.threads, parallel=args.parallel),
                bundled_model_path(),
            )
            stamps: list[float] = []
            async for _piece in gen.stream(messages, params):
                stamps.append(time.perf_counter())
            if len(stamps) > 1:
                ours.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            llama.reset()
            llama._ctx.kv_cache_clear()  # noqa: SLF001 - a cold cache, as on our side
            stamps = []
            for _chunk in llama.create_completion(
                prompt=tokens, max_tokens=args.max_tokens, temperature=0.0,
                repeat_penalty=params.repeat_penalty, stream=True,
            ):  # fmt: skip
                stamps.append(time.perf_counter())
            if len(stamps) > 1:
                theirs.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    finally:
        await gen.aclose()
        llama.close()
    return statistics.median(ours) / statistics.median(theirs)


def raw_decode_rate(sequences: int, parallel: int, threads: int, steps: int = 48) -> float:
    """llama.cpp alone: generated tokens/s of ``sequences`` sequences decoding one token each
    per ``llama_decode`` call, in a context made as Beseda makes its own (no sampling, no
    Python around it). The ratio of 4 sequences to 1 is what batching can give at most."""
    import llama_cpp  # noqa: PLC0415
    from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel  # noqa: PLC0415

    prompt = 80
    model = LlamaModel(
        path_model=str(bundled_model_path()),
        params=llama_cpp.llama_model_default_params(),
        verbose=False,
    )
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified = N_CTX * parallel, parallel, True
    params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = threads
    context = LlamaContext(model=model, params=params, verbose=False)
    holder = LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=False)
    batch = holder.batch

    def decode(tokens: list[tuple[int, int, int]]) -> None:  # (token, position, sequence)
        for n, (token, pos, seq) in enumerate(tokens):
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
            batch.seq_id[n][0], batch.logits[n] = seq, 1
        batch.n_tokens = len(tokens)
        if llama_cpp.llama_decode(context.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    try:
        for seq in range(sequences):  # a prompt each, so attention has something to read
            decode([(100 + (i * 7 + seq * 13) % 5000, i, seq) for i in range(prompt)])
        started = time.perf_counter()
        for step in range(steps):
            decode([(200 + step, prompt + step, seq) for seq in range(sequences)])
        return steps * sequences / (time.perf_counter() - started)
    finally:
        holder.close()
        context.close()
        model.close()


async def llama_server_runs(
    binary: str, channels: int, rounds: int, args: argparse.Namespace
) -> list[Run]:
    from agent.generators.openai_compat import OpenAICompatGenerator  # noqa: PLC0415

    runs = []
    for r in range(rounds):
        # A fresh server each round, as the engines are loaded fresh: nothing cached at the
        # start (the conversations of a round repeat the earlier rounds' history).
        port = 18000 + 16 * r + channels
        async with LlamaServer(binary, channels, N_CTX, port=port, threads=args.threads) as server:
            model = ModelConfig(
                backend="openai", base_url=server.url, n_ctx=N_CTX, concurrency=channels,
                temperature=0.0,
            )  # fmt: skip
            gen: Any = OpenAICompatGenerator(model)
            try:
                await gen.start()
                await warm(gen)
                before = await server.evaluated()
                run = await one_round(gen, channels, r, args.max_tokens)
                run.evaluated = await server.evaluated() - before  # the server's own count
                runs.append(run)
            finally:
                await gen.aclose()
    return runs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", default="1,2,4,8")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=ModelConfig().parallel)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    counts = [int(c) for c in args.channels.split(",")]
    server = os.environ.get("LLAMA_SERVER", "")
    results: dict[str, float] = {}
    for channels in counts:
        runs: dict[str, list[Run]] = {"new": [], "old": []}
        for r in range(args.rounds):
            for kind in ("new", "old") if r % 2 == 0 else ("old", "new"):
                runs[kind].append(await measure(kind, channels, r, args))
        new, old = summary(runs["new"]), summary(runs["old"])
        suffix = f"_c{channels}"
        print(
            f"# C={channels}: new {new['tokens_per_s']:.1f} tok/s, last reply "
            f"{new['last_reply']:.2f} s; old {old['tokens_per_s']:.1f} tok/s, last reply "
            f"{old['last_reply']:.2f} s (parallel {args.parallel}, {args.threads} threads)"
        )
        for kind, figures in (("new", new), ("old", old)):
            for name, value in figures.items():
                results[f"{name}_{kind}{suffix}"] = value
        results[f"aggregate_speedup{suffix}"] = new["tokens_per_s"] / old["tokens_per_s"]
        results[f"last_reply_time_ratio{suffix}"] = new["last_reply"] / old["last_reply"]
        if server:
            remote = summary(await llama_server_runs(server, channels, args.rounds, args))
            results[f"tokens_per_s_llama_server{suffix}"] = remote["tokens_per_s"]
            results[f"aggregate_vs_llama_server{suffix}"] = (
                new["tokens_per_s"] / remote["tokens_per_s"]
            )
            results[f"last_reply_vs_llama_server{suffix}"] = (
                new["last_reply"] / remote["last_reply"]
            )
            results[f"evaluated_llama_server{suffix}"] = remote["evaluated"]
            results[f"generated_llama_server{suffix}"] = remote["generated"]
            results[f"evaluated_vs_llama_server{suffix}"] = new["evaluated"] / max(
                1.0, remote["evaluated"]
            )
        for name, value in results.items():
            if name.endswith(suffix):
                print(f"{name}={value:.3f}")
    print(f"single_stream_ratio={await single_stream_ratio(args):.3f}")
    # The ceiling: what one batched llama_decode gives over one sequence, in the same run.
    alone, together = [], []
    for _ in range(3):
        alone.append(raw_decode_rate(1, args.parallel, args.threads))
        together.append(raw_decode_rate(4, args.parallel, args.threads))
    print(f"raw_decode_tokens_per_s_c1={statistics.median(alone):.1f}")
    print(f"raw_decode_tokens_per_s_c4={statistics.median(together):.1f}")
    print(f"raw_decode_batch_gain_c4={statistics.median(together) / statistics.median(alone):.3f}")


if __name__ == "__main__":
    asyncio.run(main())
