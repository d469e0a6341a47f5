"""The Bot API session: aiogram's aiohttp session, made safe for a token that is in every URL.

Telegram puts the bot token into the path of every request (``/bot<token>/sendMessage``) and
of every file download (``/file/bot<token>/…``). aiohttp's errors can carry the request URL
(a failed download's ``ClientResponseError`` prints it), and aiogram chains them to its own
errors, so a traceback in a log would show the token. Here every such error is raised again
with the token replaced and without the chained original.

Answers are decoded with every string made valid: a ``"\\ud800"`` escape in a message, a
name or a file name becomes U+FFFD before aiogram sees it (memory/text.py), so no lone
surrogate reaches a log line, a notice sent back, or the history.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods import TelegramMethod
from aiogram.methods.base import TelegramType
from aiohttp import ClientError, ClientResponseError

from memory.text import loads_valid

if TYPE_CHECKING:
    from aiogram import Bot

HIDDEN = "[token]"


class DownloadError(Exception):
    """A file could not be downloaded from the Bot API (the message names no URL)."""


def redact(text: str, token: str) -> str:
    """``text`` without the token, or its secret half after the bot id."""
    if not token:
        return text
    text = text.replace(token, HIDDEN)
    _, _, secret = token.partition(":")
    return text.replace(secret, HIDDEN) if len(secret) >= 6 else text


class TokenSafeSession(AiohttpSession):
    def __init__(self, api_url: str, token: str, **kwargs: Any) -> None:
        api = TelegramAPIServer.from_base(api_url.rstrip("/"))
        super().__init__(api=api, json_loads=loads_valid, **kwargs)
        self._token = token

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 (aiogram's signature)
    ) -> TelegramType:
        try:
            return await super().make_request(bot, method, timeout)
        except TelegramNetworkError as exc:
            raise TelegramNetworkError(
                method=method, message=redact(exc.message, self._token)
            ) from None

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,  # noqa: ASYNC109 (aiogram's signature)
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in super().stream_content(
                url, headers, timeout, chunk_size, raise_for_status
            ):
                yield chunk
        except ClientResponseError as exc:
            raise DownloadError(f"the Bot API answered {exc.status} {exc.message}") from None
        except (ClientError, TimeoutError) as exc:
            detail = redact(str(exc), self._token)
            raise DownloadError(f"{type(exc).__name__}: {detail}") from None
