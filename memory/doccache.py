"""What hybrid document search keeps on disk beside the index, so that the next process does
not compute it again (memory/docsearch.py).

A one-shot ``search`` or ``chat`` over a large folder (10,054 chunks) spent most of its 10.6 s
building the in-memory copy: reading every chunk from Chroma (1.4 s), embedding the
vocabulary's 10,092 words (2.8 s), and stems, BM25 postings, the vocabulary and each chunk's
language (1.9 s). Two files hold them:

- ``document-words.npz``: each vocabulary word's vector, by embedder. A word's vector never
  changes, so a new generation of the collection embeds only the words it adds.
- ``document-copy.npz``: the copy itself (chunks, vectors, what BM25 derived from the text)
  for one *generation* of the collection and its number of chunks. Any other generation, or
  another count (an ingest killed before it could mark its change), or stems and postings
  computed by other code (memory/lexical.py changed, another PyStemmer), and Chroma is read
  again.

Both are written whole or not at all (a scratch file renamed over the old one: the bot and a
one-shot command may write at the same time; the last complete file wins), and checked
against the embedder's name. A file that cannot be read is logged and rebuilt; nothing is
lost, since Chroma stays the store of record. Texts are stored as UTF-8 JSON (lone surrogates
pass through), never as pickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from memory import lexical
from memory.lexical import BM25
from memory.vectors import Metadata

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

WORDS_FILE = "document-words.npz"
COPY_FILE = "document-copy.npz"
# Raised whenever what either file holds changes meaning.
FORMAT = 1


def _derivation() -> str:
    """What the saved stems, postings and languages were computed by: memory/lexical.py's
    code and the stemmer's version. Another one (an upgrade, a changed constant) and the
    copy is built again, without anyone having to remember to raise FORMAT."""
    code = hashlib.sha256(Path(lexical.__file__).read_bytes()).hexdigest()[:16]
    try:
        stemmer = version("PyStemmer")
    except PackageNotFoundError:  # pragma: no cover - a dependency
        stemmer = "unknown"
    return f"lexical {code}, PyStemmer {stemmer}"


DERIVATION = _derivation()
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError)


def load_words(folder: Path, embedder: str) -> dict[str, Vectors]:
    """The word vectors saved by ``embedder``; empty when there are none (or they are
    unreadable, or another embedder's: the words are embedded again)."""
    path = folder / WORDS_FILE
    try:
        with np.load(path, allow_pickle=False) as saved:
            if _json(saved["meta"]) != {"format": FORMAT, "embedder": embedder}:
                return {}
            words = _json(saved["words"])
            vectors = np.asarray(saved["vectors"], dtype=np.float32)
    except FileNotFoundError:
        return {}
    except _UNREADABLE as exc:
        log.warning("%s: cannot read the saved word vectors (%s); embedding them again", path, exc)
        return {}
    if vectors.ndim != 2 or len(vectors) != len(words):
        log.warning("%s: saved word vectors do not match their words; embedding them again", path)
        return {}
    return dict(zip(words, vectors, strict=True))


def save_words(folder: Path, embedder: str, vectors: Mapping[str, Vectors]) -> None:
    if vectors:
        _write(
            folder / WORDS_FILE,
            meta=_bytes({"format": FORMAT, "embedder": embedder}),
            words=_bytes(list(vectors)),
            vectors=np.stack(list(vectors.values())).astype(np.float32),
        )


@dataclass(frozen=True, slots=True)
class Copy:
    """One generation of the documents collection, and what was derived from its texts."""

    ids: list[str]
    texts: list[str]
    metadata: list[Metadata]
    vectors: Vectors
    chunk_ru: npt.NDArray[np.bool_]
    words: list[str]
    bm25: BM25


def load_copy(folder: Path, embedder: str, generation: str, count: int) -> Copy | None:
    """The saved copy of ``generation`` (holding ``count`` chunks), or None."""
    path = folder / COPY_FILE
    expected = {
        "format": FORMAT,
        "derivation": DERIVATION,
        "embedder": embedder,
        "generation": generation,
        "count": count,
    }
    try:
        with np.load(path, allow_pickle=False) as saved:
            if not generation or _json(saved["meta"]) != expected:
                return None  # another generation: Chroma is read again, quietly
            copy = Copy(
                _json(saved["ids"]),
                _json(saved["texts"]),
                _json(saved["metadata"]),
                np.asarray(saved["vectors"], dtype=np.float32),
                np.asarray(saved["chunk_ru"], dtype=bool),
                _json(saved["words"]),
                BM25.restore(
                    count,
                    _json(saved["terms"]),
                    saved["starts"],
                    saved["rows"],
                    saved["contributions"],
                ),
            )
    except FileNotFoundError:
        return None
    except _UNREADABLE as exc:
        log.warning("%s: cannot read the saved copy (%s); reading the index again", path, exc)
        return None
    parts: Sequence[Any] = (copy.ids, copy.texts, copy.metadata, copy.vectors, copy.chunk_ru)
    if any(len(part) != count for part in parts) or copy.vectors.ndim != 2:
        log.warning("%s: the saved copy does not add up; reading the index again", path)
        return None
    return copy


def save_copy(folder: Path, embedder: str, generation: str, copy: Copy) -> None:
    if not generation:
        return  # a collection never marked changed: nothing to tell its versions apart
    terms, starts, rows, contributions = copy.bm25.export()
    meta = {
        "format": FORMAT,
        "derivation": DERIVATION,
        "embedder": embedder,
        "generation": generation,
        "count": len(copy.ids),
    }
    try:
        texts = {
            "meta": _bytes(meta),
            "ids": _bytes(copy.ids),
            "texts": _bytes(copy.texts),
            "metadata": _bytes(copy.metadata),
            "words": _bytes(copy.words),
            "terms": _bytes(terms),
        }
    except (TypeError, ValueError) as exc:  # a metadata value JSON cannot hold
        log.warning("%s: cannot save the copy: %s", folder / COPY_FILE, exc)
        return
    _write(
        folder / COPY_FILE,
        vectors=np.asarray(copy.vectors, dtype=np.float32),
        chunk_ru=copy.chunk_ru,
        starts=starts,
        rows=rows,
        contributions=contributions,
        **texts,
    )


def _write(path: Path, **arrays: npt.NDArray[Any]) -> None:
    """``arrays`` to ``path``, whole or not at all (logged, never raised: it is a cache)."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with scratch.open("wb") as out:
            np.savez(out, allow_pickle=False, **arrays)
        os.replace(scratch, path)
    except OSError as exc:
        log.warning("%s: cannot save: %s", path, exc)
        scratch.unlink(missing_ok=True)


def _bytes(value: object) -> npt.NDArray[np.uint8]:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _json(array: npt.NDArray[Any]) -> Any:
    return json.loads(array.tobytes().decode("utf-8", "surrogatepass"))
