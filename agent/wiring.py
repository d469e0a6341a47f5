"""Builds the parts of a running Beseda from the configuration: the core with its context
machinery (also used by benchmarks and tests), and the knowledge (documents, memories)."""

from __future__ import annotations

import logging
import time

from agent.config import Config
from agent.generators.base import Generator, SamplingParams
from agent.prompt.context import ContextBuilder
from agent.prompt.extraction import MemoryExtractor
from agent.prompt.personas import Personas, load_registry
from agent.prompt.retrieval import Knowledge, Retriever, open_knowledge, thresholds
from agent.prompt.speakers import SpeakerBook
from agent.prompt.window import WindowKeeper, minute_date_source, zone_clock
from agent.runtime import chat_commands
from agent.runtime.background import Background
from agent.runtime.core import Core, Limits
from agent.runtime.limits import Clock
from memory.history import HistoryStore

log = logging.getLogger(__name__)


async def build_knowledge(config: Config, history: HistoryStore) -> Knowledge | None:
    """Documents and memories when ``[retrieval] enabled``; ingests the documents folder
    first when ``[documents] ingest_on_start``."""
    if not config.retrieval.enabled:
        return None
    knowledge = await open_knowledge(config, history)
    if config.documents.ingest_on_start:
        report = await knowledge.documents.ingest(knowledge.documents_path)
        log.info("documents: %s", report.summary())
    return knowledge


def build_core(
    config: Config,
    history: HistoryStore,
    generator: Generator,
    *,
    retriever: Retriever | None = None,
    rate_clock: Clock = time.monotonic,
) -> Core:
    """The core and its context machinery, as configured (also used by benchmarks)."""
    ctx = config.context
    r = config.retrieval
    builder = ContextBuilder(
        generator,
        config.persona.system_prompt,
        max_tokens=config.model.max_tokens,
        safety_margin=config.chat.safety_margin_tokens,
        evict_fraction=ctx.evict_fraction,
        summarize_at=ctx.summarize_at,
        ambient_max_turns=config.chat.ambient_max_turns,
        ambient_share=config.chat.ambient_share,
    )
    background = Background()
    # Raises PersonaError when config.toml names a persona that does not exist.
    personas = Personas(config, load_registry(config), history, generator)
    clock = zone_clock(ctx.timezone)
    window = WindowKeeper(
        history,
        builder,
        generator,
        background,
        history_limit=config.chat.history_limit,
        summaries=ctx.summaries,
        summary_max_tokens=ctx.summary_max_tokens,
        assistant_name=config.persona.name,
        volatile=[minute_date_source(clock, ctx.timezone)] if ctx.date == "minute" else [],
        today=clock if ctx.date == "day" else None,
        personas=personas,
        speaker_names=config.chat.speaker_names,
    )
    window.add_volatile(personas.lore)
    if retriever is not None:
        retriever.use_tokenizer(generator.count_tokens)
        window.add_volatile(retriever.volatile)
    extractor = None
    if retriever is not None and retriever.memories is not None and r.extract_memories:
        extractor = MemoryExtractor(
            generator, retriever.memories, background, duplicate_score=thresholds(config)[2]
        )
    lim = config.limits
    limits = Limits(
        lim.channel_queue, lim.user_burst, lim.user_per_minute, lim.channel_burst,
        lim.channel_per_minute,
    )  # fmt: skip
    return Core(
        history,
        generator,
        window,
        SamplingParams.from_config(config.model),
        background,
        max_message_chars=config.chat.max_message_chars,
        deps=chat_commands.CommandDeps(history, retriever, thresholds(config)[2], personas),
        after_reply=extractor.schedule if extractor is not None else None,
        greeting=personas.greeting,
        limits=limits,
        clock=rate_clock,
        speakers=SpeakerBook(history, config.chat.history_limit),
        language=config.chat.language,
    )
