"""Rendering one answer in a Matrix room: typing, streaming by m.replace edits, splitting.

The first tokens post a message (a reply to the person, or a message in their thread); later
tokens edit it, at most once per ``edit_interval`` and at most ``max_edits`` times, because
clients render long edit chains slowly and every edit is stored for ever. The final edit
always carries the whole text. Text past ``limit`` characters continues in further messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from markdown_it import MarkdownIt

from adapters.split import split_message

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Content = dict[str, Any]
FINAL_ATTEMPTS = 4
TYPING_MS = 30_000
TYPING_REFRESH = 20.0
# Raw HTML from the model is shown as text, never passed to clients as markup.
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(
    ["table", "strikethrough"]
)


class MatrixSendError(Exception):
    """A send, edit or redaction the homeserver refused (``errcode`` as Matrix gives it)."""

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(f"{errcode or 'error'}: {message}")
        self.errcode = errcode


class RoomSink(Protocol):
    """One room, as the reply needs it (implemented over matrix-nio by the adapter)."""

    @property
    def label(self) -> str: ...

    async def send(self, content: Content) -> str:
        """Send an m.room.message; return its event id or raise MatrixSendError."""
        ...

    async def redact(self, event_id: str) -> None: ...

    async def typing(self, on: bool, timeout_ms: int) -> None: ...


def render_html(text: str) -> str | None:
    """Markdown as Matrix HTML, or None when it is plain text (no ``formatted_body`` needed)."""
    rendered = str(_MARKDOWN.render(text)).strip()
    if rendered == f"<p>{html.escape(text.strip(), quote=False)}</p>":
        return None
    return rendered


def text_content(text: str, mentions: tuple[str, ...] = ()) -> Content:
    content: Content = {"msgtype": "m.text", "body": text}
    rendered = render_html(text)
    if rendered is not None:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = rendered
    content["m.mentions"] = {"user_ids": list(mentions)} if mentions else {}
    return content


def edit_content(event_id: str, text: str, mentions: tuple[str, ...] = ()) -> Content:
    """An m.replace edit: the new content, and a "* text" fallback for old clients."""
    new = text_content(text, mentions)
    content: Content = {"msgtype": "m.text", "body": f"* {text}"}
    if "formatted_body" in new:
        content["format"] = new["format"]
        content["formatted_body"] = f"* {new['formatted_body']}"
    # Mentions were notified with the original; an edit must not notify again.
    content["m.mentions"] = {}
    content["m.new_content"] = new
    content["m.relates_to"] = {"rel_type": "m.replace", "event_id": event_id}
    return content


class MatrixReply:
    """A ReplyStream for one inbound message."""

    def __init__(
        self,
        sink: RoomSink,
        *,
        reply_to: str,
        thread_root: str | None,
        mention: str | None,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        edit_interval: float = 1.0,
        max_edits: int = 8,
        limit: int = 4000,
        on_done: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._sink = sink
        self._on_done = on_done
        self._reply_to = reply_to
        self._thread_root = thread_root
        self._mentions = (mention,) if mention else ()
        self._clock = clock
        self._sleep = sleep
        self._interval = edit_interval
        self._max_edits = max_edits
        self._limit = limit
        self._buffer = ""
        self._shown: list[tuple[str, str]] = []  # (event id, text) per message of the answer
        self._drafts = 0
        self._last_render = -math.inf
        self._forbidden = False
        self._done = asyncio.Event()
        self._typing = asyncio.create_task(self._type(), name=f"typing:{sink.label}")

    @property
    def event_ids(self) -> list[str]:
        return [event_id for event_id, _ in self._shown]

    async def push(self, delta: str) -> None:
        self._buffer += delta
        text = self._buffer.strip()
        # The first draft posts the message; each later one is an edit of the budget.
        if self._forbidden or not text or self._drafts > self._max_edits:
            return
        if self._clock() - self._last_render < self._interval:
            return
        self._last_render = self._clock()
        self._drafts += 1
        try:
            await self._render(text)
        except MatrixSendError as exc:  # the final render tries again
            self._note_failure(exc)

    async def finish(self, text: str) -> None:
        try:
            await self._finish(text)
        finally:
            await self._close()

    async def fail(self, notice: str) -> None:
        try:
            await self._fail(notice)
        finally:
            await self._close()

    async def _close(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            await on_done()

    async def _finish(self, text: str) -> None:
        await self._stop_typing()
        for attempt in range(FINAL_ATTEMPTS):
            if self._forbidden:
                return
            try:
                await self._render(text, final=True)
                return
            except MatrixSendError as exc:
                self._note_failure(exc)
                if exc.errcode == "M_FORBIDDEN":
                    return
                if attempt == FINAL_ATTEMPTS - 1:
                    raise
                await self._sleep(2.0**attempt)

    async def _fail(self, notice: str) -> None:
        await self._stop_typing()
        if self._forbidden:
            return
        try:
            await self._send(notice, index=len(self._shown))
        except MatrixSendError as exc:
            self._note_failure(exc)

    async def _render(self, text: str, *, final: bool = False) -> None:
        chunks = split_message(text, self._limit)
        for index, chunk in enumerate(chunks):
            if index < len(self._shown):
                event_id, shown = self._shown[index]
                if shown != chunk:
                    mentions = self._mentions if index == 0 else ()
                    await self._sink.send(edit_content(event_id, chunk, mentions))
                    self._shown[index] = (event_id, chunk)
            else:
                event_id = await self._send(chunk, index=index)
                self._shown.append((event_id, chunk))
        if final:
            # A streamed draft can have spilled over further than the final text.
            for event_id, _ in self._shown[len(chunks) :]:
                with contextlib.suppress(MatrixSendError):
                    await self._sink.redact(event_id)
            del self._shown[len(chunks) :]

    async def _send(self, text: str, *, index: int) -> str:
        content = text_content(text, self._mentions if index == 0 else ())
        previous = self._shown[index - 1][0] if index > 0 and self._shown else self._reply_to
        if self._thread_root is not None:
            # Threads: the relation keeps the answer in the thread; the reply part is what
            # clients without thread support show.
            content["m.relates_to"] = {
                "rel_type": "m.thread",
                "event_id": self._thread_root,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": previous},
            }
        elif index == 0:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": self._reply_to}}
        return await self._sink.send(content)

    def _note_failure(self, exc: MatrixSendError) -> None:
        if exc.errcode == "M_FORBIDDEN":
            self._forbidden = True
            log.warning("not allowed to post in %s (M_FORBIDDEN): reply skipped", self._sink.label)
        else:
            log.warning("could not update a reply in %s: %s", self._sink.label, exc)

    async def _type(self) -> None:
        try:
            while not self._done.is_set():
                await self._sink.typing(True, TYPING_MS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._done.wait(), TYPING_REFRESH)
            await self._sink.typing(False, 0)
        except Exception as exc:  # e.g. no permission to type: answer anyway
            log.debug("no typing notification in %s: %s", self._sink.label, exc)

    async def _stop_typing(self) -> None:
        self._done.set()
        await asyncio.wait({self._typing}, timeout=5)
