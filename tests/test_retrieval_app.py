"""The wiring through App.open: ingest on start, re-index after an embedder change."""

from __future__ import annotations

from pathlib import Path

from agent.app import App
from agent.config import load_config
from memory.vectors import ChromaStore, reembed
from tests.conftest import write_config
from tests.support.fakes import FakeGenerator, Probe
from tests.support.retrieval import CountingCollection, WordHashEmbedder


async def test_ingest_on_start_puts_documents_into_the_prompt(tmp_path: Path) -> None:
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "zorbel.md").write_text("The Zorbel station was founded by Miriam Okafor.\n")
    path = write_config(
        tmp_path / "beseda.toml",
        documents={"path": docs.as_posix(), "ingest_on_start": True},
        context={"date": "off"},
    )
    async with App.open(load_config(path), generator=FakeGenerator()) as app:
        assert app.knowledge is not None
        prompt = await app.core.prompt_for("console:local", "Кто основал станцию Зорбел?")
        assert "[1] (zorbel.md) The Zorbel station was founded by Miriam Okafor." in (
            prompt.messages[-1].content
        )
        # Small talk is below the threshold: no sources, the message alone.
        chat = await app.core.prompt_for("console:local", "hello there")
        assert chat.messages[-1].content == "hello there"


async def test_disabled_retrieval_opens_no_vector_store(tmp_path: Path) -> None:
    path = write_config(tmp_path / "beseda.toml", retrieval={"enabled": False})
    async with App.open(load_config(path), generator=FakeGenerator()) as app:
        assert app.knowledge is None
        assert not (tmp_path / "data" / "chroma").exists()
        reply = await app.core.prompt_for("console:local", "hi")
        assert reply.messages[-1].content == "hi"


async def test_reembed_carries_memories_to_a_new_embedder(tmp_path: Path) -> None:
    from memory.memories import MemoryStore  # noqa: PLC0415
    from memory.vectors import open_client  # noqa: PLC0415

    client = open_client(tmp_path)
    old = MemoryStore(ChromaStore(client, "memories", WordHashEmbedder(64)))
    await old.remember("discord:1", "the vault code is 4711")
    new_embedder = WordHashEmbedder(32, name="fake:new")
    assert await reembed(client, "memories", new_embedder) == 1
    new = MemoryStore(ChromaStore(client, "memories", new_embedder))
    [(memory, _score)] = await new.recall(["discord:1"], "vault code", 1)
    assert (memory.text, memory.scope) == ("the vault code is 4711", "discord:1")


async def test_memories_are_read_into_memory_at_start_and_searched_there(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path / "beseda.toml", context={"date": "off"})
    async with App.open(load_config(path, environ={}), generator=FakeGenerator()) as first:
        assert first.knowledge is not None
        await first.knowledge.memories.remember("chat:1", "the vault code is 4711")

    async with App.open(load_config(path, environ={}), generator=FakeGenerator()) as app:
        assert app.knowledge is not None
        store = app.knowledge.memories.store
        assert store.mirrored  # embedded Chroma: only this process writes memories
        chroma = CountingCollection(store._collection)
        store._collection = chroma
        before: list[tuple[int, int]] = []
        prompts: list[str] = []

        async def first_message() -> None:
            before.append((chroma.loads, chroma.queries))
            prompt = await app.core.prompt_for("chat:1", "what is the vault code?")
            prompts.append(prompt.messages[-1].content)

        await app.serve([Probe(first_message)])
    assert before == [(1, 0)]  # read before the first message; no Chroma query
    assert "- the vault code is 4711" in prompts[0]
    assert chroma.queries == 0
