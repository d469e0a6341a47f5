"""An exact copy of a collection's vectors in memory, by scope, for scope-filtered queries.

Chroma (1.5, embedded) answers a scope-filtered query by reading the admitted ids from its
metadata tables and then searching its HNSW graph with them as an allow-list; both steps
grow with the whole collection, not with what the filter admits. Measured on a 2-core VM,
a filter admitting one item in 200, at 1k, 10k, 30k items: 1.7, 4.7, 12 ms, on every
message (Chroma's unfiltered query stays at 1.4 ms). A memory query admits only the
channel's memories and those of the people in it (tens, a few hundred), so ranking exactly
those by a dot product takes microseconds, and it is exact where HNSW with a tight
allow-list is approximate.

Chroma stays the store of record: the mirror is read from it once the store is warmed
(``beseda run`` does it at start; a one-shot command asks Chroma), then follows the writes
made through the same :class:`~memory.vectors.ChromaStore` (each applied after Chroma took
it, so a write that fails is never mirrored; the store drops the mirror then, because the
write may have committed). That is exact only while that store is the collection's only
writer: true of the memories of an embedded Chroma (the serving process alone writes them),
not of a Chroma server other processes share, nor of document chunks (``ingest`` runs beside
the bot). Those query Chroma.

A load reads the collection on a worker thread while the event loop goes on; writes
mirrored meanwhile are kept and replayed on the loaded copy (a write is idempotent: an
upsert or a delete by id), so the copy has them whether the read saw them or not.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

Metadata = Mapping[str, Any]
Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Rows:
    """One scope's items; replaced whole on a write, so a search may read it off the loop."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    metadata: tuple[Metadata, ...]
    vectors: Vectors  # one unit-length row per item


@dataclass(frozen=True, slots=True)
class _Upsert:
    ids: Sequence[str]
    texts: Sequence[str]
    metadata: Sequence[Metadata]
    vectors: Vectors


_Write = _Upsert | tuple[str, ...]  # an upsert, or the ids deleted


class ScopeMirror:
    """Items by their ``scope`` metadata; items without one are never searched."""

    def __init__(self, dimension: int) -> None:
        self._dimension = dimension
        self._scopes: dict[str, Rows] | None = None
        self._scope_of: dict[str, str] = {}
        self._pending: list[_Write] | None = None  # writes mirrored while a load reads
        self._load = 0  # which load may still install its result

    @property
    def ready(self) -> bool:
        return self._scopes is not None

    @property
    def size(self) -> int:
        return len(self._scope_of)

    def begin_load(self) -> int:
        """Start a load; pass the token to :meth:`finish_load`."""
        self._load += 1
        self._pending = []
        return self._load

    def finish_load(
        self,
        token: int,
        ids: Sequence[str],
        texts: Sequence[str | None],
        metadata: Sequence[Metadata | None],
        vectors: Any,
    ) -> bool:
        """Install what the load read, with the writes made meanwhile; False if it was dropped."""
        if token != self._load or self._pending is None:
            return False
        pending, self._pending = self._pending, None
        self._scopes, self._scope_of = {}, {}
        self._upsert(_upsert(ids, texts, metadata, vectors, self._dimension))
        for write in pending:
            self._apply(write)
        return True

    def drop(self) -> None:
        """Forget everything (a write may have committed unseen); a load in flight is void."""
        self._scopes, self._scope_of, self._pending = None, {}, None
        self._load += 1

    def upsert(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadata: Sequence[Metadata],
        vectors: Any,
    ) -> None:
        self._write(_upsert(ids, texts, metadata, vectors, self._dimension))

    def delete(self, ids: Sequence[str]) -> None:
        self._write(tuple(ids))

    def rows(self, scopes: Iterable[str]) -> list[Rows] | None:
        """The items of ``scopes``; None while the mirror is not loaded."""
        if self._scopes is None:
            return None
        found = (self._scopes.get(scope) for scope in dict.fromkeys(scopes))
        return [rows for rows in found if rows is not None]

    def _write(self, write: _Write) -> None:
        if self._pending is not None:
            self._pending.append(write)
        if self._scopes is not None:
            self._apply(write)

    def _apply(self, write: _Write) -> None:
        if isinstance(write, _Upsert):
            self._upsert(write)
        else:
            self._remove(write)

    def _upsert(self, write: _Upsert) -> None:
        assert self._scopes is not None
        self._remove(write.ids)
        grouped: dict[str, list[int]] = {}
        for n, meta in enumerate(write.metadata):
            scope = meta.get("scope")
            if isinstance(scope, str):
                grouped.setdefault(scope, []).append(n)
        for scope, picked in grouped.items():
            old = self._scopes.get(scope)
            new = Rows(
                tuple(write.ids[n] for n in picked),
                tuple(write.texts[n] for n in picked),
                tuple(write.metadata[n] for n in picked),
                _unit(write.vectors[picked]),  # a fresh array (indexed by a list)
            )
            if old is not None:
                new = Rows(
                    old.ids + new.ids,
                    old.texts + new.texts,
                    old.metadata + new.metadata,
                    np.concatenate([old.vectors, new.vectors]),
                )
            self._scopes[scope] = new
            self._scope_of.update((id_, scope) for id_ in new.ids)

    def _remove(self, ids: Iterable[str]) -> None:
        assert self._scopes is not None
        gone: dict[str, set[str]] = {}
        for id_ in ids:
            scope = self._scope_of.pop(id_, None)
            if scope is not None:
                gone.setdefault(scope, set()).add(id_)
        for scope, removed in gone.items():
            old = self._scopes[scope]
            keep = [n for n, id_ in enumerate(old.ids) if id_ not in removed]
            if not keep:
                del self._scopes[scope]
                continue
            self._scopes[scope] = Rows(
                tuple(old.ids[n] for n in keep),
                tuple(old.texts[n] for n in keep),
                tuple(old.metadata[n] for n in keep),
                old.vectors[keep],
            )


def nearest(rows: Sequence[Rows], vector: Sequence[float], k: int) -> list[tuple[Rows, int, float]]:
    """The ``k`` items of ``rows`` closest to ``vector``, best first: each as its scope's
    rows, its index there and its cosine similarity."""
    if k <= 0 or not rows:
        return []
    query = _unit(np.array(vector, dtype=np.float32).reshape(1, -1))[0]
    scores = np.concatenate([r.vectors @ query for r in rows])
    if len(scores) > k:
        top = np.argpartition(-scores, k - 1)[:k]
        best = top[np.argsort(-scores[top], kind="stable")]
    else:
        best = np.argsort(-scores, kind="stable")
    starts = list(accumulate((len(r.ids) for r in rows), initial=0))
    found = []
    for index in best.tolist():
        at = bisect_right(starts, index) - 1
        found.append((rows[at], index - starts[at], float(scores[index])))
    return found


def _upsert(
    ids: Sequence[str],
    texts: Sequence[str | None],
    metadata: Sequence[Metadata | None],
    vectors: Any,
    dimension: int,
) -> _Upsert:
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(ids), dimension)
    # Read-only: a search hands these out in its hits.
    frozen = [MappingProxyType(dict(m or {})) for m in metadata]
    return _Upsert(list(ids), [t or "" for t in texts], frozen, matrix)


def _unit(matrix: Vectors) -> Vectors:
    """``matrix``'s rows scaled to unit length, in place (pass an array of your own)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix /= np.where(norms > 0, norms, 1)
    return matrix
