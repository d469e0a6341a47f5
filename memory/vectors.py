"""The vector store on Chroma: embedded (PersistentClient) or a Chroma server (HttpClient).

Chroma's client is synchronous; every call runs on a worker thread so the event loop never
blocks. Each collection records the embedder that filled it (name and dimension): vectors
from two different models are not comparable, so opening a collection with another embedder
is an error that names the re-index command instead of returning garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from memory.embeddings import Embedder
from memory.mirror import Rows, ScopeMirror, nearest

log = logging.getLogger(__name__)

# Chroma reads this at import time; Settings(anonymized_telemetry=False) covers the rest.
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REINDEX_COMMAND = "python -m agent ingest --reindex"
# Collection metadata: changed by every write batch of `ingest`, watched by in-memory copies.
GENERATION_KEY = "generation"

Scalar = str | int | float | bool
Metadata = Mapping[str, Scalar]
Where = dict[str, Any]


class VectorStoreError(RuntimeError):
    """The vector store cannot be opened or used."""


class EmbedderMismatchError(VectorStoreError):
    """The collection was built with another embedder than the configured one."""


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    text: str
    metadata: Metadata = field(default_factory=dict)
    # Embedded before ``text`` but not stored (a document chunk's document opening).
    context: str = ""

    @property
    def embedded(self) -> str:
        """The text the embedder reads for this item."""
        return f"{self.context}\n\n{self.text}" if self.context else self.text


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    text: str
    metadata: Metadata
    # Cosine similarity: 1 is identical, 0 unrelated.
    score: float


class VectorStore(Protocol):
    async def add(self, items: Sequence[Item]) -> None: ...

    async def query(self, text: str, k: int, where: Where | None = None) -> list[Hit]: ...

    async def get(self, where: Where | None = None) -> list[Item]: ...

    async def delete(self, ids: Sequence[str]) -> None: ...

    async def count(self) -> int: ...


def open_client(data_dir: Path, url: str = "") -> Any:
    """Embedded Chroma under ``data_dir/chroma``, or the server at ``url``."""
    import chromadb  # noqa: PLC0415 - slow import, only when vectors are used
    from chromadb.config import Settings  # noqa: PLC0415

    settings = Settings(anonymized_telemetry=False)
    try:
        if url:
            parsed = urlparse(url if "://" in url else f"http://{url}")
            port = parsed.port or (443 if parsed.scheme == "https" else 8000)
            return chromadb.HttpClient(
                host=parsed.hostname or "127.0.0.1",
                port=port,
                ssl=parsed.scheme == "https",
                settings=settings,
            )
        folder = data_dir / "chroma"
        folder.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(folder), settings=settings)
    except Exception as exc:
        where = url or str(data_dir / "chroma")
        raise VectorStoreError(f"cannot open the Chroma vector store at {where}: {exc}") from exc


# An empty collection is counted again at most this often when asked whether it holds
# anything (every message asks; another process, `beseda ingest`, may fill it). Adds through
# the store itself are seen at once.
EMPTY_RECHECK_SECONDS = 5.0
# The in-memory copy of a mirrored collection (memory/mirror.py) holds at most this many
# bytes of vectors (128 MiB: about 65k items of the default embedder's 512 dimensions); a
# larger collection is queried in Chroma. A failed load is tried again after the delay.
MIRROR_MAX_BYTES = 128 * 2**20
MIRROR_RETRY_SECONDS = 60.0
# A mirrored search over more items than this runs on a worker thread, not the event loop.
INLINE_ROWS = 2000


class ChromaStore:
    """One Chroma collection filled by one embedder.

    With ``mirror``, once :meth:`warm` has read it, scope-filtered searches (:meth:`nearest`)
    rank an exact in-memory copy of the collection instead (memory/mirror.py); only for a
    collection that this store alone writes.
    """

    def __init__(
        self,
        client: Any,
        name: str,
        embedder: Embedder,
        *,
        mirror: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._embedder = embedder
        self._client = client
        self.name = name
        self._clock = clock
        self._filled = False
        self._found_empty_at: float | None = None
        self._mirrorable = mirror
        self._mirror: ScopeMirror | None = None  # made by warm()
        self._loading: asyncio.Future[None] | None = None
        self._retry_at = 0.0
        expected = {"embedder": embedder.name, "dimension": embedder.dimension}
        self._collection = client.get_or_create_collection(
            name, metadata={"hnsw:space": "cosine", **expected}
        )
        found = dict(self._collection.metadata or {})
        if (
            found.get("embedder") != expected["embedder"]
            or found.get("dimension") != (expected["dimension"])
        ):
            raise EmbedderMismatchError(
                f"the vector collection {name!r} was built with embedder "
                f"{found.get('embedder')!r} (dimension {found.get('dimension')}), but the "
                f"configured embedder is {embedder.name!r} (dimension {embedder.dimension}). "
                f"Re-index with `{REINDEX_COMMAND}`, or set [vectors] embedder back."
            )

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def mirrored(self) -> bool:
        """Whether scoped searches rank an in-memory copy (loaded or not yet)."""
        return self._mirrorable

    async def add(self, items: Sequence[Item]) -> None:
        if not items:
            return
        vectors = await asyncio.to_thread(
            self._embedder.embed_passages, [i.embedded for i in items]
        )
        ids, texts = [i.id for i in items], [i.text for i in items]
        metadata = [i.metadata for i in items]
        with self._dropping_mirror_on_failure():
            await asyncio.to_thread(
                self._collection.upsert,
                ids=ids,
                embeddings=vectors,
                documents=texts,
                metadatas=[dict(m) or None for m in metadata],
            )
        self._filled = True
        if self._mirror is not None:
            self._mirror.upsert(ids, texts, metadata, vectors)
            if not self._fits_mirror(self._mirror.size):
                self._stop_mirroring()

    async def has_items(self) -> bool:
        """Whether the collection holds anything, without counting on every call.

        Once it did, that is assumed: a collection emptied since only costs a query that
        finds nothing. While it is empty, it is counted again at most every
        EMPTY_RECHECK_SECONDS (a count costs about a millisecond).
        """
        if self._filled:
            return True
        now = self._clock()
        found = self._found_empty_at
        if found is not None and now - found < EMPTY_RECHECK_SECONDS:
            return False
        if await self.count():
            self._filled = True
            return True
        self._found_empty_at = now
        return False

    async def query(self, text: str, k: int, where: Where | None = None) -> list[Hit]:
        """Embed ``text`` and search, in one hand-off to a worker thread (each costs a few
        tenths of a millisecond, and this runs for every message)."""
        if k <= 0:
            return []
        return await asyncio.to_thread(
            lambda: self._search(self._embedder.embed_query(text), k, where)
        )

    async def query_vector(self, vector: Sequence[float], k: int, where: Where | None) -> list[Hit]:
        if k <= 0:
            return []
        return await asyncio.to_thread(self._search, vector, k, where)

    async def nearest(
        self, query: str | Sequence[float], k: int, scopes: Sequence[str]
    ) -> list[Hit]:
        """The ``k`` items closest to ``query`` (a text, or a vector from this store's
        embedder) among those whose scope is one of ``scopes``, best first."""
        if k <= 0:
            return []
        rows = await self._mirrored(scopes)
        if rows is None:
            if isinstance(query, str):
                return await self.query(query, k, scope_filter(scopes))
            return await self.query_vector(query, k, scope_filter(scopes))
        if isinstance(query, str):
            query = await asyncio.to_thread(self._embedder.embed_query, query)
        if sum(len(r.ids) for r in rows) > INLINE_ROWS:
            found = await asyncio.to_thread(nearest, rows, query, k)
        else:
            found = nearest(rows, query, k)
        return [Hit(r.ids[n], r.texts[n], r.metadata[n], score) for r, n, score in found]

    async def warm(self) -> None:
        """Read the collection into the mirror, if this store keeps one, and use it from now
        on (read again after a failed write). Never raises: Chroma answers instead.

        Until this is called, Chroma answers: a one-shot command (``chat``, ``search``)
        would spend more reading the collection than on its one query.
        """
        if not self._mirrorable:
            return
        if self._mirror is None:
            self._mirror = ScopeMirror(self._embedder.dimension)
        if self._mirror.ready:
            return
        if self._loading is None:
            if self._clock() < self._retry_at:
                return
            self._loading = asyncio.ensure_future(self._load(self._mirror))
        await asyncio.shield(self._loading)

    async def _mirrored(self, scopes: Sequence[str]) -> list[Rows] | None:
        if self._mirror is None:
            return None
        if not self._mirror.ready:
            await self.warm()
        return self._mirror.rows(scopes) if self._mirror is not None else None

    async def _load(self, mirror: ScopeMirror) -> None:
        token = mirror.begin_load()
        try:
            if not self._fits_mirror(await self.count()):
                self._stop_mirroring()
                return
            got = await asyncio.to_thread(
                self._collection.get, include=["embeddings", "documents", "metadatas"]
            )
            ids = got["ids"]
            embeddings = got.get("embeddings")
            installed = mirror.finish_load(
                token,
                ids,
                got.get("documents") or [None] * len(ids),
                got.get("metadatas") or [None] * len(ids),
                embeddings if embeddings is not None else [],
            )
            if installed:
                log.info("%s: %d items kept in memory for scoped searches", self.name, len(ids))
        except Exception:
            self._retry_at = self._clock() + MIRROR_RETRY_SECONDS
            mirror.drop()
            log.warning(
                "%s: could not read the collection into memory; searching in Chroma, "
                "trying again in %.0f s", self.name, MIRROR_RETRY_SECONDS, exc_info=True,
            )  # fmt: skip
        finally:
            self._loading = None

    def _fits_mirror(self, items: int) -> bool:
        return items * self._embedder.dimension * 4 <= MIRROR_MAX_BYTES  # float32

    def _stop_mirroring(self) -> None:
        if self._mirror is None:
            return
        self._mirrorable = False
        log.info(
            "%s: more items than %d MiB of vectors; scoped searches go to Chroma",
            self.name, MIRROR_MAX_BYTES // 2**20,
        )  # fmt: skip
        self._mirror.drop()
        self._mirror = None

    @contextlib.contextmanager
    def _dropping_mirror_on_failure(self) -> Iterator[None]:
        """Around a write: if it fails (or is cancelled), it may still have committed, so the
        mirror is dropped (the next search reads it again)."""
        try:
            yield
        except BaseException:
            if self._mirror is not None:
                self._mirror.drop()
            raise

    def _search(self, vector: Sequence[float], k: int, where: Where | None) -> list[Hit]:
        """The query itself (blocking; Chroma releases the GIL while it searches)."""
        result = self._collection.query(
            query_embeddings=[list(vector)],
            n_results=k,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        ids = result["ids"][0]
        documents = (result.get("documents") or [[]])[0]
        metadatas = (result.get("metadatas") or [[]])[0]
        distances = (result.get("distances") or [[]])[0]
        return [
            Hit(id_, doc or "", dict(meta or {}), 1.0 - float(dist))
            for id_, doc, meta, dist in zip(ids, documents, metadatas, distances, strict=True)
        ]

    async def get(self, where: Where | None = None) -> list[Item]:
        result = await asyncio.to_thread(
            self._collection.get, where=where, include=["documents", "metadatas"]
        )
        documents = result.get("documents") or [None] * len(result["ids"])
        metadatas = result.get("metadatas") or [None] * len(result["ids"])
        return [
            Item(id_, doc or "", dict(meta or {}))
            for id_, doc, meta in zip(result["ids"], documents, metadatas, strict=True)
        ]

    async def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._dropping_mirror_on_failure():
            await asyncio.to_thread(self._collection.delete, ids=list(ids))
        if self._mirror is not None:
            self._mirror.delete(ids)

    async def count(self) -> int:
        return int(await asyncio.to_thread(self._collection.count))

    async def generation(self) -> str:
        """The collection's generation, as the last :meth:`mark_changed` left it (read from
        the store, so another process's writes are seen; about half a millisecond)."""

        def read() -> str:
            metadata = self._client.get_collection(self.name).metadata or {}
            return str(metadata.get(GENERATION_KEY, ""))

        return await asyncio.to_thread(read)

    async def mark_changed(self) -> None:
        """Give the collection a new generation: readers that keep a copy read it again."""

        def write() -> None:
            collection = self._client.get_collection(self.name)
            # Chroma refuses the hnsw settings again, even unchanged; they stay as they were.
            metadata = {
                k: v for k, v in (collection.metadata or {}).items() if not k.startswith("hnsw:")
            }
            collection.modify(metadata={**metadata, GENERATION_KEY: uuid.uuid4().hex})

        await asyncio.to_thread(write)

    async def read_all(self) -> tuple[list[str], list[str], list[Metadata], Any]:
        """Every item: ids, texts, metadata and the matrix of their vectors."""
        got = await asyncio.to_thread(
            self._collection.get, include=["embeddings", "documents", "metadatas"]
        )
        ids: list[str] = list(got["ids"])
        texts: list[str] = [t or "" for t in (got.get("documents") or [None] * len(ids))]
        metadata: list[Metadata] = [
            dict(m or {}) for m in (got.get("metadatas") or [None] * len(ids))
        ]
        vectors = got.get("embeddings")
        return ids, texts, metadata, vectors if vectors is not None else []


