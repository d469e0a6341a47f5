"""What the benchmarks share: a reply target that shows nothing (they measure Beseda, not a
platform), and a generator wrapper that passes everything through (they override stream)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agent.events import Inbound
from agent.generators.base import ChatMessage, Generator, SamplingParams, TokenStream


class Sink:
    async def open_reply(self, inbound: Inbound) -> Sink:
        return self

    async def push(self, delta: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        return None

    async def fail(self, notice: str) -> None:
        print(f"reply failed: {notice}", file=sys.stderr)


class Wrapped:
    """A generator that forwards to ``inner``; subclasses observe ``stream``."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner

    concurrency = property(lambda self: self.inner.concurrency)
    name = property(lambda self: self.inner.name)
    n_ctx = property(lambda self: self.inner.n_ctx)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self.inner.count_prompt_tokens(messages)

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return self.inner.render_prompt(messages)

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        return self.inner.stream(messages, params)

    async def aclose(self) -> None:
        await self.inner.aclose()
