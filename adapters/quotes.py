"""Quoting the messages a question replies to, so that the model sees what "this" refers to.

Every platform quotes a reply chain the same way (:func:`reply_chain`): the nearest
REPLY_CHAIN_DEPTH messages, oldest first, each with its author's name and cut to QUOTE_CHARS,
stopping at the bot's own message (it is in the history already) or one that cannot be read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

QUOTE_CHARS = 500
# Messages of a reply chain quoted to the model at most (the nearest ones).
REPLY_CHAIN_DEPTH = 3

M = TypeVar("M")


def quote(author: str, text: str) -> str:
    quoted = text[:QUOTE_CHARS].replace("\n", "\n> ")
    return f"> {author} wrote: {quoted}"


async def reply_chain(
    replied: M | None,
    *,
    own: Callable[[M], bool],
    quoted: Callable[[M], str],
    parent: Callable[[M], Awaitable[M | None]],
) -> list[str]:
    """Quotes of ``replied`` and the messages it replies to, oldest first.

    ``own`` tells the bot's messages, ``quoted`` renders one (an empty string skips a
    message without text, e.g. only an image) and ``parent`` reads the message one replies
    to, or None where the chain ends or cannot be read (deleted, hidden, undecryptable).
    """
    quotes: list[str] = []
    current = replied
    while current is not None and not own(current):
        if text := quoted(current):
            quotes.append(text)
        if len(quotes) == REPLY_CHAIN_DEPTH:
            break
        current = await parent(current)
    return quotes[::-1]
