"""Runs the real App with the console adapter (one message per stdin line), for the crash
tests in test_recovery.py:
``python -m tests.support.recovery_driver DATA_DIR stall|answer|recall``.

``stall`` writes one word of each reply, says STALLED on stderr and then hangs (the test
kills it with SIGKILL); ``answer`` answers "answer to: <message>" at once; ``recall``
answers "saw: " and every user turn of its prompt, joined by " | ". A line starting with "~ " is
an ambient message from Bob (context only, as a platform marks messages not addressed to
the bot in a channel that opted in).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from adapters.console import ConsoleAdapter
from agent.app import App
from agent.config import (
    Config,
    ContextConfig,
    PersonaConfig,
    RecoveryConfig,
    RetrievalConfig,
    StorageConfig,
)
from agent.events import Inbound
from agent.generators.base import ChatMessage, GenerationStats, SamplingParams, TokenStream
from tests.support.fakes import FakeGenerator


class DriverGenerator(FakeGenerator):
    def __init__(self, stall: bool, recall: bool = False) -> None:
        super().__init__(recalled if recall else answered, concurrency=1)
        self._stall = stall

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        if not self._stall:
            return super().stream(messages, params)
        return TokenStream(self._stalled(), GenerationStats())

    async def _stalled(self) -> AsyncIterator[str]:
        yield "partial "
        sys.stderr.write("STALLED\n")
        sys.stderr.flush()
        await asyncio.Event().wait()  # until SIGKILL
        yield "never"


def answered(messages: Sequence[ChatMessage]) -> str:
    return f"answer to: {messages[-1].content}"


def recalled(messages: Sequence[ChatMessage]) -> str:
    return "saw: " + " | ".join(m.content for m in messages if m.role == "user")


class AsideConsole(ConsoleAdapter):
    def inbound(self, text: str) -> Inbound:
        if not text.startswith("~ "):
            return super().inbound(text)
        return Inbound(
            platform="console", channel_key=self.channel_key, author_id="bob",
            author_name="Bob", text=text[2:], ambient=True,
        )  # fmt: skip


async def main(data_dir: Path, mode: str) -> None:
    config = Config(
        storage=StorageConfig(data_dir=data_dir),
        persona=PersonaConfig(system_prompt="You are a test."),
        context=ContextConfig(date="off", summaries=False),
        retrieval=RetrievalConfig(enabled=False),
        recovery=RecoveryConfig(max_age_minutes=60),
    )
    generator = DriverGenerator(stall=mode == "stall", recall=mode == "recall")
    async with App.open(config, generator=generator, serving=True) as app:  # as `run` does
        console = AsideConsole(
            channel="local",
            user_name="you",
            assistant_name="Beseda",
            stdin=sys.stdin,
            stdout=sys.stdout,
            stderr=sys.stderr,
            interactive=False,
        )
        await app.serve([console])


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
