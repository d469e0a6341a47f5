"""Markdown (what models write) as Telegram HTML, and Telegram's way of counting length.

Telegram's HTML is a small subset: ``b i s u code pre a blockquote`` and nothing else — no
paragraphs, lists or headings, and line breaks are literal. So headings become bold lines,
list items get a bullet or their number, code blocks become ``<pre><code
class="language-…">``, and every piece of text is escaped (``& < >``); raw HTML from the model
is shown as text. Links keep only http(s), tg and mailto targets.

Telegram counts a message's length (4,096 at most) in UTF-16 code units after the markup is
parsed: an emoji outside the Basic Multilingual Plane counts twice.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

from adapters.split import split_message

TELEGRAM_LIMIT = 4096
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("strikethrough")
_INLINE_TAGS = {"strong": "b", "em": "i", "s": "s"}
_LINK_SCHEMES = ("http://", "https://", "tg://", "mailto:")


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_for_telegram(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Chunks (adapters/split.py) that fit ``limit`` as Telegram counts: a chunk rich in
    emoji can be longer in UTF-16 than in characters, and is split again."""
    chunks: list[str] = []
    for chunk in split_message(text, limit):
        excess = utf16_length(chunk) - limit
        if excess > 0:
            chunks.extend(split_for_telegram(chunk, limit - excess))
        else:
            chunks.append(chunk)
    return chunks


def escape(text: str) -> str:
    return html.escape(text, quote=False)


# Blocks that become a fixed piece of markup.
_BLOCKS = {
    "heading_open": "<b>",
    "heading_close": "</b>\n\n",
    "blockquote_open": "<blockquote>",
    "hr": "———\n\n",
}


def to_html(markdown: str) -> str:
    """Telegram HTML for ``markdown`` (``parse_mode="HTML"``)."""
    out: list[str] = []
    lists: list[int | None] = []  # per open list: the next number, or None for bullets
    for token in _MARKDOWN.parse(markdown):
        kind = token.type
        if kind == "inline":
            out.append(_inline(token.children or []))
        elif kind in _BLOCKS:
            out.append(_BLOCKS[kind])
        elif kind == "paragraph_close" and not token.hidden:  # hidden: in a tight list
            out.append("\n\n")
        elif kind in {"bullet_list_open", "ordered_list_open"}:
            if lists:
                _end_line(out)
            start = token.attrGet("start")
            lists.append(None if kind == "bullet_list_open" else int(start or 1))
        elif kind in {"bullet_list_close", "ordered_list_close"}:
            lists.pop()
            if not lists:
                out.append("\n")
        elif kind == "list_item_open":
            out.append("  " * (len(lists) - 1) + _marker(lists))
        elif kind == "list_item_close":
            _end_line(out)
        elif kind == "blockquote_close":
            _trim(out)
            out.append("</blockquote>\n\n")
        elif kind in {"fence", "code_block"}:
            out.append(_code(token.content, token.info.strip().split(" ")[0]))
    _trim(out)
    return "".join(out)


def _marker(lists: list[int | None]) -> str:
    number = lists[-1]
    if number is None:
        return "• "
    lists[-1] = number + 1
    return f"{number}. "


def _code(content: str, language: str) -> str:
    code = escape(content.rstrip("\n"))
    if language:
        return f'<pre><code class="language-{html.escape(language)}">{code}</code></pre>\n\n'
    return f"<pre>{code}</pre>\n\n"


def _inline(children: Sequence[Token]) -> str:
    out: list[str] = []
    links: list[bool] = []  # per open link: whether it became an <a>
    for child in children:
        kind = child.type
        if kind == "text":
            out.append(escape(child.content))
        elif kind in {"softbreak", "hardbreak"}:
            out.append("\n")
        elif kind == "code_inline":
            out.append(f"<code>{escape(child.content)}</code>")
        elif kind.endswith("_open") and kind[: -len("_open")] in _INLINE_TAGS:
            out.append(f"<{_INLINE_TAGS[kind[: -len('_open')]]}>")
        elif kind.endswith("_close") and kind[: -len("_close")] in _INLINE_TAGS:
            out.append(f"</{_INLINE_TAGS[kind[: -len('_close')]]}>")
        elif kind == "link_open":
            href = str(child.attrGet("href") or "")
            safe = href.lower().startswith(_LINK_SCHEMES)
            links.append(safe)
            if safe:
                out.append(f'<a href="{html.escape(href, quote=True)}">')
        elif kind == "link_close":
            if links and links.pop():
                out.append("</a>")
        elif kind == "image":
            out.append(escape(child.content or str(child.attrGet("src") or "")))
        else:  # anything else is shown as the text it was written as
            out.append(escape(child.content))
    return "".join(out)


def _end_line(out: list[str]) -> None:
    if out and not out[-1].endswith("\n"):
        out.append("\n")


def _trim(out: list[str]) -> None:
    while out and out[-1].endswith("\n"):
        out[-1] = out[-1].rstrip("\n")
        if out[-1]:
            break
        out.pop()
