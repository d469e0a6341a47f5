"""Counting, timing and logging each message without touching the core.

The app hands every adapter an observed ``submit``: it wraps the core's submit, the
``ReplyTarget`` the adapter passes in and the ``ReplyStream`` that target opens, so it sees
a message arrive, its first token shown, its reply finished, and the core's final
:class:`~agent.runtime.core.Reply` (status and :class:`GenerationStats`). Log events carry channel
keys, ids, sizes and timings — never the message text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from agent.events import Inbound
from agent.ops import metrics as m
from agent.ports import ReplyStream, ReplyTarget
from agent.runtime.core import Reply
from memory.records import Status

log = logging.getLogger(__name__)

CoreSubmit = Callable[[Inbound, ReplyTarget], Awaitable["asyncio.Future[Reply]"]]
Submit = Callable[[Inbound, ReplyTarget], Awaitable[object]]


@dataclass(slots=True)
class _Timing:
    arrived: float
    first_token: float | None = None
    last_token: float | None = None


class _ObservedStream:
    def __init__(self, inner: ReplyStream, timing: _Timing, metrics: m.Metrics) -> None:
        self._inner = inner
        self._timing = timing
        self._metrics = metrics

    async def push(self, delta: str) -> None:
        now = time.monotonic()
        if self._timing.first_token is None:
            self._timing.first_token = now
            self._metrics.first_token.observe(now - self._timing.arrived)
        self._timing.last_token = now
        await self._delivered(self._inner.push(delta))

    async def finish(self, text: str) -> None:
        await self._delivered(self._inner.finish(text))

    async def fail(self, notice: str) -> None:
        await self._delivered(self._inner.fail(notice))

    async def _delivered(self, step: Awaitable[None]) -> None:
        try:
            await step
        except Exception:
            self._metrics.errors.labels(m.DELIVERY_ERROR).inc()
            raise


class _ObservedTarget:
    def __init__(self, inner: ReplyTarget, timing: _Timing, metrics: m.Metrics) -> None:
        self._inner = inner
        self._timing = timing
        self._metrics = metrics

    async def open_reply(self, inbound: Inbound) -> ReplyStream:
        stream = await self._inner.open_reply(inbound)
        return _ObservedStream(stream, self._timing, self._metrics)


class Observer:
    def __init__(self, metrics: m.Metrics) -> None:
        self.metrics = metrics

    def submit_for(self, adapter: str, submit: CoreSubmit) -> Submit:
        """The submit callable to give the adapter named ``adapter``."""
        self.metrics.messages_in.labels(adapter)  # shown as 0 before the first message
        return partial(self._submit, adapter, submit)

    async def _submit(
        self, adapter: str, submit: CoreSubmit, inbound: Inbound, target: ReplyTarget
    ) -> asyncio.Future[Reply]:
        timing = _Timing(time.monotonic())
        fields = _fields(inbound, adapter)
        try:
            future = await submit(inbound, _ObservedTarget(target, timing, self.metrics))
        except Exception as exc:
            self.metrics.errors.labels(m.SUBMIT_ERROR).inc()
            log.warning("message not accepted", extra={**fields, "error": type(exc).__name__})
            raise
        self.metrics.messages_in.labels(adapter).inc()
        self.metrics.in_flight += 1
        log.info("message received", extra={**fields, "chars": len(inbound.text)})
        future.add_done_callback(partial(self._settled, fields, timing))
        return future

    def _settled(
        self, fields: dict[str, Any], timing: _Timing, future: asyncio.Future[Reply]
    ) -> None:
        self.metrics.in_flight -= 1
        if future.cancelled():
            reply, status = None, Status.CANCELLED
        elif future.exception() is not None:  # the core settles with a Reply; just in case
            reply, status = None, Status.FAILED
        else:
            reply = future.result()
            status = reply.status
        self.metrics.messages_out.labels(fields["adapter"], str(status)).inc()
        event: dict[str, Any] = {**fields, "status": str(status)}
        if timing.first_token is not None:
            event["first_token_ms"] = round((timing.first_token - timing.arrived) * 1000)
        if reply is not None:
            event.update(message_id=reply.user_message_id, reply_id=reply.message_id)
            event.update(self._count_tokens(reply, timing))
        if reply is not None and reply.status is Status.FAILED:
            kind = _error_kind(reply)
            self.metrics.errors.labels(kind).inc()
            log.warning("reply failed", extra={**event, "error_kind": kind})
        else:
            log.info("reply finished", extra=event)

    def _count_tokens(self, reply: Reply, timing: _Timing) -> dict[str, Any]:
        stats = reply.stats
        if stats is None:
            return {}
        metrics = self.metrics
        metrics.prompt_tokens.labels("evaluated").inc(max(stats.evaluated_tokens, 0))
        metrics.prompt_tokens.labels("reused").inc(stats.cached_tokens)
        metrics.prompt_tokens.labels("shifted").inc(stats.shifted_tokens)
        metrics.completion_tokens.inc(stats.completion_tokens)
        counts: dict[str, Any] = {
            "prompt_tokens": stats.prompt_tokens,
            "cached_tokens": stats.cached_tokens,
            "shifted_tokens": stats.shifted_tokens,
            "completion_tokens": stats.completion_tokens,
        }
        first, last = timing.first_token, timing.last_token
        # The first token's wait is time to first token; the speed is what follows it.
        if first is not None and last is not None and last > first and stats.completion_tokens > 1:
            rate = (stats.completion_tokens - 1) / (last - first)
            metrics.tokens_per_second.observe(rate)
            counts["tokens_per_s"] = round(rate, 1)
        return counts


def _fields(inbound: Inbound, adapter: str) -> dict[str, Any]:
    return {
        "adapter": adapter,
        "channel": inbound.channel_key,
        "author_id": inbound.author_id,
        "platform_message_id": inbound.message_id,
    }


def _error_kind(reply: Reply) -> str:
    if reply.error == "empty":
        return m.EMPTY_REPLY
    # The core has GenerationStats only once the generator was asked for tokens.
    return m.GENERATION_ERROR if reply.stats is not None else m.INTERNAL_ERROR
