"""Telegram's surface for edited replies (adapters/streaming.py).

Each chunk is sent as Telegram HTML (adapters/telegram/markup.py); if Telegram rejects the
markup ("can't parse entities"), the same chunk goes again as plain text. An edit that
changes nothing ("message is not modified") is no error. In private chats the answer is
previewed with ``sendMessageDraft`` while it is written, then sent whole; where Telegram
refuses drafts, the adapter switches them off and edits instead. 429 carries
``retry_after``, which the kit honours: Telegram bans bots that ignore it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiogram import Bot
from aiogram.enums import ChatAction, ParseMode
from aiogram.exceptions import (
    RestartingTelegram,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import LinkPreviewOptions, Message, ReplyParameters

from adapters.streaming import Failure, Kind
from adapters.telegram.markup import to_html

log = logging.getLogger(__name__)

T = TypeVar("T")
# Telegram shows "typing…" for 5 seconds per sendChatAction.
TYPING_REFRESH = 4.0
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an answer goes: the chat, the message it replies to, the forum topic."""

    chat_id: int
    message_id: int
    thread_id: int | None = None
    direct: bool = False


def not_modified(error: Exception) -> bool:
    return isinstance(error, TelegramBadRequest) and "not modified" in error.message.lower()


def bad_markup(error: Exception) -> bool:
    return isinstance(error, TelegramBadRequest) and "parse entities" in error.message.lower()


class TelegramSurface:
    def __init__(
        self,
        bot: Bot,
        origin: Origin,
        *,
        drafts: bool = False,
        drafts_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self._bot = bot
        self._origin = origin
        self._drafting = drafts
        self._drafts_refused = drafts_refused

    @property
    def label(self) -> str:
        return f"telegram:{self._origin.chat_id}"

    @property
    def drafting(self) -> bool:
        return self._drafting

    async def post(self, text: str, index: int) -> int:
        origin = self._origin
        reply = (
            ReplyParameters(message_id=origin.message_id, allow_sending_without_reply=True)
            if index == 0
            else None
        )

        async def send(body: str, parse_mode: str | None) -> Message:
            return await self._bot.send_message(
                origin.chat_id,
                body,
                message_thread_id=origin.thread_id,
                parse_mode=parse_mode,
                reply_parameters=reply,
                link_preview_options=_NO_PREVIEW,
            )

        message = await _formatted(text, send)
        return message.message_id

    async def edit(self, handle: int, text: str, index: int) -> None:
        async def edit(body: str, parse_mode: str | None) -> object:
            return await self._bot.edit_message_text(
                chat_id=self._origin.chat_id,
                message_id=handle,
                text=body,
                parse_mode=parse_mode,
                link_preview_options=_NO_PREVIEW,
            )

        try:
            await _formatted(text, edit)
        except TelegramBadRequest as exc:
            if not not_modified(exc):
                raise

    async def delete(self, handle: int) -> None:
        await self._bot.delete_message(self._origin.chat_id, handle)

    async def draft(self, text: str, index: int) -> None:
        origin = self._origin

        async def draft(body: str, parse_mode: str | None) -> object:
            return await self._bot.send_message_draft(
                chat_id=origin.chat_id,
                # Non-zero, and one per message of the answer: changes of one draft animate.
                draft_id=origin.message_id * 64 + index % 64 + 1,
                text=body,
                message_thread_id=origin.thread_id,
                parse_mode=parse_mode,
            )

        try:
            await _formatted(text, draft)
        except TelegramBadRequest as exc:
            # E.g. a Bot API server without drafts: edits from now on, for every chat.
            self._drafting = False
            self._drafts_refused()
            log.warning("Telegram refused a draft in %s (%s): editing instead", self.label, exc)

    async def typing(self, until: asyncio.Event) -> None:
        while not until.is_set():
            await self._bot.send_chat_action(
                self._origin.chat_id, ChatAction.TYPING, message_thread_id=self._origin.thread_id
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), TYPING_REFRESH)

    def classify(self, error: Exception) -> Failure | None:
        return classify(error)


def classify(error: Exception) -> Failure | None:
    if isinstance(error, TelegramForbiddenError):  # blocked by the user, removed from the group
        return Failure(Kind.FORBIDDEN, code="403")
    if isinstance(error, TelegramRetryAfter):
        return Failure(Kind.RETRY, retry_after=float(error.retry_after), code="429")
    if isinstance(error, TelegramServerError | RestartingTelegram | TelegramNetworkError):
        return Failure(Kind.RETRY)
    if isinstance(error, TelegramAPIError):  # 400 and the like: it would fail again
        return Failure(Kind.FATAL)
    return None


async def _formatted(text: str, call: Callable[[str, str | None], Awaitable[T]]) -> T:
    """``call`` with the chunk as HTML; as plain text when Telegram rejects the markup."""
    try:
        return await call(to_html(text) or text, ParseMode.HTML)
    except TelegramBadRequest as exc:
        if not bad_markup(exc):
            raise
        log.debug("Telegram rejected the markup (%s): sending plain text", exc.message)
        return await call(text, None)
