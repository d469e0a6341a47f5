"""Retrieval into the assembled prompt, scope isolation, and the memory commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.app import build_core
from agent.config import Config, ContextConfig, ModelConfig, PersonaConfig, RetrievalConfig
from agent.events import Inbound
from agent.prompt.retrieval import CITE_INSTRUCTION, PRESENCE_TURNS, SOURCES_HEADER, Retriever
from agent.runtime.core import Core
from memory.documents import DocumentIndex
from memory.history import SqlHistoryStore
from memory.memories import MemoryStore, user_scope
from memory.records import Status
from memory.vectors import ChromaStore, open_client
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound

PERSONA = "You are a test."


async def make(
    history: SqlHistoryStore, tmp_path: Path, **retrieval: object
) -> tuple[Core, FakeGenerator, Retriever, DocumentIndex]:
    from tests.support.retrieval import WordHashEmbedder  # noqa: PLC0415

    client = open_client(tmp_path / "data")
    embedder = WordHashEmbedder()
    documents = ChromaStore(client, "documents", embedder)
    settings = RetrievalConfig.model_validate(
        {"min_score": 0.3, "memory_min_score": 0.3, "forget_min_score": 0.5, **retrieval}
    )
    memories = ChromaStore(client, "memories", embedder, mirror=True)
    await memories.warm()  # as `beseda run` has an embedded store's memories
    retriever = Retriever(
        history,
        documents,
        MemoryStore(memories),
        top_k=settings.top_k,
        min_score=settings.min_score,
        memory_k=settings.memory_k,
        memory_min_score=settings.memory_min_score,
        max_tokens=settings.max_tokens,
    )
    config = Config(
        model=ModelConfig(max_tokens=20, temperature=0),
        persona=PersonaConfig(system_prompt=PERSONA),
        context=ContextConfig(date="off"),
        retrieval=settings,
    )
    generator = FakeGenerator()
    core = build_core(config, history, generator, retriever=retriever)
    return core, generator, retriever, DocumentIndex(documents, chunk_tokens=40)


ZORBEL = "The Zorbel station was founded by Miriam Okafor."


async def ingest(index: DocumentIndex, tmp_path: Path, more: dict[str, str] | None = None) -> None:
    """Index zorbel.txt (a fact no model knows) and ``more`` files from a documents folder."""
    folder = tmp_path / "documents"
    folder.mkdir()
    for name, text in {"zorbel.txt": ZORBEL, **(more or {})}.items():
        (folder / name).write_text(text)
    await index.ingest(folder)


async def ask(core: Core, message: Inbound, adapter: RecordingAdapter | None = None) -> str:
    reply = await (await core.submit(message, adapter or RecordingAdapter()))
    assert reply.status is Status.DONE
    return reply.text


async def test_document_chunks_are_cited_in_the_volatile_block(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    core, generator, _, index = await make(history, tmp_path)
    await ingest(index, tmp_path, {"goats.md": "Goats eat hay and climb rocks."})
    await ask(core, inbound("who founded the zorbel station"))
    await ask(core, inbound("thanks, and where is it"))
    first, second = generator.calls
    # The system prompt (the cached prefix) is untouched; sources ride with the new message.
    assert first[0].content == PERSONA
    assert second[0].content == PERSONA
    block = first[-1].content
    assert block.startswith(
        f"{SOURCES_HEADER}\n[1] (zorbel.txt) The Zorbel station was founded by Miriam Okafor."
        f"\n{CITE_INSTRUCTION}\n\n"
    )
    assert "goats" not in block.lower()  # below the score threshold
    assert block.endswith("who founded the zorbel station")
    # History keeps the user's own words, without the retrieved material.
    assert second[1].content == "who founded the zorbel station"


async def test_a_chunk_the_window_already_shows_is_not_inserted_again(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    core, generator, _, index = await make(history, tmp_path)
    await ingest(index, tmp_path)
    await ask(core, inbound("who founded the zorbel station"))
    await ask(core, inbound(f"I found this: {ZORBEL} Is that right?"))
    await ask(core, inbound("so who founded the zorbel station"))
    first, quoted, again = generator.calls
    assert SOURCES_HEADER in first[-1].content
    # The window shows the chunk's text (the user quoted it): not inserted again.
    assert SOURCES_HEADER not in quoted[-1].content
    assert SOURCES_HEADER not in again[-1].content


@pytest.mark.parametrize(("budget", "chunks"), [(1000, 2), (12, 1), (0, 0)])
async def test_the_volatile_block_keeps_to_its_token_budget(
    history: SqlHistoryStore, tmp_path: Path, budget: int, chunks: int
) -> None:
    core, generator, _, index = await make(history, tmp_path, max_tokens=budget)
    await ingest(index, tmp_path, {"mast.txt": "The Zorbel station has a radio mast."})
    await ask(core, inbound("what is at the zorbel station"))
    block = generator.calls[0][-1].content
    assert block.count("(zorbel.txt)") + block.count("(mast.txt)") == chunks


async def test_remember_list_and_forget(history: SqlHistoryStore, tmp_path: Path) -> None:
    core, _, _, _ = await make(history, tmp_path)
    adapter = RecordingAdapter()
    assert "I will remember" in await ask(core, inbound("!remember the wifi password is hunter2"))
    await ask(core, inbound("!remember Alice likes green tea"))
    listing = await ask(core, inbound("!memories"))
    assert listing.splitlines()[1:] == ["- the wifi password is hunter2", "- Alice likes green tea"]
    forgotten = await ask(core, inbound("!forget wifi password"), adapter)
    assert forgotten == "Forgotten:\n- the wifi password is hunter2"
    assert await ask(core, inbound("!memories")) == "What I remember here:\n- Alice likes green tea"
    assert await ask(core, inbound("!forget quantum chromodynamics")) == (
        "I remember nothing like that here."
    )
    assert "!remember" in await ask(core, inbound("!help"))


async def test_remembered_fact_reaches_this_channels_prompt(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    core, generator, _, _ = await make(history, tmp_path)
    await ask(core, inbound("!remember the deploy window is friday evening", channel="a:1"))
    await ask(core, inbound("when is the deploy window", channel="a:1"))
    assert "- the deploy window is friday evening" in generator.calls[-1][-1].content


async def test_a_memory_the_window_already_shows_is_not_inserted_again(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    core, generator, _, _ = await make(history, tmp_path)
    fact = "- the deploy window is friday evening"
    # The !remember command stays in the history but never in the prompt: the memory is
    # inserted while only the command says it.
    await ask(core, inbound("!remember the deploy window is friday evening", channel="a:1"))
    await ask(core, inbound("when is the deploy window", channel="a:1"))
    assert fact in generator.calls[-1][-1].content
    await ask(core, inbound("Bob wrote: The deploy window is Friday  evening. ok?", channel="a:1"))
    assert fact not in generator.calls[-1][-1].content
    await ask(core, inbound("and when is the deploy window again", channel="a:1"))
    assert fact not in generator.calls[-1][-1].content  # the turn quoting it is in the window


async def test_channel_memory_never_reaches_another_channel(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    core, generator, _, _ = await make(history, tmp_path)
    await ask(core, inbound("!remember the vault code is 4711", channel="discord:A"))
    # The same person talks in channel B: still nothing from A.
    await ask(core, inbound("what is the vault code", channel="discord:B"))
    prompt_b = generator.render_prompt(generator.calls[-1])
    assert "4711" not in prompt_b
    await ask(core, inbound("what is the vault code", channel="discord:A"))
    assert "4711" in generator.render_prompt(generator.calls[-1])


async def test_direct_message_memory_never_reaches_a_public_channel(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    core, generator, _, _ = await make(history, tmp_path)
    dm = Inbound(
        platform="discord",
        channel_key="discord:dm-alice",
        author_id="alice",
        author_name="alice",
        text="!remember my diagnosis is hypertension",
        is_direct=True,
    )
    await ask(core, dm)
    await ask(core, inbound("tell me about my diagnosis", channel="discord:general"))
    assert "hypertension" not in generator.render_prompt(generator.calls[-1])
    listing = await ask(core, inbound("!memories", channel="discord:general"))
    assert "hypertension" not in listing


async def test_user_memories_follow_the_people_present(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    core, generator, retriever, _ = await make(history, tmp_path)
    assert retriever.memories is not None
    await retriever.memories.remember(user_scope("discord", "bob"), "bob is allergic to nuts")
    await ask(core, inbound("is anyone allergic to nuts", channel="discord:1", author="bob"))
    assert "bob is allergic to nuts" in generator.calls[-1][-1].content
    # Bob never spoke in channel 2: his memories stay out of it.
    await ask(core, inbound("is anyone allergic to nuts", channel="discord:2", author="carol"))
    assert "allergic" not in generator.calls[-1][-1].content.replace(
        "is anyone allergic to nuts", ""
    )


async def test_aboutme_follows_its_author_to_other_channels_and_can_be_forgotten(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    core, generator, _, _ = await make(history, tmp_path)
    told = await ask(
        core, inbound("!aboutme I am vegetarian", channel="discord:dm-bob", author="bob")
    )
    assert told.startswith("I will remember about you")
    await ask(core, inbound("suggest a vegetarian dinner", channel="discord:5", author="bob"))
    assert "- I am vegetarian" in generator.calls[-1][-1].content
    # Carol's channel, where Bob never spoke: his fact stays out.
    await ask(core, inbound("suggest a vegetarian dinner", channel="discord:6", author="carol"))
    assert "I am vegetarian" not in generator.calls[-1][-1].content
    # Not across platforms either: user scopes are per platform.
    await ask(core, inbound("suggest a vegetarian dinner", channel="matrix:!r:hs", author="bob"))
    assert "I am vegetarian" not in generator.calls[-1][-1].content
    gone = await ask(core, inbound("!forget vegetarian", channel="discord:5", author="bob"))
    assert gone == "Forgotten:\n- I am vegetarian"


@pytest.mark.parametrize("scopes", [["discord:B"], ["global", "discord:B"]])
async def test_scope_filter_holds_inside_the_store(
    history: SqlHistoryStore, tmp_path: Path, scopes: list[str]
) -> None:
    _, _, retriever, _ = await make(history, tmp_path)
    assert retriever.memories is not None
    await retriever.memories.remember("discord:A", "alpha secret")
    found = await retriever.memories.recall(scopes, "alpha secret", 5)
    assert found == []


async def test_channel_documents_are_searchable_only_in_their_channel(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    _, _, retriever, index = await make(history, tmp_path)
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "plan.txt").write_text("The launch codename is Bluebird.")
    await index.ingest(upload, scope="discord:A")
    found = await retriever.search("discord:A", "launch codename")
    assert [(p.source, p.scope) for p in found] == [("plan.txt", "discord:A")]
    assert await retriever.search("discord:B", "launch codename") == []
    assert await retriever.search(None, "launch codename") == []


async def test_one_message_is_embedded_once_for_documents_and_memories(
    history: SqlHistoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.retrieval import WordHashEmbedder  # noqa: PLC0415

    core, generator, _, index = await make(history, tmp_path)
    await ingest(index, tmp_path)
    await ask(core, inbound("!remember the zorbel station has a red roof"))
    queries: list[str] = []
    reads: list[str] = []
    embed_query, conversation = WordHashEmbedder.embed_query, history.conversation

    def counting_embed(self: WordHashEmbedder, text: str) -> list[float]:
        queries.append(text)
        return embed_query(self, text)

    async def counting_conversation(key: str, **kwargs: object) -> object:
        if kwargs.get("limit") == PRESENCE_TURNS:  # the retriever's "who is here" read
            reads.append(key)
        return await conversation(key, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(WordHashEmbedder, "embed_query", counting_embed)
    monkeypatch.setattr(history, "conversation", counting_conversation)
    await ask(core, inbound("tell me about the zorbel station"))
    block = generator.calls[-1][-1].content
    assert "Miriam Okafor" in block  # both collections answered
    assert "red roof" in block
    assert queries == ["tell me about the zorbel station"]
    assert reads == ["test:1"]  # who takes part is read once, not once per collection


async def test_an_answer_from_a_document_names_its_source(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    core, generator, _, index = await make(history, tmp_path)
    await ingest(index, tmp_path)
    generator._answer = lambda _messages: "It was founded by Miriam Okafor."
    adapter = RecordingAdapter()
    answer = await ask(core, inbound("who founded the zorbel station"), adapter)
    assert answer == "It was founded by Miriam Okafor.\n\nSources: [1] zorbel.txt"
    assert adapter.replies[-1].final == answer  # delivered as stored
    turns = await history.conversation("test:1", limit=10)
    assert turns[-1].text == answer
    generator._answer = lambda _messages: "Good night!"
    assert await ask(core, inbound("thanks, good night")) == "Good night!"
