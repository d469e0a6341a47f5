"""Answer with the local model while the remote server cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from agent.generators.base import (
    ChatMessage,
    GenerationStats,
    Generator,
    SamplingParams,
    TokenStream,
)
from agent.generators.openai_wire import RemoteUnavailableError

log = logging.getLogger(__name__)


class FallbackGenerator:
    """The remote generator, answering with the local model while the server is unreachable."""

    def __init__(self, remote: Generator, load_local: Callable[[], Awaitable[Generator]]) -> None:
        self._remote = remote
        self._load_local = load_local
        self._local: Generator | None = None
        self._loading = asyncio.Lock()

    @property
    def name(self) -> str:
        return self._remote.name

    @property
    def n_ctx(self) -> int:
        return self._remote.n_ctx

    @property
    def concurrency(self) -> int:
        return self._remote.concurrency

    def count_tokens(self, text: str) -> int:
        return self._remote.count_tokens(text)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self._remote.count_prompt_tokens(messages)

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return self._remote.render_prompt(messages)

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        stats = GenerationStats()
        return TokenStream(self._run(list(messages), params, stats), stats)

    async def _run(
        self, messages: list[ChatMessage], params: SamplingParams, stats: GenerationStats
    ) -> AsyncIterator[str]:
        remote = self._remote.stream(messages, params)
        try:
            async with contextlib.aclosing(remote):
                async for piece in remote:
                    yield piece
            copy_stats(remote.stats, stats)
            return
        except RemoteUnavailableError as exc:
            # Raised only before the first token: the reply has not started anywhere.
            log.warning("%s: answering with the local model instead ([model] fallback)", exc)
        local = await self._local_generator()
        tokens = local.stream(messages, params)
        async with contextlib.aclosing(tokens):
            async for piece in tokens:
                yield piece
        copy_stats(tokens.stats, stats)

    async def _local_generator(self) -> Generator:
        async with self._loading:
            if self._local is None:
                self._local = await self._load_local()
                log.warning("local fallback model loaded: %s", self._local.name)
            return self._local

    async def aclose(self) -> None:
        await self._remote.aclose()
        if self._local is not None:
            await self._local.aclose()


def copy_stats(source: GenerationStats, target: GenerationStats) -> None:
    target.prompt_tokens = source.prompt_tokens
    target.cached_tokens = source.cached_tokens
    target.shifted_tokens = source.shifted_tokens
    target.completion_tokens = source.completion_tokens
    target.finish_reason = source.finish_reason
