"""The platform-neutral event every adapter hands to the core."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from memory.text import valid_text

# Letters and symbols that show as nothing (Hangul fillers, the braille blank).
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    platform: str
    # Platform-qualified: "console:local", "discord:123", "matrix:!room:server".
    channel_key: str
    author_id: str
    author_name: str
    text: str
    message_id: str | None = None
    reply_to: str | None = None
    thread_id: str | None = None
    # For a thread: the channel key of the channel (room) it belongs to; threads inherit its
    # persona. None elsewhere.
    parent_key: str | None = None
    # The server the channel belongs to (Discord guild id, Matrix server name), for persona
    # assignment by server; None for DMs and the console.
    server_id: str | None = None
    is_direct: bool = False
    # The adapter's verdict: the author is one of the platform's configured admins (admin-only
    # commands such as switching the persona check it).
    is_admin: bool = False
    attachments: tuple[Attachment, ...] = ()
    # Not addressed to Beseda, in a channel that opted into ambient context ([discord]
    # context_channels, [matrix] context_rooms, [telegram] context_chats): stored as context
    # for later replies, never answered.
    ambient: bool = False
    # The author's interface language as the platform reports it ("ru", "en-US"): Telegram's
    # language_code, a Discord interaction's locale; None where unknown. It picks the
    # language of Beseda's own words when the message's words do not (agent/i18n).
    locale: str | None = None
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


def channel_key(platform: str, channel: str) -> str:
    """``"local"`` becomes ``"console:local"``; an already qualified key stays as it is."""
    return channel if ":" in channel else f"{platform}:{channel}"


def blank(text: str) -> bool:
    """Nothing to answer: only whitespace and invisible characters (zero-width spaces and
    joiners, direction marks, fillers)."""
    return all(
        char.isspace() or char in _BLANK_GLYPHS or unicodedata.category(char) in {"Cf", "Cc"}
        for char in text
    )


def valid_inbound(inbound: Inbound) -> Inbound:
    """The event with valid text in every field (message, names, ids, keys, file names):
    lone surrogates, which JSON escapes and command lines can carry, become U+FFFD before
    anything stores, embeds, tokenises or prints them (see memory/text.py). Matrix ids in
    relations are whatever a client sent, so the keys are checked too."""
    changes: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = getattr(inbound, name)
        if isinstance(value, str) and (valid := valid_text(value)) is not value:
            changes[name] = valid
    attachments = tuple(
        replace(a, filename=valid_text(a.filename), content_type=valid_text(a.content_type))
        for a in inbound.attachments
    )
    if attachments != inbound.attachments:
        changes["attachments"] = attachments
    return replace(inbound, **changes) if changes else inbound


_TEXT_FIELDS = tuple(f.name for f in fields(Inbound) if f.name not in {"attachments", "timestamp"})
