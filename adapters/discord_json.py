"""Lenient JSON for discord.py: a payload one decoder rejects must not end the connection.

discord.py decodes every gateway frame and REST answer with orjson when it is installed
(``discord.utils._from_json``). orjson refuses a lone UTF-16 surrogate escape such as
``"abc\\ud800def"``, which a message or a name can carry; the ``JSONDecodeError`` escaped
``poll_event`` and ended the client. Python's ``json`` accepts such escapes, but then hands
out strings that no database, tokenizer or encoder takes.

:func:`install` replaces the decoder once per process: the fast decoder first, and where it
refuses, Python's ``json`` with every string made valid (lone surrogates become U+FFFD, see
memory/text.py). A gateway frame that is not JSON at all is logged and skipped instead of
ending the connection; a REST answer that is not JSON still raises, as before.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import discord.utils
from discord.gateway import DiscordWebSocket

from memory.text import has_surrogate_escape, valid_json

log = logging.getLogger(__name__)

_installed = False


class UndecodableFrameError(json.JSONDecodeError):
    """Not JSON for any decoder (a subclass of the error discord.py callers expect)."""


def lenient_loads(fast: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fast`` (orjson.loads or json.loads), falling back to Python's json, with valid
    strings either way."""
    # Only Python's json lets a lone surrogate escape through, so without orjson every
    # frame holding a surrogate escape is checked.
    forgiving = fast is json.loads

    def loads(text: str | bytes) -> Any:
        if forgiving and has_surrogate_escape(text):
            return valid_json(_stdlib(text))
        try:
            return fast(text)
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            pass
        value = _stdlib(text)
        log.warning("decoded a payload %s refused (invalid text replaced)", _name(fast))
        return valid_json(value)

    return loads


def _stdlib(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UndecodableFrameError(exc.msg, exc.doc, exc.pos) from None


def _name(fast: Callable[..., Any]) -> str:
    return f"{getattr(fast, '__module__', '') or 'json'}.loads"


Received = Callable[[DiscordWebSocket, Any], Coroutine[Any, Any, None]]


def _skipping_undecodable(received: Received) -> Received:
    @functools.wraps(received)
    async def received_message(self: DiscordWebSocket, msg: Any, /) -> None:
        try:
            await received(self, msg)
        except UndecodableFrameError as exc:
            log.warning("skipped a gateway frame that is not JSON: %s", exc.msg)

    return received_message


def install() -> None:
    """Make discord.py's JSON decoding lenient (once per process; idempotent)."""
    global _installed  # noqa: PLW0603 - one patch of a library module per process
    if _installed:
        return
    # The one decoder discord.py calls for frames and REST answers (a module global).
    fast = discord.utils._from_json  # noqa: SLF001
    discord.utils._from_json = lenient_loads(fast)  # noqa: SLF001
    DiscordWebSocket.received_message = _skipping_undecodable(  # type: ignore[method-assign]
        DiscordWebSocket.received_message
    )
    _installed = True
