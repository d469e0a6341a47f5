"""The in-memory copy of the memories collection (memory/mirror.py): it must rank exactly as
cosine similarity does, on Chroma's score scale, and follow every write, even one made while
it loads or one that fails."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from memory import vectors
from memory.vectors import MIRROR_RETRY_SECONDS, ChromaStore, Hit, Item, open_client, scope_filter
from tests.support.retrieval import CountingCollection, WordHashEmbedder

WORDS = [
    *("cat", "dog", "river", "stone", "cloud", "night", "music", "train", "apple", "kiwi"),
    *("vault", "code", "sister", "birthday", "кошка", "собака", "река", "камень", "облако"),
    *("ночь", "музыка", "поезд", "яблоко", "сестра"),
]
SCOPES = ["global", "discord:1", "discord:2", "user:discord:7", "matrix:!a:x"]
QUERIES = ["cat river night", "кошка ночь", "vault code", "sister birthday apple", "поезд"]
SEARCHED = [["global", "discord:1", "user:discord:7"], ["discord:2"], SCOPES, ["nobody"]]


def corpus(n: int, seed: int = 7) -> list[Item]:
    rng = random.Random(seed)
    return [
        Item(
            f"m{i}",
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))),
            {"kind": "memory", "scope": rng.choice(SCOPES), "author": "bench"},
        )
        for i in range(n)
    ]


def oracle(items: Sequence[Item], query: str, scopes: Sequence[str]) -> dict[str, float]:
    """Every admitted item's cosine similarity, computed here from the embedder's vectors."""
    embedder = WordHashEmbedder()
    q = embedder.embed_query(query)
    scores = {}
    for item in items:
        if item.metadata.get("scope") in scopes:
            v = embedder.embed_passages([item.text])[0]
            dot = sum(a * b for a, b in zip(q, v, strict=True))
            norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in v))
            scores[item.id] = dot / norm
    return scores


def assert_ranked(hits: Sequence[Hit], expected: dict[str, float], k: int) -> None:
    """The ``k`` best by the oracle, best first (among equal scores, any of them)."""
    best = sorted(expected.values(), reverse=True)[:k]
    assert [h.score for h in hits] == pytest.approx(best, abs=1e-5)
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.id], abs=1e-5)


def counting(store: ChromaStore) -> CountingCollection:
    wrapped = CountingCollection(store._collection)
    store._collection = wrapped
    return wrapped


class UnnormalisedEmbedder(WordHashEmbedder):
    """Vectors of varying length: cosine similarity must not depend on it."""

    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = super().embed_passages(texts)
        return [[x * (1 + len(t) % 5) for x in v] for t, v in zip(texts, vectors, strict=True)]

    def embed_query(self, text: str) -> list[float]:
        return [x * 7 for x in super().embed_query(text)]


async def test_the_mirror_ranks_by_cosine_on_chromas_scale(tmp_path: Path) -> None:
    items = corpus(400)
    client = open_client(tmp_path)
    mirrored = ChromaStore(client, "memories", UnnormalisedEmbedder(), mirror=True)
    await mirrored.add(items)
    await mirrored.warm()
    plain = ChromaStore(client, "memories", UnnormalisedEmbedder())
    chroma = counting(mirrored)
    for query in QUERIES:
        for scopes in SEARCHED:
            hits = await mirrored.nearest(query, 5, scopes)
            assert_ranked(hits, oracle(items, query, scopes), 5)
            # Chroma's own answer for the same query: the same best scores, on one scale
            # (the thresholds in config.toml apply to both; ties may pick other ids).
            from_chroma = await plain.nearest(query, 5, scopes)
            assert [h.score for h in hits] == pytest.approx(
                [h.score for h in from_chroma], abs=1e-5
            )
            assert all(h.metadata["scope"] in scopes for h in hits)
    assert chroma.queries == 0
    texts = {i.id: i.text for i in items}
    hit = (await mirrored.nearest("vault code", 1, SCOPES))[0]
    assert hit.text == texts[hit.id]
    assert hit.metadata == {"kind": "memory", "scope": hit.metadata["scope"], "author": "bench"}


async def test_writes_after_the_load_are_searched_at_once(tmp_path: Path) -> None:
    items = corpus(120)
    store = ChromaStore(open_client(tmp_path), "memories", WordHashEmbedder(), mirror=True)
    await store.add(items)
    await store.warm()
    chroma = counting(store)
    new = Item("new", "the vault code is 4711", {"scope": "discord:2"})
    moved = Item(items[0].id, "my sister birthday is in may", {"scope": "user:discord:9"})
    await store.add([new, moved])
    await store.delete([items[1].id])
    before = items[0]
    items = [new, moved, *(i for i in items[2:])]
    # Moved to another scope: gone from its old one.
    found = await store.nearest(before.text, 50, [str(before.metadata["scope"])])
    assert before.id not in {h.id for h in found}
    for query in QUERIES:
        for scopes in [*SEARCHED, ["user:discord:9"]]:
            assert_ranked(await store.nearest(query, 4, scopes), oracle(items, query, scopes), 4)
    assert [h.id for h in await store.nearest("vault code 4711", 1, ["discord:2"])] == ["new"]
    assert chroma.queries == 0


async def test_a_write_made_while_the_mirror_loads_is_not_lost(tmp_path: Path) -> None:
    items = corpus(60)
    store = ChromaStore(open_client(tmp_path), "memories", WordHashEmbedder(), mirror=True)
    await store.add(items)
    # The load reads the collection, then stalls until the writes below are done: what it
    # read has the deleted item and lacks the added one.
    read, go_on = threading.Event(), threading.Event()
    real_get = store._collection.get

    def stalled_get(**kwargs: Any) -> Any:
        result = real_get(**kwargs)
        read.set()
        go_on.wait(10)
        return result

    store._collection = CountingCollection(store._collection)
    store._collection.get = stalled_get  # type: ignore[attr-defined]
    loading = asyncio.ensure_future(store.warm())
    assert await asyncio.to_thread(read.wait, 10)
    await store.add([Item("new", "the vault code is 4711", {"scope": "global"})])
    await store.delete([items[0].id])
    go_on.set()
    await loading
    hits = await store.nearest("vault code 4711", 60, SCOPES)
    assert hits[0].id == "new"
    assert items[0].id not in {h.id for h in hits}
    assert store._collection.queries == 0


async def test_a_failed_write_drops_the_mirror_and_it_is_read_again(tmp_path: Path) -> None:
    store = ChromaStore(open_client(tmp_path), "memories", WordHashEmbedder(), mirror=True)
    await store.add(corpus(30))
    await store.warm()
    real_upsert = store._collection.upsert

    def committed_then_failed(**kwargs: Any) -> None:
        real_upsert(**kwargs)
        raise RuntimeError("connection reset after commit")

    store._collection.upsert = committed_then_failed  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await store.add([Item("new", "the vault code is 4711", {"scope": "global"})])
    chroma = counting(store)
    [hit] = await store.nearest("vault code 4711", 1, ["global"])
    assert hit.id == "new"
    assert chroma.queries == 0  # read again into memory, not answered by Chroma


async def test_a_failed_load_searches_chroma_and_tries_again_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    items = corpus(50)
    store = ChromaStore(
        open_client(tmp_path), "memories", WordHashEmbedder(), mirror=True, clock=lambda: now[0]
    )
    await store.add(items)
    chroma = counting(store)
    real_get = store._collection.get

    loads = []

    def broken_get(**kwargs: Any) -> Any:
        loads.append(kwargs)
        raise RuntimeError("disk I/O error")

    chroma.get = broken_get  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="memory.vectors"):
        await store.warm()
        hits = await store.nearest("cat river night", 3, SCOPES)
    assert_ranked(hits, oracle(items, "cat river night", SCOPES), 3)
    assert chroma.queries == 1
    assert "could not read the collection into memory" in caplog.text
    await store.nearest("cat river night", 3, SCOPES)
    # Not read again at once: each search would pay for a load that fails.
    assert (len(loads), chroma.queries) == (1, 2)
    chroma.get = real_get  # type: ignore[attr-defined]
    now[0] += MIRROR_RETRY_SECONDS
    assert_ranked(
        await store.nearest("cat river night", 3, SCOPES),
        oracle(items, "cat river night", SCOPES),
        3,
    )
    assert chroma.queries == 2


async def test_a_collection_too_big_to_mirror_is_searched_in_chroma(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = corpus(40)
    # Room for 30 items of 64 float32 values.
    monkeypatch.setattr(vectors, "MIRROR_MAX_BYTES", 30 * 64 * 4)
    store = ChromaStore(open_client(tmp_path), "memories", WordHashEmbedder(), mirror=True)
    await store.add(items[:20])
    await store.warm()
    chroma = counting(store)
    assert_ranked(
        await store.nearest("кошка ночь", 3, SCOPES), oracle(items[:20], "кошка ночь", SCOPES), 3
    )
    assert chroma.queries == 0
    await store.add(items[20:])  # past the limit: the copy is let go
    assert not store.mirrored
    assert_ranked(
        await store.nearest("кошка ночь", 3, SCOPES), oracle(items, "кошка ночь", SCOPES), 3
    )
    assert chroma.queries == 1
    # And a store opened on a collection already too big never loads it.
    reopened = ChromaStore(open_client(tmp_path), "memories", WordHashEmbedder(), mirror=True)
    counted = counting(reopened)
    await reopened.warm()
    await reopened.nearest("кошка ночь", 3, SCOPES)
    assert counted.queries == 1
    assert not reopened.mirrored


async def test_items_without_a_scope_are_never_searched(tmp_path: Path) -> None:
    store = ChromaStore(open_client(tmp_path), "memories", WordHashEmbedder(), mirror=True)
    await store.add([Item("bare", "the vault code", {}), Item("g", "a cat", {"scope": "global"})])
    await store.warm()
    assert [h.id for h in await store.nearest("vault code", 5, SCOPES)] == ["g"]
    # As in Chroma: a scope filter admits only items that have one of the scopes.
    found = await store.query("vault code", 5, scope_filter(SCOPES))
    assert [h.id for h in found] == ["g"]


async def test_until_warmed_chroma_answers(tmp_path: Path) -> None:
    # A one-shot command (`chat`, `search`) asks once: reading every memory would cost more.
    items = corpus(30)
    store = ChromaStore(open_client(tmp_path), "memories", WordHashEmbedder(), mirror=True)
    await store.add(items)
    chroma = counting(store)
    hits = await store.nearest("vault code", 3, SCOPES)
    assert_ranked(hits, oracle(items, "vault code", SCOPES), 3)
    assert (chroma.loads, chroma.queries) == (0, 1)
    await store.warm()
    assert_ranked(
        await store.nearest("vault code", 3, SCOPES), oracle(items, "vault code", SCOPES), 3
    )
    assert (chroma.loads, chroma.queries) == (1, 1)
