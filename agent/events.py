"""The platform-neutral event every adapter hands to the core."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


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
    is_direct: bool = False
    attachments: tuple[Attachment, ...] = ()
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


def channel_key(platform: str, channel: str) -> str:
    """``"local"`` becomes ``"console:local"``; an already qualified key stays as it is."""
    return channel if ":" in channel else f"{platform}:{channel}"
