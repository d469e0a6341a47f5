"""Hybrid document search: the embedder's similarity and BM25, fused per language, in memory.

Why each part (figures: bench/retrieval.py on ~800 Debian man pages, 213 questions):

- *In memory.* Every chunk is scored for every query: a dot product with a matrix of unit
  vectors and a BM25 pass over precomputed postings, a few milliseconds at 10,000 chunks.
  Chroma stays the store of record; this is a copy of the documents collection, read again
  whenever its ``generation`` changes. ``ingest`` (another process, or attachments in this
  one) sets a new generation after it wrote (memory/vectors.py), and a search looks at most
  every REFRESH_SECONDS; until the new copy is ready the old one answers. What the copy
  took to build is saved beside the index, so the next process (a one-shot ``search``) reads
  it instead (memory/doccache.py).
- *Documents, not chunks, are ranked.* A document's score is its best chunk's, minus a
  penalty that grows with the log of its number of chunks: a long page (proc(5): 250 chunks)
  otherwise has so many chances that its best chunk beats the right page for one question in
  ten. For the embedder, the similarity of the whole document is added: the mean of its
  chunks' vectors, what it is about as a whole. Near neighbours (setxattr and getxattr, ceil
  and round) often share a best passage; the document that is about the question all through
  wins. It lifted recall@3 from 0.817 to 0.831 at equal weight (0.831 to 0.836 for weights
  0.5 to 2: not a tuned peak).
- *Per language.* Cosine similarities of the multilingual embedder are higher between two
  texts of one language, so a question pulls documents of its own language. Each signal is
  therefore normalised (z-score) and ranked among the documents of one language, and the two
  rankings are fused by reciprocal rank (RRF): the best Russian and the best English candidate
  start equal.
- *Lexical across languages.* For documents in the other language than the question, BM25 is
  asked with the question's words carried over by memory/lexical.py's translator.

The chunks returned are the best chunk of each of the top documents, then the second best of
each, and so on: one long document cannot fill the prompt while another matches too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from memory.doccache import Copy, load_copy, load_words, save_copy, save_words
from memory.embeddings import Embedder, for_a_query
from memory.lexical import BM25, Translator, language, query_words, terms, unit, vocabulary
from memory.vectors import ChromaStore, Hit, Metadata

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
Query = str | Sequence[float]

REFRESH_SECONDS = 2.0
# Chosen on the benchmark (see the README's "Memory and documents").
RRF_K = 10
# A document's embedder score: its best chunk's similarity plus this times its whole's.
WHOLE_WEIGHT = 1.0
DENSE_LENGTH_PENALTY = 0.3
LEXICAL_LENGTH_PENALTY = 0.1
CONFIDENCE = 0.02
POPULATION = 5
# Vocabulary words are embedded this many at a time when a copy is built.
WORD_BATCH = 512
# A copy holds at most this many bytes of vectors; past it, searches go to Chroma alone.
MAX_BYTES = 256 * 2**20


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One immutable copy of the collection (replaced whole, so a search may run off-loop)."""

    generation: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    metadata: tuple[Metadata, ...]
    vectors: Vectors
    scope_names: dict[str, int]
    scope_of: npt.NDArray[np.int64]
    chunk_ru: npt.NDArray[np.bool_]
    doc_of: npt.NDArray[np.int64]
    doc_ru: npt.NDArray[np.bool_]
    doc_chunks: tuple[npt.NDArray[np.int64], ...]
    order: npt.NDArray[np.int64]  # chunk indices grouped by document
    starts: npt.NDArray[np.int64]  # where each document's group begins in `order`
    log_length: Vectors
    centroids: Vectors  # each document's unit mean chunk vector
    bm25: BM25
    translator: Translator

    @property
    def documents(self) -> int:
        return len(self.doc_chunks)


