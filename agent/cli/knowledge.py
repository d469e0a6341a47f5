"""``python -m agent ingest`` and ``python -m agent search``: the documents from a shell."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

from agent.config import Config
from agent.events import channel_key
from agent.prompt.retrieval import Knowledge, open_knowledge, reindex
from memory.db import Database
from memory.evaluation import QuestionsFileError, evaluate, load_questions, match_sources
from memory.history import SqlHistoryStore


@asynccontextmanager
async def cli_knowledge(config: Config) -> AsyncIterator[Knowledge]:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.database_url)
    try:
        await db.migrate()
        yield await open_knowledge(config, SqlHistoryStore(db))
    finally:
        await db.close()


async def run_ingest(
    config: Config, path: str | None, *, rebuild: bool, out: TextIO = sys.stdout
) -> int:
    """Index the documents folder (or PATH); 1 when a file could not be read."""
    if rebuild:
        kept = await reindex(config)
        out.write(f"index rebuilt for [vectors] embedder; {kept} memories re-embedded\n")
    async with cli_knowledge(config) as knowledge:
        root = config.resolve_path(path) if path else knowledge.documents_path
        if not root.exists():
            out.write(
                f"nothing to ingest: {root} does not exist (set [documents] path or pass PATH)\n"
            )
            return 1
        # A folder other than the documents folder adds to the index instead of pruning it.
        prune = path is None or root == knowledge.documents_path
        report = await knowledge.documents.ingest(root, progress=True, prune=prune)
    for source, reason in report.failed:
        out.write(f"skipped {source}: {reason}\n")
    out.write(f"{root}: {report.summary()}\n")
    return 1 if report.failed else 0


async def run_search(
    config: Config,
    channel: str | None,
    query: str,
    *,
    as_json: bool,
    out: TextIO = sys.stdout,
) -> int:
    """Ranked document chunks for QUERY as the channel would see them."""
    key = channel_key("console", channel) if channel else None
    async with cli_knowledge(config) as knowledge:
        await _ready(knowledge)
        passages = await knowledge.retriever.search(key, query)
    if as_json:
        payload = [
            {"source": p.source, "page": p.page or None, "score": round(p.score, 4), "text": p.text}
            for p in passages
        ]
        out.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
        return 0
    if not passages:
        out.write(
            "no matching document chunks (is the folder ingested? `python -m agent ingest`)\n"
        )
    for n, p in enumerate(passages, 1):
        out.write(f"[{n}] {p.label}  score {p.score:.3f}\n{p.text}\n\n")
    return 0


async def _ready(knowledge: Knowledge) -> None:
    """The embedder's model loads while the documents are read into memory: a second or
    two each, side by side rather than one after the other."""
    embedder = knowledge.documents.store.embedder
    await asyncio.gather(
        knowledge.retriever.warm(), asyncio.to_thread(embedder.embed_query, "warm-up")
    )


# Ranked chunks read per question: enough distinct documents for recall@3 and a useful MRR.
EVAL_CHUNKS = 20


async def run_eval(
    config: Config, channel: str | None, questions_path: str, *, out: TextIO = sys.stdout
) -> int:
    """Every question of the file through one retriever (one model load): key=value figures."""
    path = config.resolve_path(questions_path)
    try:
        questions = load_questions(path)
    except QuestionsFileError as exc:
        out.write(f"{exc}\n")
        return 1
    key = channel_key("console", channel) if channel else None
    async with cli_knowledge(config) as knowledge:
        retriever = knowledge.retriever
        indexed: set[str] = set()
        for scope in await retriever.scopes(key):
            indexed.update(await knowledge.documents.indexed(scope))
        try:
            questions = match_sources(questions, indexed, knowledge.documents_path)
        except QuestionsFileError as exc:
            out.write(f"{path}: {exc}\n")
            return 1

        async def sources(query: str) -> list[str]:
            return [p.source for p in await retriever.search(key, query, EVAL_CHUNKS)]

        await _ready(knowledge)  # not part of the timing
        report = await evaluate(sources, questions, clock=time.perf_counter)
    out.write("\n".join(report.lines()) + "\n")
    return 0
