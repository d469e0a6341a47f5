"""Reading a Telegram message: who wrote it, where, whether it names the bot, what it
replies to (quoted with names), and its document.

The Bot API nests only the nearest message of a reply chain and cannot fetch one by id, so
deeper quotes come from ``seen``: the messages this process received (in a chat with
privacy mode off, every one of them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from aiogram.types import Message, MessageEntity, User

from adapters.quotes import quote, reply_chain
from agent.events import Attachment

Seen = Mapping[tuple[int, int], Message]


def author_name(user: User) -> str:
    """How people know the author: first and last name, else @username, else the id."""
    return user.full_name.strip() or (f"@{user.username}" if user.username else str(user.id))


def channel_of(message: Message) -> tuple[str, str | None]:
    """The channel key and, for a forum topic, its chat's key (the parent)."""
    chat = f"telegram:{message.chat.id}"
    if message.is_topic_message and message.message_thread_id is not None:
        return f"{chat}/{message.message_thread_id}", chat
    return chat, None


def mentioned(text: str, entities: Sequence[MessageEntity], me: User) -> bool:
    """``@username`` of the bot, or a text mention linking to it."""
    for entity in entities:
        if entity.type == "text_mention" and entity.user and entity.user.id == me.id:
            return True
        mention = entity.type == "mention" and me.username
        if mention and entity.extract_from(text).lower() == f"@{me.username}".lower():
            return True
    return False


def strip_mention(text: str, username: str | None) -> str:
    if username:
        text = re.sub(rf"(?<![\w@])@{re.escape(username)}\b", "", text, flags=re.IGNORECASE)
    return text.strip()


def replied(message: Message) -> Message | None:
    """The message this one replies to; in a forum topic every message "replies" to the
    topic's first (service) message, which is no reply."""
    reply = message.reply_to_message
    if reply is None or reply.forum_topic_created is not None:
        return None
    return reply


async def quotes(message: Message, reply: Message, me: User, seen: Seen) -> list[str]:
    """The reply chain of ``message`` (adapters/quotes.py), or the part the person quoted."""
    if message.quote is not None and message.quote.text:
        name = author_name(reply.from_user) if reply.from_user else "someone"
        return [quote(name, message.quote.text)]

    def quoted(m: Message) -> str:
        text = m.text or m.caption or ""
        return quote(author_name(m.from_user), text) if text and m.from_user else ""

    async def parent(m: Message) -> Message | None:
        known = seen.get((m.chat.id, m.message_id), m)
        above = replied(known)
        return seen.get((above.chat.id, above.message_id), above) if above else None

    return await reply_chain(
        reply,
        own=lambda m: m.from_user is not None and m.from_user.id == me.id,
        quoted=quoted,
        parent=parent,
    )


def attachments(message: Message) -> tuple[Attachment, ...]:
    document = message.document
    if document is None:
        return ()
    return (
        Attachment(
            document.file_name or "document", document.mime_type or "", document.file_size or 0
        ),
    )
