"""Edited replies: one answer shown while it is generated, on any platform.

The first tokens post a message; later tokens edit it, at most once per ``edit_interval``
(and at most ``max_drafts`` times, where the platform keeps every edit). Text past the
platform's ``limit`` continues in further messages (adapters/split.py keeps code blocks
whole), and a final text shorter than a streamed draft deletes the messages it no longer
needs. The final text is delivered whole: transient failures are retried with backoff (or
after the platform's own ``retry_after``); a "forbidden" answer (no permission to post here)
stops the reply quietly. A typing indicator runs until the answer is complete.

Platforms where a reply can be previewed without posting (Telegram's ``sendMessageDraft``)
implement :class:`Drafts`: the last part of the text is shown as a draft while the earlier
parts, complete, are posted.

A platform contributes only a :class:`Surface`: post a chunk, edit it, delete it, show
typing, and classify its own errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

from adapters.split import split_message

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Split = Callable[[str, int], list[str]]
FINAL_ATTEMPTS = 4

H = TypeVar("H")


class Kind(enum.Enum):
    FORBIDDEN = "forbidden"  # not allowed to post here: stop this reply quietly
    RETRY = "retry"  # transient: the final text is tried again
    FATAL = "fatal"  # this request will never succeed: the final text gives up at once


@dataclass(frozen=True, slots=True)
class Failure:
    kind: Kind
    # Seconds the platform asked us to wait (Telegram's 429 retry_after), else None.
    retry_after: float | None = None
    # The platform's own name for it, for the log ("403", "M_FORBIDDEN").
    code: str = ""


class Surface(Protocol[H]):
    """What one reply needs from its platform. ``H`` is a posted message's handle."""

    @property
    def label(self) -> str:
        """The channel, for log lines (never a secret)."""
        ...

    async def post(self, text: str, index: int) -> H:
        """Post the ``index``-th message of the answer (0: the one replying to the person)."""
        ...

    async def edit(self, handle: H, text: str, index: int) -> None: ...

    async def delete(self, handle: H) -> None: ...

    async def typing(self, until: asyncio.Event) -> None:
        """Show that an answer is coming until ``until`` is set."""
        ...

    def classify(self, error: Exception) -> Failure | None:
        """The platform's verdict on ``error``; None when it is no platform error at all
        (a bug), which is raised as it is."""
        ...


@runtime_checkable
class Drafts(Protocol):
    """Optional: a preview of the message being written, without posting it."""

    @property
    def drafting(self) -> bool:
        """Whether drafts are used (they may be refused, and then switched off)."""
        ...

    async def draft(self, text: str, index: int) -> None: ...


class EditedReply(Generic[H]):
    """A ReplyStream (agent/ports.py) over a platform's :class:`Surface`."""

    def __init__(
        self,
        surface: Surface[H],
        *,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        edit_interval: float = 1.0,
        limit: int = 2000,
        max_drafts: int | None = None,
        split: Split = split_message,
        on_done: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._surface = surface
        self._clock = clock
        self._sleep = sleep
        self._interval = edit_interval
        self._limit = limit
        self._max_drafts = max_drafts
        self._split = split
        self._on_done = on_done
        self._buffer = ""
        self._shown: list[tuple[H, str]] = []  # (handle, text) per message of the answer
        self._drafts = 0
        self._next_render = -math.inf
        self._forbidden = False
        self._done = asyncio.Event()
        self._typing = asyncio.create_task(self._type(), name=f"typing:{surface.label}")

    @property
    def handles(self) -> list[H]:
        return [handle for handle, _ in self._shown]

    async def push(self, delta: str) -> None:
        self._buffer += delta
        text = self._buffer.strip()
        if self._forbidden or not text:
            return
        # The first draft posts the message; each later one is an edit of the budget.
        if self._max_drafts is not None and self._drafts > self._max_drafts:
            return
        if self._clock() < self._next_render:
            return
        self._next_render = self._clock() + self._interval
        self._drafts += 1
        try:
            await self._render(text)
        except Exception as exc:  # the final render tries again
            failure = self._verdict(exc)
            if failure.retry_after is not None:
                self._next_render = self._clock() + failure.retry_after
            if failure.kind is not Kind.FORBIDDEN:
                log.warning("could not update a reply in %s: %s", self._surface.label, exc)

    async def finish(self, text: str) -> None:
        try:
            await self._stop_typing()
            await self._finish(text)
        finally:
            await self._close()

    async def fail(self, notice: str) -> None:
        try:
            await self._stop_typing()
            if self._forbidden:
                return
            try:
                await self._surface.post(notice, len(self._shown))
            except Exception as exc:
                if self._verdict(exc).kind is not Kind.FORBIDDEN:
                    log.warning("could not tell of a failure in %s: %s", self._surface.label, exc)
        finally:
            await self._close()

    async def _finish(self, text: str) -> None:
        for attempt in range(FINAL_ATTEMPTS):
            if self._forbidden:
                return
            try:
                await self._render(text, final=True)
                return
            except Exception as exc:
                failure = self._verdict(exc)
                if failure.kind is Kind.FORBIDDEN:
                    return
                if failure.kind is Kind.FATAL or attempt == FINAL_ATTEMPTS - 1:
                    raise
                label = self._surface.label
                log.warning("could not deliver a reply in %s: %s; retrying", label, exc)
                await self._sleep(failure.retry_after or 2.0**attempt)

    def _verdict(self, exc: Exception) -> Failure:
        failure = self._surface.classify(exc)
        if failure is None:
            raise exc
        if failure.kind is Kind.FORBIDDEN and not self._forbidden:
            self._forbidden = True
            log.warning(
                "not allowed to answer in %s (%s): skipped",
                self._surface.label,
                failure.code or "forbidden",
            )
        return failure

    async def _render(self, text: str, *, final: bool = False) -> None:
        chunks = self._split(text, self._limit)
        draft = isinstance(self._surface, Drafts) and self._surface.drafting and not final
        settled = chunks[:-1] if draft else chunks
        for index, chunk in enumerate(settled):
            if index < len(self._shown):
                handle, shown = self._shown[index]
                if shown != chunk:
                    await self._surface.edit(handle, chunk, index)
                    self._shown[index] = (handle, chunk)
            else:
                self._shown.append((await self._surface.post(chunk, index), chunk))
        if draft and chunks and isinstance(self._surface, Drafts):
            await self._surface.draft(chunks[-1], len(settled))
        if final:
            # A streamed draft can have spilled over further than the final text.
            for handle, _ in self._shown[len(chunks) :]:
                with contextlib.suppress(Exception):
                    await self._surface.delete(handle)
            del self._shown[len(chunks) :]

    async def _close(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            await on_done()

    async def _type(self) -> None:
        try:
            await self._surface.typing(self._done)
        except Exception as exc:  # e.g. no permission to type: answer anyway
            log.debug("no typing indicator in %s: %s", self._surface.label, exc)

    async def _stop_typing(self) -> None:
        self._done.set()
        await asyncio.wait({self._typing}, timeout=5)
