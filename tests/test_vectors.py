"""Vector store contract: the same assertions against embedded Chroma and a Chroma server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.app import App
from agent.config import load_config
from memory.memories import MemoryStore
from memory.vectors import (
    EMPTY_RECHECK_SECONDS,
    ChromaStore,
    EmbedderMismatchError,
    Item,
    open_client,
    scope_filter,
)
from tests.conftest import write_config
from tests.support.fakes import FakeGenerator
from tests.support.retrieval import WordHashEmbedder, chroma_server

CHROMA = Path(sys.executable).parent / "chroma"


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with chroma_server(CHROMA, tmp_path_factory.mktemp("chroma-server") / "db") as url:
        yield url


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.slow)])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "embedded":
        return open_client(tmp_path)
    url: str = request.getfixturevalue("chroma_url")
    client = open_client(tmp_path, url)
    # Each test gets fresh collections on the shared server.
    for collection in client.list_collections():
        client.delete_collection(getattr(collection, "name", collection))
    return client


ITEMS = [
    Item("a1", "the cat sleeps on the warm sofa", {"scope": "global", "source": "cats.txt"}),
    Item("a2", "кошка спит на тёплом диване", {"scope": "discord:1", "source": "ru.txt"}),
    Item("a3", "stock prices fell sharply on monday", {"scope": "discord:2", "source": "m.txt"}),
]


async def test_query_ranks_by_similarity_and_reports_cosine(client: Any) -> None:
    store = ChromaStore(client, "docs", WordHashEmbedder())
    await store.add(ITEMS)
    assert await store.count() == 3
    hits = await store.query("where does the cat sleep", 3)
    assert hits[0].id == "a1"
    assert hits[0].metadata["source"] == "cats.txt"
    assert hits[0].text == ITEMS[0].text
    assert 0.0 < hits[0].score <= 1.0
    assert hits[0].score > hits[-1].score


async def test_scope_filter_is_applied_inside_the_query(client: Any) -> None:
    store = ChromaStore(client, "docs", WordHashEmbedder())
    await store.add(ITEMS)
    hits = await store.query("stock prices fell", 3, scope_filter(["global", "discord:1"]))
    assert {h.id for h in hits} == {"a1", "a2"}
    only = await store.get(scope_filter(["discord:2"]))
    assert [i.id for i in only] == ["a3"]


async def test_upsert_replaces_and_delete_removes(client: Any) -> None:
    store = ChromaStore(client, "docs", WordHashEmbedder())
    await store.add(ITEMS)
    await store.add([Item("a1", "dogs bark at night", {"scope": "global", "source": "dogs.txt"})])
    assert await store.count() == 3
    hits = await store.query("dogs bark", 1)
    assert (hits[0].id, hits[0].metadata["source"]) == ("a1", "dogs.txt")
    await store.delete(["a1", "a2"])
    assert [i.id for i in await store.get()] == ["a3"]


async def test_other_embedder_is_refused_with_reindex_command(client: Any) -> None:
    await ChromaStore(client, "docs", WordHashEmbedder(64)).add(ITEMS)
    with pytest.raises(EmbedderMismatchError, match="ingest --reindex") as err:
        ChromaStore(client, "docs", WordHashEmbedder(32))
    assert "dimension 64" in str(err.value)
    with pytest.raises(EmbedderMismatchError, match="fake:other"):
        ChromaStore(client, "docs", WordHashEmbedder(64, name="fake:other"))


async def test_embedded_store_persists_across_clients(tmp_path: Path) -> None:
    await ChromaStore(open_client(tmp_path), "docs", WordHashEmbedder()).add(ITEMS)
    reopened = ChromaStore(open_client(tmp_path), "docs", WordHashEmbedder())
    assert await reopened.count() == 3


async def test_has_items_counts_an_empty_collection_again_only_after_a_while(
    client: Any,
) -> None:
    now = [100.0]
    store = ChromaStore(client, "docs", WordHashEmbedder(), clock=lambda: now[0])
    other = ChromaStore(client, "docs", WordHashEmbedder())  # e.g. `beseda ingest`
    assert not await store.has_items()
    await other.add(ITEMS[:1])
    now[0] += EMPTY_RECHECK_SECONDS / 2
    assert not await store.has_items()  # not counted again yet
    now[0] += EMPTY_RECHECK_SECONDS / 2
    assert await store.has_items()
    own = ChromaStore(client, "notes", WordHashEmbedder(), clock=lambda: now[0])
    assert not await own.has_items()
    await own.add(ITEMS[1:2])
    assert await own.has_items()  # its own add is seen at once


@pytest.mark.slow
async def test_memories_on_a_chroma_server_are_not_mirrored(
    tmp_path: Path, chroma_url: str
) -> None:
    # Other Beseda processes (one per bot account) may share the server and write memories
    # this one would never see in a copy of its own: every search asks the server.
    path = write_config(
        tmp_path / "beseda.toml", vectors={"url": chroma_url}, context={"date": "off"}
    )
    async with App.open(load_config(path, environ={}), generator=FakeGenerator()) as app:
        assert app.knowledge is not None
        memories = app.knowledge.memories
        assert not memories.store.mirrored
        other = MemoryStore(
            ChromaStore(open_client(tmp_path, chroma_url), "memories", memories.store.embedder)
        )
        await memories.store.warm()  # as `beseda run` does at start
        assert await memories.recall(["chat:1"], "what is the vault code", 1) == []
        await other.remember("chat:1", "the vault code is 4711")
        [(memory, _score)] = await memories.recall(["chat:1"], "what is the vault code", 1)
        assert memory.text == "the vault code is 4711"
