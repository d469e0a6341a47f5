"""After a crash: answer the messages it left unanswered, or mark them skipped.

At start, before any adapter takes new messages, :func:`find_pending` marks replies that
were still streaming as INTERRUPTED, marks unanswered user turns older than
``[recovery] max_age_minutes`` SKIPPED, and returns the younger ones. Once the adapters run,
:func:`resume` asks each message's adapter to reopen it (:class:`agent.ports.Reopener`)
and queues it like a new message (several from one author are answered together); where
the adapter cannot reopen it, it is marked SKIPPED with a log line.

Every pending turn thus ends DONE-answered, FAILED, or SKIPPED: a second restart finds
nothing to do for it (never answered twice), and nothing is dropped without a status. This
assumes one serving process per database, which ``run`` enforces (memory/instance.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent.events import Inbound
from agent.ports import Reopener, ReplyTarget
from agent.runtime.core import Core, Reply
from memory.history import HistoryStore
from memory.records import Status, StoredMessage

log = logging.getLogger(__name__)

# How long to wait for an adapter to reopen one message (it may still be connecting).
REOPEN_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Pending:
    messages: tuple[StoredMessage, ...]
    interrupted: int
    expired: int


async def find_pending(history: HistoryStore, max_age: timedelta) -> Pending:
    """Settle what a crash left behind; the user turns still worth answering, oldest first."""
    interrupted = await history.interrupt_streaming()
    cutoff = datetime.now(UTC) - max_age
    expired = await history.unanswered(before=cutoff)
    for message in expired:
        await history.update(message.id, status=Status.SKIPPED)
    pending = await history.unanswered(since=cutoff)
    if interrupted or expired or pending:
        log.warning(
            "recovery: %d interrupted replies, %d unanswered messages too old (skipped), "
            "%d to answer",
            interrupted, len(expired), len(pending),
        )  # fmt: skip
    return Pending(tuple(pending), interrupted, len(expired))


async def resume(
    core: Core, pending: Pending, adapters: Sequence[object]
) -> list[asyncio.Future[Reply]]:
    """Queue each pending message for an answer, or mark it skipped; the replies' futures."""
    reopeners: dict[str, Reopener | None] = {a.name: a for a in adapters if isinstance(a, Reopener)}
    reopened: list[tuple[StoredMessage, str, ReplyTarget]] = []
    for message in pending.messages:
        platform = message.channel_key.split(":", 1)[0]
        adapter = reopeners.get(platform)
        try:
            target = await _reopen(adapter, message)
        except TimeoutError:
            log.warning("recovery: %s did not answer in time; not asking it again", platform)
            reopeners[platform] = target = None
        if target is None:
            log.warning(
                "recovery: cannot answer message %d in %s any more; marked skipped",
                message.id, message.channel_key,
            )  # fmt: skip
            await core.history.update(message.id, status=Status.SKIPPED)
            continue
        reopened.append((message, platform, target))
    # Queued together, with no await in between, so one author's turns join one reply.
    return [
        core.resume(_inbound(m, platform), m.id, target, m.speaker)
        for m, platform, target in reopened
    ]


async def _reopen(adapter: Reopener | None, message: StoredMessage) -> ReplyTarget | None:
    if adapter is None:
        return None
    try:
        return await asyncio.wait_for(
            adapter.reopen(message.channel_key, message.platform_message_id),
            REOPEN_TIMEOUT_SECONDS,
        )
    except TimeoutError:
        raise
    except Exception:  # a platform error: this message cannot be answered
        log.exception("recovery: %s could not reopen message %d", adapter.name, message.id)
        return None


def _inbound(message: StoredMessage, platform: str) -> Inbound:
    return Inbound(
        platform=platform,
        channel_key=message.channel_key,
        author_id=message.author_id or "",
        author_name=message.author_name or "",
        text=message.text,
        message_id=message.platform_message_id,
        timestamp=message.created_at,
    )
