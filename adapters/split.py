"""Splitting a long reply into platform-sized messages without breaking code blocks
(Discord's 2,000 characters; Matrix's configured split_limit).

Cuts fall on a paragraph break if there is one in reach, else a line break, else a space,
else (one enormous word) at the limit. A code block open at a cut is closed at the end of
the chunk and reopened, with its language, at the start of the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

DISCORD_LIMIT = 2000
FENCE = "```"
_CLOSE = "\n" + FENCE


@dataclass(frozen=True, slots=True)
class Part:
    reopen: str  # the fence line reopened at the start of this chunk ("" when none)
    piece: str  # a contiguous slice of the original text
    closed: bool  # a fence was open at the end of the piece and is closed here

    def render(self) -> str:
        head = self.reopen + "\n" if self.reopen else ""
        return head + self.piece + (_CLOSE if self.closed else "")


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Chunks of at most ``limit`` characters; fences balanced within each chunk."""
    return [part.render() for part in split_parts(text, limit)]


def split_parts(text: str, limit: int = DISCORD_LIMIT) -> list[Part]:
    parts: list[Part] = []
    fence = ""  # the opening line of the code block open at this point, if any
    rest = text
    while rest.strip():
        head = len(fence) + 1 if fence else 0
        if head + len(rest) <= limit:
            parts.append(Part(fence, rest, closed=False))
            break
        budget = limit - head - len(_CLOSE)
        if budget < 1:  # a fence line too long to reopen: give up on reopening it
            fence, head, budget = "", 0, limit - len(_CLOSE)
        cut, skip = _cut(rest, budget)
        piece, rest = rest[:cut], rest[cut + skip :]
        after = _fence_after(fence, piece)
        part = Part(fence, piece, closed=bool(after))
        if part.render().strip():  # a cut right after leading blank lines leaves nothing
            parts.append(part)
        fence = after
    return parts


def _cut(text: str, budget: int) -> tuple[int, int]:
    """Where to cut ``text`` (at most ``budget`` characters) and how many separators to drop."""
    window = text[: budget + 1]  # a separator right after the budget still counts
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator, 1, budget + 1)
        if at > 0:
            return at, len(separator)
    cut = budget
    # Never cut through a fence marker at the start of a line: it would stop being one.
    line_start = text.rfind("\n", 0, cut) + 1
    if line_start > 0 and text.startswith(FENCE, line_start) and cut - line_start < len(FENCE):
        cut = line_start
    return cut, 0


def _fence_after(fence: str, piece: str) -> str:
    """The fence still open after ``piece``, given the one open before it."""
    for line in piece.split("\n"):
        stripped = line.strip()
        if not stripped.startswith(FENCE):
            continue
        if not fence and len(stripped) >= 2 * len(FENCE) and stripped.endswith(FENCE):
            continue  # a whole code block on one line
        fence = "" if fence else stripped
    return fence
