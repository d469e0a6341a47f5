"""Fakes for core unit tests: a scripted generator and an adapter that records replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.attachments import DocumentsHook
from agent.events import Inbound
from agent.generators.base import ChatMessage, GenerationStats, SamplingParams, TokenStream
from agent.i18n import Lang


class FakeGenerator:
    """Counts one token per character-ish word piece and streams a scripted answer.

    ``answer`` maps the prompt's messages to the reply text; ``gate`` (if set) must be
    released before each generation continues, so tests can hold a reply in flight.
    """

    def __init__(
        self,
        answer: Callable[[Sequence[ChatMessage]], str] | None = None,
        *,
        n_ctx: int = 4096,
        fail_with: Exception | None = None,
        concurrency: int = 4,
    ) -> None:
        # Like a server with several slots by default; scheduling tests pass 1.
        self.concurrency = concurrency
        self._answer = answer or (lambda messages: f"echo: {messages[-1].content}")
        self._n_ctx = n_ctx
        self.fail_with = fail_with
        self.gate: asyncio.Event | None = None
        # Per-call gate: return an event to hold that generation until it is set.
        self.hold: Callable[[Sequence[ChatMessage]], asyncio.Event | None] = lambda _m: None
        self.calls: list[tuple[ChatMessage, ...]] = []
        self.started = asyncio.Event()
        self.closed = False
        self._calls_changed = asyncio.Condition()

    async def wait_for_calls(self, count: int) -> None:
        async with self._calls_changed:
            await self._calls_changed.wait_for(lambda: len(self.calls) >= count)

    @property
    def name(self) -> str:
        return "fake"

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return "".join(f"<{m.role}>\n{m.content}\n" for m in messages) + "<assistant>\n"

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        # Two tokens of template per message plus the generation prompt.
        return sum(self.count_tokens(m.content) + 2 for m in messages) + 1

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        stats = GenerationStats(prompt_tokens=self.count_prompt_tokens(messages))
        return TokenStream(self._pieces(tuple(messages), stats), stats)

    async def _pieces(
        self, messages: tuple[ChatMessage, ...], stats: GenerationStats
    ) -> AsyncIterator[str]:
        async with self._calls_changed:
            self.calls.append(messages)
            self._calls_changed.notify_all()
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        held = self.hold(messages)
        if held is not None:
            await held.wait()
        if self.fail_with is not None:
            raise self.fail_with
        for word in self._answer(messages).split(" "):
            await asyncio.sleep(0)
            stats.completion_tokens += 1
            yield word + " "

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class RecordedReply:
    inbound: Inbound
    pieces: list[str] = field(default_factory=list)
    final: str | None = None
    failure: str | None = None

    async def push(self, delta: str) -> None:
        self.pieces.append(delta)

    async def finish(self, text: str) -> None:
        self.final = text

    async def fail(self, notice: str) -> None:
        self.failure = notice


class RecordingAdapter:
    """A ReplyTarget that keeps every reply it was asked to render."""

    def __init__(self) -> None:
        self.replies: list[RecordedReply] = []

    async def open_reply(self, inbound: Inbound) -> RecordedReply:
        reply = RecordedReply(inbound)
        self.replies.append(reply)
        return reply


class Probe(RecordingAdapter):
    """An adapter that, once the App serves it, runs ``act`` (what a platform's first
    message would do) and ends, so ``App.serve`` returns."""

    def __init__(self, act: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self._act = act

    @property
    def name(self) -> str:
        return "probe"

    async def run(self, submit: object) -> None:
        await self._act()

    async def stop(self) -> None:
        pass


def inbound(text: str, channel: str = "test:1", author: str = "alice") -> Inbound:
    return Inbound(
        platform=channel.split(":", 1)[0],
        channel_key=channel,
        author_id=author,
        author_name=author,
        text=text,
    )


class SteppingClock:
    """Each reading advances by ``step`` seconds: throttling without wall-clock time."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class RecordedSleeps:
    """An adapter's own waits (back-off, retry_after): recorded, not waited."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)  # a retry loop still lets the others run


def record_submissions(adapter: Any) -> list[Inbound]:
    """What a running adapter submits. Ambient messages stop here (until the core stores them
    as context it would answer them); the rest reach the core as before."""
    submitted: list[Inbound] = []
    forward = adapter._submit
    assert forward is not None

    async def submit(inbound: Inbound, target: Any) -> object:
        submitted.append(inbound)
        return None if inbound.ambient else await forward(inbound, target)

    adapter._submit = submit
    return submitted


def held_documents(release: asyncio.Event, then: DocumentsHook | None = None) -> DocumentsHook:
    """A documents hook that holds every file until ``release`` is set (a long indexing),
    then hands it to ``then``, or answers "indexed NAME (LANG)"."""

    async def hook(scope: str, name: str, data: bytes, lang: Lang) -> str:
        await release.wait()
        if then is not None:
            return await then(scope, name, data, lang)
        return f"indexed {name} ({lang})"

    return hook
