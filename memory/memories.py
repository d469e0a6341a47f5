"""Long-term memories: short facts with a scope, in their own vector collection.

A memory's scope decides who may see it: a channel key (told in that channel, a direct
conversation included) or ``user:<platform>:<id>`` (about a person, shown where that person
takes part). Queries filter by scope inside the vector store, never afterwards (in Chroma,
or in the store's exact in-memory copy: memory/mirror.py). The collection holds memories
only (the "kind" metadata is kept for listing and for tools).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from memory.vectors import ChromaStore, Hit, Item, scope_filter


@dataclass(frozen=True, slots=True)
class Memory:
    id: str
    text: str
    scope: str
    author: str
    created_at: str


def user_scope(platform: str, user_id: str) -> str:
    return f"user:{platform}:{user_id}"


class MemoryStore:
    def __init__(self, store: ChromaStore, *, forget_tolerance: float = 0.02) -> None:
        self.store = store
        # Memories this close to the best match are the same fact told twice: forget all.
        self._tolerance = forget_tolerance

    async def remember(self, scope: str, text: str, *, author: str = "") -> Memory:
        memory = Memory(
            uuid.uuid4().hex,
            " ".join(text.split()),
            scope,
            author,
            datetime.now(UTC).isoformat(timespec="microseconds"),
        )
        await self.store.add([_item(memory)])
        return memory

    async def recall(
        self, scopes: Sequence[str], query: str | Sequence[float], k: int
    ) -> list[tuple[Memory, float]]:
        """The ``k`` memories of ``scopes`` closest to ``query`` (a text, or a vector from this
        store's embedder), best first, with their scores."""
        hits = await self.store.nearest(query, k, scopes)
        return [(_memory(h), h.score) for h in hits]

    async def forget(self, scopes: Sequence[str], text: str, min_score: float) -> list[Memory]:
        """Remove the memories closest to ``text`` (ties with the best match) and return them."""
        hits = await self.recall(scopes, text, 5)
        if not hits or hits[0][1] < min_score:
            return []
        best = hits[0][1]
        gone = [m for m, score in hits if score >= best - self._tolerance]
        await self.store.delete([m.id for m in gone])
        return gone

    async def list(self, scopes: Sequence[str]) -> list[Memory]:
        items = await self.store.get(scope_filter(scopes, {"kind": "memory"}))
        return sorted((_memory(i) for i in items), key=lambda m: (m.created_at, m.id))


def _item(memory: Memory) -> Item:
    return Item(
        memory.id,
        memory.text,
        {
            "kind": "memory",
            "scope": memory.scope,
            "author": memory.author,
            "created_at": memory.created_at,
        },
    )


def _memory(item: Item | Hit) -> Memory:
    meta = item.metadata
    return Memory(
        item.id,
        item.text,
        str(meta.get("scope", "")),
        str(meta.get("author", "")),
        str(meta.get("created_at", "")),
    )
