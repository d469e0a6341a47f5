"""Does shifting a cached run change what the model says? Greedy output with and without.

    python bench/shift_parity.py [--max-tokens 16]

Twelve two-turn conversations in Beseda's layout: the first turn's user message carries a
volatile block (notes), the second turn's history holds the first exchange without it and a
new block. The second reply is generated twice at temperature 0 on the bundled model: once
with the first exchange shifted into place from the cache (``reuse_min_tokens`` 16), once
with it evaluated again (prefix reuse only). A shifted run's KV was computed next to the old
notes, so the two may differ: printed as ``greedy_same_when_shifted=`` (the share of
conversations whose first ``--max-tokens`` tokens are identical), and
``shifted_share_of_reused=``.

The same twelve conversations then lose their first exchange to a summary: the summary goes
into the system prompt, before the exchange that stays, which the cache still holds. The
reply is generated with that exchange parked and moved back behind the summary (the same
channel's sequence) and with it evaluated again: ``greedy_same_when_parked=``.

Batching is not exact either: the twelve first turns are generated alone, alone once more,
and four at a time on one context of four sequences. ``greedy_same_alone_again=`` and
``greedy_same_beside_others=`` are the shares whose first tokens equal the first run's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import ModelConfig
from agent.generators.base import ChatMessage, SamplingParams
from agent.generators.gguf import bundled_model_path
from agent.generators.llama_cpp import LlamaCppGenerator

SYSTEM = ChatMessage("system", "You are a helpful assistant.")

PAIRS = [
    (
        "When does the museum open? Answer in one full sentence.",
        "Notes:\n- The museum opens at nine and closes at six.",
        "How much are tickets?",
        "Notes:\n- Tickets cost ten euros.",
    ),
    (
        "What is the capital of Canada? Give one sentence.",
        "Notes:\n- Ottawa is the capital of Canada.",
        "And of Australia?",
        "Notes:\n- Canberra is the capital of Australia.",
    ),
    (
        "How do I boil an egg? Explain briefly.",
        "Notes:\n- Eggs boil in about nine minutes.",
        "And a soft one?",
        "Notes:\n- Soft eggs take six minutes.",
    ),
    (
        "Suggest a short book to read on a train.",
        "Notes:\n- The user likes detective stories.",
        "Something longer?",
        "Notes:\n- The train ride is eight hours.",
    ),
    (
        "Why is the sky blue? Keep it simple.",
        "Notes:\n- Rayleigh scattering affects short wavelengths.",
        "Why are sunsets red?",
        "Notes:\n- At sunset light travels through more air.",
    ),
    (
        "What should I pack for a weekend hike?",
        "Notes:\n- The forecast says rain on Saturday.",
        "What about food?",
        "Notes:\n- There is no shop near the trail.",
    ),
    (
        "Give me a tip for learning guitar.",
        "Notes:\n- The user practises twenty minutes a day.",
        "How do I learn chords?",
        "Notes:\n- Start with G, C and D.",
    ),
    (
        "What is a haiku? One sentence please.",
        "Notes:\n- A haiku has 5-7-5 syllables.",
        "Write one about snow.",
        "Notes:\n- Snow fell all night in Kazan.",
    ),
    (
        "How many legs does a spider have?",
        "Notes:\n- Spiders are arachnids, not insects.",
        "And an insect?",
        "Notes:\n- Insects have three body parts.",
    ),
    (
        "Name three vegetables for soup.",
        "Notes:\n- The user is vegetarian.",
        "What spices go well?",
        "Notes:\n- The user dislikes very hot food.",
    ),
    (
        "What is a good name for a cat?",
        "Notes:\n- The cat is black with white paws.",
        "And for a dog?",
        "Notes:\n- The dog is a large golden retriever.",
    ),
    (
        "Tell me about the moon in one sentence.",
        "Notes:\n- The moon is 384,400 km away.",
        "How long does light take from it?",
        "Notes:\n- Light travels 300,000 km per second.",
    ),
]


def turn(question: str, block: str, earlier: tuple[ChatMessage, ...] = ()) -> list[ChatMessage]:
    return [SYSTEM, *earlier, ChatMessage("user", f"{block}\n\n{question}")]


async def run(gen: LlamaCppGenerator, messages: list[ChatMessage], params: SamplingParams):  # type: ignore[no-untyped-def]
    stream = gen.stream(messages, params)
    text = "".join([piece async for piece in stream])
    return text, stream.stats


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    model = ModelConfig(n_ctx=1024, n_threads=2, parallel=1)
    shifting = LlamaCppGenerator.load(model, bundled_model_path(), reuse_min_tokens=16)
    plain = LlamaCppGenerator.load(model, bundled_model_path(), reuse_min_tokens=0)
    same = shifted = reused = 0
    try:
        for q1, b1, q2, b2 in PAIRS:
            first, _ = await run(shifting, turn(q1, b1), params)
            earlier = (ChatMessage("user", q1), ChatMessage("assistant", first))
            second = turn(q2, b2, earlier)
            moved, stats = await run(shifting, second, params)
            await run(plain, turn(q1, b1), params)  # the same cache, without shifting
            again, _ = await run(plain, second, params)
            same += moved == again
            shifted += stats.shifted_tokens
            reused += stats.shifted_tokens + stats.cached_tokens
            if moved != again:
                print(f"# differs: {moved[:50]!r} / {again[:50]!r}")
    finally:
        await shifting.aclose()
        await plain.aclose()
    parked_same, parked = await parked_parity(params)
    alone_again, beside = await batch_parity(params)
    print(f"# {len(PAIRS)} conversations, {args.max_tokens} tokens each")
    print(f"greedy_same_when_shifted={same / len(PAIRS):.3f}")
    print(f"shifted_share_of_reused={shifted / max(reused, 1):.3f}")
    print(f"greedy_same_when_parked={parked_same:.3f}")
    print(f"parked_tokens_per_reply={parked:.1f}")
    print(f"greedy_same_alone_again={alone_again:.3f}")
    print(f"greedy_same_beside_others={beside:.3f}")


async def parked_parity(params: SamplingParams) -> tuple[float, float]:
    """Replies after an eviction, with the history that stays parked and moved back behind
    the new summary, against the same replies with it evaluated again."""
    model = ModelConfig(n_ctx=1024, n_threads=2, parallel=1)
    gens = [
        LlamaCppGenerator.load(model, bundled_model_path(), reuse_min_tokens=reuse)
        for reuse in (16, 0)
    ]
    channel = replace(params, conversation="channel")
    same = parked = 0
    try:
        for q1, _b1, q2, _b2 in PAIRS:
            replies = []
            for gen in gens:
                # No notes here: both generators hold the very same cells before the summary.
                first, _ = await run(gen, [SYSTEM, ChatMessage("user", q1)], channel)
                one = (ChatMessage("user", q1), ChatMessage("assistant", first))
                second, _ = await run(gen, [SYSTEM, *one, ChatMessage("user", q2)], channel)
                two = (ChatMessage("user", q2), ChatMessage("assistant", second))
                earlier = f"{SYSTEM.content}\n\nEarlier: the user asked: {q1}"
                summary = ChatMessage("system", earlier)
                after = [summary, *two, ChatMessage("user", "Thanks. Anything else I should know?")]
                text, stats = await run(gen, after, channel)
                replies.append(text)
                parked += stats.shifted_tokens if gen is gens[0] else 0
            same += replies[0] == replies[1]
            if replies[0] != replies[1]:
                print(f"# differs when parked: {replies[0][:50]!r} / {replies[1][:50]!r}")
    finally:
        for gen in gens:
            await gen.aclose()
    return same / len(PAIRS), parked / len(PAIRS)


async def batch_parity(params: SamplingParams) -> tuple[float, float]:
    """The first turns alone, alone again, and four at a time: shares equal to the first."""
    model = ModelConfig(n_ctx=1024, n_threads=2, parallel=4)
    gen = LlamaCppGenerator.load(model, bundled_model_path(), reuse_min_tokens=0)
    prompts = [turn(q1, b1) for q1, b1, _q2, _b2 in PAIRS]
    try:
        alone = [(await run(gen, p, params))[0] for p in prompts]
        again = [(await run(gen, p, params))[0] for p in prompts]
        together: list[str] = []
        for i in range(0, len(prompts), 4):
            group = await asyncio.gather(*(run(gen, p, params) for p in prompts[i : i + 4]))
            together += [text for text, _ in group]
    finally:
        await gen.aclose()
    for a, t in zip(alone, together, strict=True):
        if a != t:
            print(f"# differs beside others: {a[:50]!r} / {t[:50]!r}")
    n = len(prompts)
    same_again = sum(a == b for a, b in zip(alone, again, strict=True))
    return same_again / n, sum(a == t for a, t in zip(alone, together, strict=True)) / n


if __name__ == "__main__":
    asyncio.run(main())
