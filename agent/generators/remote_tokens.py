"""Token counts for a model behind a server: exact where the server tokenizes, else estimated.

The Generator protocol counts synchronously (the context builder calls it in loops), so exact
counts cannot be fetched when asked for. They are fetched before each request for the texts
not seen yet and cached; anything else is estimated by ``estimate_tokens``, which errs high.
The template's own tokens are a fixed allowance, raised when the server reports more.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from agent.generators.base import ChatMessage
from agent.generators.openai_wire import TOKENIZE_ENDPOINTS, TokenizeEndpoint, estimate_tokens

log = logging.getLogger(__name__)

# Template tokens per message (role markers, turn separators) and for the generation prompt:
# ChatML, Llama 3, Gemma and Mistral templates need at most 5-6 per turn.
MESSAGE_OVERHEAD = 8
PROMPT_OVERHEAD = 8
CACHE_SIZE = 4096

Tokenize = Callable[[TokenizeEndpoint, str], Awaitable[int]]


class RemoteTokenCounter:
    def __init__(self, tokenize: Tokenize, where: str, timeout: float) -> None:
        self._tokenize = tokenize
        self._where = where
        self._timeout = timeout
        self._endpoint: TokenizeEndpoint | None = None
        self._counts: OrderedDict[str, int] = OrderedDict()
        # Prompt tokens the server reported beyond the estimate (e.g. a template that adds its
        # own system prompt); it only grows, so budgets stay on the safe side.
        self._extra = 0

    @property
    def endpoint(self) -> TokenizeEndpoint | None:
        return self._endpoint

    def count(self, text: str) -> int:
        exact = self._counts.get(text)
        return exact if exact is not None else estimate_tokens(text)

    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        content = sum(self.count(m.content) for m in messages)
        return content + MESSAGE_OVERHEAD * len(messages) + PROMPT_OVERHEAD + self._extra

    async def detect(self) -> TokenizeEndpoint | None:
        """Find the server's tokenize endpoint, and what it adds to any text (a BOS token)."""
        for endpoint in TOKENIZE_ENDPOINTS:
            try:
                offset = await self._tokenize(endpoint, "")
                await self._tokenize(endpoint, "Hello")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("no tokenizer at %s%s: %s", self._where, endpoint.path, exc)
                continue
            self._endpoint = TokenizeEndpoint(endpoint.path, offset)
            log.info("exact token counts from %s%s", self._where, endpoint.path)
            return self._endpoint
        log.info("%s has no tokenize endpoint: token counts are estimated", self._where)
        return None

    async def learn(self, messages: Sequence[ChatMessage]) -> None:
        """Exact counts for the texts not seen yet, so later prompts are budgeted exactly."""
        endpoint = self._endpoint
        if endpoint is None:
            return
        missing = [t for t in dict.fromkeys(m.content for m in messages) if t not in self._counts]
        if not missing:
            return
        try:
            async with asyncio.timeout(self._timeout):
                counts = await asyncio.gather(*(self._tokenize(endpoint, t) for t in missing))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "token counting at %s%s failed (%s): estimating from now on",
                self._where,
                endpoint.path,
                str(exc) or type(exc).__name__,
            )
            self._endpoint = None
            return
        for text, count in zip(missing, counts, strict=True):
            self._counts[text] = count
            self._counts.move_to_end(text)
        while len(self._counts) > CACHE_SIZE:
            self._counts.popitem(last=False)

    def correct(self, estimated: int, reported: int) -> None:
        """The server counted ``reported`` prompt tokens where we budgeted ``estimated``."""
        if reported > estimated:
            self._extra += reported - estimated
            log.info(
                "the server counted %d prompt tokens, %d more than estimated: adding them to "
                "every prompt from now on",
                reported,
                reported - estimated,
            )
