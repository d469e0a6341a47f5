"""Quoting the messages a question replies to, so that the model sees what "this" refers to.

Discord and Matrix both quote a reply chain the same way: the nearest REPLY_CHAIN_DEPTH
messages, oldest first, each cut to QUOTE_CHARS, stopping at the bot's own message (it is in
the history already) or one that cannot be read.
"""

from __future__ import annotations

QUOTE_CHARS = 500
# Messages of a reply chain quoted to the model at most (the nearest ones).
REPLY_CHAIN_DEPTH = 3


def quote(author: str, text: str) -> str:
    quoted = text[:QUOTE_CHARS].replace("\n", "\n> ")
    return f"> {author} wrote: {quoted}"
