"""Automatic memory extraction: JSON facts from answered messages, stored in their channel."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.app import build_core
from agent.config import Config, ContextConfig, ModelConfig, PersonaConfig, RetrievalConfig
from agent.generators.base import ChatMessage
from agent.prompt.extraction import INSTRUCTIONS, MemoryExtractor, parse_facts
from agent.prompt.retrieval import Retriever
from agent.runtime.core import Core
from memory.history import SqlHistoryStore
from memory.memories import MemoryStore
from memory.records import Status
from memory.vectors import ChromaStore, open_client
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound
from tests.support.retrieval import WordHashEmbedder


def extracting(facts: dict[str, list[str]] | None = None, broken: bool = False) -> FakeGenerator:
    def answer(messages: Sequence[ChatMessage]) -> str:
        if messages[0].content in INSTRUCTIONS.values():
            if broken:
                return "Sure! The facts are: tea"
            return json.dumps({"facts": (facts or {}).get(messages[-1].content, [])})
        return "ok"

    return FakeGenerator(answer)


async def make(
    history: SqlHistoryStore, tmp_path: Path, generator: FakeGenerator
) -> tuple[Core, MemoryStore]:
    # Mirrored, as `beseda run` has an embedded store: what is stored is recalled at once.
    store = ChromaStore(open_client(tmp_path), "memories", WordHashEmbedder(), mirror=True)
    await store.warm()
    memories = MemoryStore(store)
    retriever = Retriever(history, None, memories, memory_min_score=0.3)
    config = Config(
        model=ModelConfig(max_tokens=20, temperature=0),
        persona=PersonaConfig(system_prompt="You are a test."),
        context=ContextConfig(date="off"),
        retrieval=RetrievalConfig(extract_memories=True, forget_min_score=0.9),
    )
    return build_core(config, history, generator, retriever=retriever), memories


async def test_facts_are_extracted_after_the_reply_into_the_channel(
    history: SqlHistoryStore, tmp_path: Path
) -> None:
    said = "my daughter Vera turns seven on march 3"
    generator = extracting({said: ["Vera turns seven on March 3"]})
    core, memories = await make(history, tmp_path, generator)
    reply = await (await core.submit(inbound(said, channel="discord:1"), RecordingAdapter()))
    assert reply.status is Status.DONE
    await core.background.wait_quiet()
    assert [m.text for m in await memories.list(["discord:1"])] == ["Vera turns seven on March 3"]
    assert await memories.list(["discord:2"]) == []
    # Told again: the same fact is not stored twice.
    await (await core.submit(inbound(said, channel="discord:1"), RecordingAdapter()))
    await core.background.wait_quiet()
    assert len(await memories.list(["discord:1"])) == 1


async def test_unusable_output_writes_nothing(
    history: SqlHistoryStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    core, memories = await make(history, tmp_path, extracting(broken=True))
    await (await core.submit(inbound("I really love green tea a lot"), RecordingAdapter()))
    await core.background.wait_quiet()
    assert await memories.list(["test:1"]) == []
    assert "unusable output" in caplog.text


def test_parse_facts_accepts_only_the_schema() -> None:
    assert parse_facts('{"facts": ["Likes tea", "  x "]}') == ["Likes tea"]
    with pytest.raises(ValueError, match="expected"):
        parse_facts('{"facts": "tea"}')
    with pytest.raises(ValueError, match="Expecting value"):
        parse_facts("tea")


@pytest.mark.model
async def test_the_bundled_model_returns_valid_json_under_the_grammar(tmp_path: Path) -> None:
    from agent.config import load_config  # noqa: PLC0415
    from agent.generators import load_generator  # noqa: PLC0415
    from agent.runtime.background import Background  # noqa: PLC0415
    from tests.conftest import write_config  # noqa: PLC0415

    generator = await load_generator(load_config(write_config(tmp_path / "b.toml")))
    try:
        memories = MemoryStore(ChromaStore(open_client(tmp_path), "memories", WordHashEmbedder()))
        extractor = MemoryExtractor(generator, memories, Background(), duplicate_score=0.99)
        stored = await extractor.extract(
            "console:local", "you", "My name is Arvid and I keep bees in Tromsø."
        )
        # Valid JSON by construction; whether the 135M model picks good facts is not tested.
        assert all(isinstance(f, str) and f for f in stored)
        assert [m.text for m in await memories.list(["console:local"])] == stored
    finally:
        await generator.aclose()
