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
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from markdown_it import MarkdownIt

from adapters.streaming import Clock, EditedReply, Failure, Kind, Sleep

Content = dict[str, Any]
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


def reply_relation(event_id: str, thread_root: str | None = None) -> dict[str, Any]:
    """``m.relates_to`` of a message answering ``event_id``: in a thread, the relation keeps
    it in the thread, and the reply part is what clients without thread support show."""
    if thread_root is None:
        return {"m.in_reply_to": {"event_id": event_id}}
    return {
        "rel_type": "m.thread",
        "event_id": thread_root,
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": event_id},
    }


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


class MatrixSurface:
    """The edited-reply surface (adapters/streaming.py) for one answer in a room."""

    def __init__(
        self,
        sink: RoomSink,
        *,
        reply_to: str,
        thread_root: str | None,
        mention: str | None,
    ) -> None:
        self._sink = sink
        self._reply_to = reply_to
        self._thread_root = thread_root
        self._mentions = (mention,) if mention else ()
        self._posted: dict[int, str] = {}  # index -> event id of the answer's messages

    @property
    def label(self) -> str:
        return self._sink.label

    async def post(self, text: str, index: int) -> str:
        content = text_content(text, self._mentions if index == 0 else ())
        previous = self._posted.get(index - 1, self._reply_to)
        if self._thread_root is not None:
            content["m.relates_to"] = reply_relation(previous, self._thread_root)
        elif index == 0:
            content["m.relates_to"] = reply_relation(self._reply_to)
        event_id = await self._sink.send(content)
        self._posted[index] = event_id
        return event_id

    async def edit(self, handle: str, text: str, index: int) -> None:
        await self._sink.send(edit_content(handle, text, self._mentions if index == 0 else ()))

    async def delete(self, handle: str) -> None:
        await self._sink.redact(handle)

    async def typing(self, until: asyncio.Event) -> None:
        while not until.is_set():
            await self._sink.typing(True, TYPING_MS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), TYPING_REFRESH)
        await self._sink.typing(False, 0)

    def classify(self, error: Exception) -> Failure | None:
        if not isinstance(error, MatrixSendError):
            return None
        if error.errcode == "M_FORBIDDEN":
            return Failure(Kind.FORBIDDEN, code="M_FORBIDDEN")
        return Failure(Kind.RETRY)


class MatrixReply(EditedReply[str]):
    """A ReplyStream for one inbound message: an edited reply over :class:`MatrixSurface`."""

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
        surface = MatrixSurface(sink, reply_to=reply_to, thread_root=thread_root, mention=mention)
        super().__init__(
            surface,
            clock=clock,
            sleep=sleep,
            edit_interval=edit_interval,
            limit=limit,
            max_drafts=max_edits,
            on_done=on_done,
        )

    @property
    def event_ids(self) -> list[str]:
        return self.handles