def scope_filter(scopes: Sequence[str], extra: Where | None = None) -> Where:
    """A Chroma ``where`` that admits only items whose scope is one of ``scopes``.

    The hot queries (every message) pass no ``extra``: each collection holds one kind of
    item (memories, document chunks), and a clause every item matches made Chroma intersect
    the scope's items with the whole collection — it doubled the query time at 10k items.
    """
    scoped: Where = {"scope": {"$in": list(scopes)}}
    return {"$and": [scoped, extra]} if extra else scoped


async def reembed(client: Any, name: str, embedder: Embedder) -> int:
    """Rebuild collection ``name`` with ``embedder`` from the texts it stores; returns items."""

    def read_all() -> list[Item]:
        try:
            old = client.get_collection(name)
        except Exception:  # no such collection: nothing to carry over
            return []
        result = old.get(include=["documents", "metadatas"])
        metadatas = result.get("metadatas") or [None] * len(result["ids"])
        documents = result.get("documents") or [None] * len(result["ids"])
        return [
            Item(i, d or "", dict(m or {}))
            for i, d, m in zip(result["ids"], documents, metadatas, strict=True)
        ]

    items = await asyncio.to_thread(read_all)
    await drop(client, name)
    store = ChromaStore(client, name, embedder)
    for start in range(0, len(items), 64):
        await store.add(items[start : start + 64])
    return len(items)


async def drop(client: Any, name: str) -> None:
    def delete() -> None:
        # Absent already: that is the goal.
        with contextlib.suppress(Exception):
            client.delete_collection(name)

    await asyncio.to_thread(delete)