def build_snapshot(  # noqa: PLR0917 - the parts of one read, in its order
    generation: str,
    ids: Sequence[str],
    texts: Sequence[str],
    metadata: Sequence[Metadata],
    vectors: Vectors,
    embed_words: Callable[[Sequence[str]], Vectors],
    derived: Derived | None = None,
) -> Snapshot:
    """A copy of the collection's items (blocking: run it on a worker thread); ``derived``:
    what :func:`derive` gave for these texts, when it was saved."""
    keys = [(str(m.get("scope", "")), str(m.get("source", ""))) for m in metadata]
    scope_names: dict[str, int] = {}
    scope_of = np.array([scope_names.setdefault(k[0], len(scope_names)) for k in keys])
    doc_index: dict[tuple[str, str], int] = {}
    doc_of = np.array([doc_index.setdefault(k, len(doc_index)) for k in keys], dtype=np.int64)
    chunk_ru, words, bm25 = derive(texts) if derived is None else derived
    order = np.argsort(doc_of, kind="stable")
    bounds = np.searchsorted(doc_of[order], np.arange(len(doc_index) + 1))
    doc_chunks = tuple(order[bounds[d] : bounds[d + 1]] for d in range(len(doc_index)))
    doc_ru = np.array([chunk_ru[c].mean() > 0.5 for c in doc_chunks], dtype=bool)
    matrix = unit(np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1))
    return Snapshot(
        generation,
        tuple(ids),
        tuple(texts),
        tuple(metadata),
        matrix,
        scope_names,
        scope_of.astype(np.int64),
        chunk_ru,
        doc_of,
        doc_ru,
        doc_chunks,
        order.astype(np.int64),
        bounds[:-1].astype(np.int64),
        np.log(np.array([len(c) for c in doc_chunks], dtype=np.float32)),
        unit(np.add.reduceat(matrix[order], bounds[:-1], axis=0)),
        bm25,
        Translator(words, embed_words(words)),
    )


# Each chunk's language, the vocabulary, BM25: what the texts alone give (2 s at 10,000 chunks).
Derived = tuple[npt.NDArray[np.bool_], list[str], BM25]


def derive(texts: Sequence[str]) -> Derived:
    return (
        np.array([language(t) == "ru" for t in texts], dtype=bool),
        vocabulary(texts),
        BM25([terms(t) for t in texts]),
    )


def rank(  # noqa: PLR0917 - called in one place, on a worker thread
    snapshot: Snapshot,
    query: str,
    vector: Vectors,
    word_vectors: Vectors,
    scopes: Sequence[str],
    k: int,
    min_score: float,
) -> list[tuple[int, float]]:
    """The ``k`` chunks to show for ``query`` (its embedding ``vector``, and one embedding
    per word of :func:`~memory.lexical.query_words`): chunk index and cosine similarity."""
    query_vector = unit(vector.reshape(1, -1))[0]
    dense = snapshot.vectors @ query_vector
    codes = [snapshot.scope_names[s] for s in scopes if s in snapshot.scope_names]
    visible = np.isin(snapshot.scope_of, codes)
    # A chunk is shown only above the embedder's threshold (so "hello" retrieves nothing);
    # documents are compared with all the visible ones, shown or not.
    allowed = visible & (dense >= min_score)
    if k <= 0 or not allowed.any():
        return []
    own = dict.fromkeys(terms(query), 1.0)
    carried = snapshot.translator.translate(query_words(query), word_vectors)
    other = {**carried, **own}
    query_ru = language(query) == "ru"
    same = snapshot.chunk_ru == query_ru
    lexical = np.where(same, snapshot.bm25.scores(own), snapshot.bm25.scores(other))
    docs = np.zeros(snapshot.documents, dtype=bool)
    docs[snapshot.doc_of[visible]] = True
    shown = np.zeros(snapshot.documents, dtype=bool)
    shown[snapshot.doc_of[allowed]] = True
    fused = np.zeros(snapshot.documents, dtype=np.float64)
    whole = WHOLE_WEIGHT * (snapshot.centroids @ query_vector).astype(np.float64)
    for signal, penalty, add in (
        (dense, DENSE_LENGTH_PENALTY, whole),
        (lexical, LEXICAL_LENGTH_PENALTY, 0.0),
    ):
        # Each document's best visible chunk (chunks are grouped by document in `order`).
        masked = np.where(visible, signal, -np.inf)[snapshot.order]
        best = np.maximum.reduceat(masked, snapshot.starts).astype(np.float64) + add
        for ru in (True, False):
            members = np.flatnonzero(docs & (snapshot.doc_ru == ru))
            if not len(members):
                continue
            values = best[members]
            # A z-score needs a population: a language with only a few documents is
            # measured against all the visible ones.
            population = values if len(members) >= POPULATION else best[docs]
            z = (values - population.mean()) / (population.std() or 1.0)
            z -= penalty * snapshot.log_length[members]
            ranks = np.empty(len(members))
            ranks[np.argsort(-z, kind="stable")] = np.arange(1, len(members) + 1)
            # Plus how far each stands out in its language: breaks the tie between the two
            # languages' best documents in favour of the clearer one.
            fused[members] += 1.0 / (RRF_K + ranks) + CONFIDENCE * z
    ranked = [d for d in np.argsort(-fused, kind="stable").tolist() if shown[d]][:k]
    queues = []
    for d in ranked:
        chunks = snapshot.doc_chunks[d]
        chunks = chunks[allowed[chunks]]
        # Within a document: its chunks by the sum of both signals' reciprocal ranks.
        score = _reciprocal_ranks(dense[chunks]) + _reciprocal_ranks(lexical[chunks])
        queues.append(chunks[np.argsort(-score, kind="stable")].tolist())
    picked: list[tuple[int, float]] = []
    depth = 0
    while len(picked) < k and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(picked) < k:
                picked.append((queue[depth], float(dense[queue[depth]])))
        depth += 1
    return picked


