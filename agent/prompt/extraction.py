"""Automatic memories: durable facts from a conversation, extracted as background work.

The model must answer with JSON following :data:`SCHEMA`; on llama.cpp a grammar enforces it,
so even a small model produces parseable output. Anything else is logged and dropped: a bad
extraction never writes a memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from agent.events import Inbound
from agent.generators.base import ChatMessage, Generator, SamplingParams
from agent.prompt.jobs import BackgroundJobs
from agent.prompt.summarizer import dominant_language
from memory.memories import MemoryStore

log = logging.getLogger(__name__)

MAX_FACTS = 3
SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "facts": {
                "type": "array",
                "items": {"type": "string", "maxLength": 200},
                "maxItems": MAX_FACTS,
            }
        },
        "required": ["facts"],
    }
)
INSTRUCTIONS = {
    "en": (
        "Extract durable facts worth remembering from the user's message: names, preferences, "
        "plans, important dates. Ignore questions and small talk. Write each fact as a short "
        'sentence in English. Answer only with JSON: {"facts": [...]}, an empty list if there '
        "is nothing to remember."
    ),
    "ru": (
        "Выпиши из сообщения пользователя устойчивые факты, которые стоит запомнить: имена, "
        "предпочтения, планы, важные даты. Вопросы и светскую беседу пропускай. Каждый факт — "
        'короткое предложение по-русски. Ответь только JSON: {"facts": [...]}, пустой список, '
        "если запоминать нечего."
    ),
}


def parse_facts(output: str) -> list[str]:
    """The facts in the model's output; raises ValueError when it is not the expected JSON."""
    data = json.loads(output)
    facts = data.get("facts") if isinstance(data, dict) else None
    if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
        raise ValueError(f"expected {{'facts': [str, ...]}}, got {output[:200]!r}")
    return [" ".join(f.split()) for f in facts if len(f.strip()) >= 3][:MAX_FACTS]


class MemoryExtractor:
    def __init__(
        self,
        generator: Generator,
        memories: MemoryStore,
        background: BackgroundJobs,
        *,
        duplicate_score: float,
    ) -> None:
        self._generator = generator
        self._memories = memories
        self._background = background
        # A new fact this similar to a remembered one is the same fact: not stored again.
        self._duplicate = duplicate_score

    def schedule(self, inbound: Inbound, text: str) -> None:
        """Queue extraction from a user's message (called after its reply is delivered)."""
        if len(text.split()) < 3 or text.lstrip().startswith("!"):
            return

        async def job() -> None:
            await self.extract(inbound.channel_key, inbound.author_name, text)

        self._background.submit(f"memories:{inbound.channel_key}", job)

    async def extract(self, channel_key: str, author: str, text: str) -> list[str]:
        """Extract and store facts; returns what was stored. Failures are logged."""
        language = dominant_language([text])
        messages: Sequence[ChatMessage] = [
            ChatMessage("system", INSTRUCTIONS.get(language, INSTRUCTIONS["en"])),
            ChatMessage("user", text),
        ]
        params = SamplingParams(temperature=0.0, max_tokens=200, json_schema=SCHEMA)
        async with self._background.preemptible():
            output = "".join([p async for p in self._generator.stream(messages, params)])
        try:
            facts = parse_facts(output)
        except ValueError as exc:
            # The output quotes the conversation: its text is for DEBUG only.
            log.warning("memory extraction in %s gave unusable output", channel_key)
            log.debug("unusable memory extraction output in %s: %s", channel_key, exc)
            return []
        stored = []
        for fact in facts:
            # Told in this channel, remembered in this channel (a DM stays in the DM).
            similar = await self._memories.recall([channel_key], fact, 1)
            if similar and similar[0][1] >= self._duplicate:
                continue
            await self._memories.remember(channel_key, fact, author=author)
            stored.append(fact)
        if stored:
            log.info("remembered %d facts in %s", len(stored), channel_key)
        return stored