def _reciprocal_ranks(signal: Vectors) -> Vectors:
    ranks = np.empty(len(signal), dtype=np.float32)
    ranks[np.argsort(-signal, kind="stable")] = np.arange(1, len(signal) + 1)
    return (1.0 / (RRF_K + ranks)).astype(np.float32)


class DocumentSearch:
    """Hybrid search over a documents collection, kept in step with it (see the module doc).

    Until the first copy is read (:meth:`warm`, or the first search), and for a collection
    too large for memory, searches go to Chroma by similarity alone.
    """

    def __init__(
        self,
        store: ChromaStore,
        *,
        cache: Path | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        # Where the copy and the word vectors are saved for the next process (doccache).
        self._cache = cache
        self._refresh = refresh_seconds
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._loading: asyncio.Task[None] | None = None
        self._checked_at = -float("inf")
        self._too_large = False
        # Word vectors outlive a copy: a new generation embeds only the words it adds.
        self._word_cache: dict[str, npt.NDArray[np.float32]] = {}

    @property
    def embedder(self) -> Embedder:
        return self.store.embedder

    async def warm(self) -> None:
        """Read the collection now if there is no copy yet (never raises)."""
        if self._snapshot is None and not self._too_large:
            await self._reload(await self._generation())

    async def nearest(
        self,
        query: str,
        k: int,
        scopes: Sequence[str],
        min_score: float = -1.0,
        vector: Sequence[float] | None = None,
    ) -> list[Hit]:
        """The chunks to show for ``query`` among ``scopes``, best documents first
        (``vector``: the query's embedding, when the caller has it already)."""
        if k <= 0 or not query.strip():
            return []
        snapshot = await self._current()
        if snapshot is None:
            hits = await self.store.nearest(query if vector is None else vector, k, scopes)
            return [h for h in hits if h.score >= min_score]
        found = await asyncio.to_thread(self._rank, snapshot, query, vector, k, scopes, min_score)
        return [
            Hit(snapshot.ids[n], snapshot.texts[n], snapshot.metadata[n], score)
            for n, score in found
        ]

    def _rank(  # noqa: PLR0917 - the arguments of one worker-thread hand-off
        self,
        snapshot: Snapshot,
        query: str,
        given: Sequence[float] | None,
        k: int,
        scopes: Sequence[str],
        min_score: float,
    ) -> list[tuple[int, float]]:
        """Embedding and ranking in one hand-off to a worker thread."""
        embedded = self.embedder.embed_query(query) if given is None else given
        vector = np.asarray(embedded, dtype=np.float32)
        words = query_words(query)
        with for_a_query():  # before the passages of a document being indexed
            word_vectors = self._embed_words(words, keep=True)
        return rank(snapshot, query, vector, word_vectors, scopes, k, min_score)

    async def _current(self) -> Snapshot | None:
        if self._too_large:
            return None
        now = self._clock()
        if now - self._checked_at >= self._refresh:
            self._checked_at = now
            generation = await self._generation()
            if self._snapshot is None:
                await self._reload(generation)
            elif generation != self._snapshot.generation and self._loading is None:
                self._loading = asyncio.create_task(self._reload(generation))
        return self._snapshot

    async def _generation(self) -> str:
        try:
            return await self.store.generation()
        except Exception:
            log.warning("%s: cannot read the collection's generation", self.store.name)
            return self._snapshot.generation if self._snapshot else ""

    async def _reload(self, generation: str) -> None:
        try:
            count = await self.store.count()
            if not count:  # nothing to copy (a search finds nothing in Chroma either)
                self._snapshot = None
                return
            if count * self.embedder.dimension * 4 > MAX_BYTES:
                self._too_large = True
                log.info("%s: too large to copy; searching in Chroma", self.store.name)
                return
            copy = None
            if self._cache is not None:
                if not self._word_cache:
                    self._word_cache = await asyncio.to_thread(
                        load_words, self._cache, self.embedder.name
                    )
                name = self.embedder.name
                copy = await asyncio.to_thread(load_copy, self._cache, name, generation, count)
            if copy is None:
                ids, texts, metadata, vectors = await self.store.read_all()
                copy = await asyncio.to_thread(
                    self._derive, generation, ids, texts, metadata, vectors
                )
            snapshot = await asyncio.to_thread(
                build_snapshot,
                generation,
                copy.ids,
                copy.texts,
                copy.metadata,
                copy.vectors,
                self._embed_words,
                (copy.chunk_ru, copy.words, copy.bm25),
            )
        except Exception:
            log.warning("%s: could not read the documents into memory", self.store.name,
                        exc_info=True)  # fmt: skip
        else:
            self._snapshot = snapshot
            log.info(
                "%s: %d chunks of %d documents in memory for hybrid search",
                self.store.name, len(snapshot.ids), snapshot.documents,
            )  # fmt: skip
        finally:
            self._loading = None

    def _derive(
        self,
        generation: str,
        ids: Sequence[str],
        texts: Sequence[str],
        metadata: Sequence[Metadata],
        vectors: Vectors,
    ) -> Copy:
        """What was read from Chroma with what its texts give, saved for the next process."""
        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        copy = Copy(list(ids), list(texts), list(metadata), matrix, *derive(texts))
        if self._cache is not None:
            save_copy(self._cache, self.embedder.name, generation, copy)
        return copy

    def _embed_words(self, words: Sequence[str], *, keep: bool = False) -> Vectors:
        """Vectors of ``words``, from the cache of the vocabulary's where it has them. A
        copy's vocabulary replaces the cache (words of removed documents go); a query's
        words are embedded each time (``keep``: the cache is not grown by queries)."""
        cache = self._word_cache
        missing = [w for w in words if w not in cache]
        fresh: dict[str, npt.NDArray[np.float32]] = {}
        for start in range(0, len(missing), WORD_BATCH):
            batch = missing[start : start + WORD_BATCH]
            vectors = np.asarray(self.embedder.embed_passages(batch), dtype=np.float32)
            fresh.update(zip(batch, vectors, strict=True))
        if not keep:
            self._word_cache = {w: cache.get(w, fresh.get(w)) for w in words}  # type: ignore[misc]
            if fresh and self._cache is not None:
                save_words(self._cache, self.embedder.name, self._word_cache)
        if not words:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return np.stack([cache[w] if w in cache else fresh[w] for w in words])
