"""The ports: what a platform adapter implements (adapters/), and how the core reaches it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from agent.events import Inbound


class ReplyStream(Protocol):
    """One answer being rendered on a platform while it is generated."""

    async def push(self, delta: str) -> None:
        """New text has arrived (the adapter decides how often to show it)."""
        ...

    async def finish(self, text: str) -> None:
        """The answer is complete; ``text`` is the whole of it and must be delivered whole."""
        ...

    async def fail(self, notice: str) -> None:
        """The answer could not be completed; tell the person, briefly."""
        ...


class ReplyTarget(Protocol):
    """What the core needs from an adapter to answer an inbound message."""

    async def open_reply(self, inbound: Inbound) -> ReplyStream: ...


class PermanentAdapterError(Exception):
    """Raised by an adapter's ``run`` when trying again cannot help (a rejected token, a
    missing intent, a configuration error): the adapter stops for good. The message says
    what to fix. Any other exception from ``run`` is logged and the adapter restarted
    (agent/runtime/supervisor.py)."""


class PlatformAdapter(ReplyTarget, Protocol):
    """A platform connection. ``run`` delivers events to ``submit`` until ``stop``.

    ``run`` may raise: the app restarts the adapter with back-off, so ``run`` must be
    callable again on the same object.
    """

    @property
    def name(self) -> str: ...

    async def run(self, submit: Callable[[Inbound, ReplyTarget], Awaitable[object]]) -> None: ...

    async def stop(self) -> None:
        """Stop intake: no new events after this returns."""
        ...


@dataclass(frozen=True, slots=True)
class ChannelMark:
    """The newest message stored from a platform in one channel: where a catch-up starts."""

    channel_key: str
    message_id: str | None  # the platform's id
    at: datetime


class Ledger(Protocol):
    """What an adapter catching up on messages it missed (while down, or across a gateway
    reconnect that replays nothing) reads from the history; agent/runtime/ledger.py."""

    @property
    def max_age(self) -> timedelta:
        """Missed messages older than this are left unanswered ([recovery] max_age_minutes);
        zero: no catch-up."""
        ...

    async def active_channels(self, platform: str) -> list[ChannelMark]:
        """The platform's recently active channels, most recent first."""
        ...

    async def stored(self, channel_key: str, message_ids: Sequence[str]) -> set[str]:
        """Which of these platform message ids are stored (taken in) already."""
        ...


def platform_failures(adapters: Sequence[object]) -> list[str]:
    """Why each adapter stopped by itself, if it did: an adapter that meets a fatal platform
    error (a rejected token, say) returns from ``run`` and sets ``failure`` to a message."""
    return [f for a in adapters if (f := getattr(a, "failure", None))]


@runtime_checkable
class Connected(Protocol):
    """Optional for adapters: whether the platform connection is up (reported on /healthz)."""

    @property
    def connected(self) -> bool: ...


def is_connected(adapter: object) -> bool:
    """An adapter without a notion of connection counts as connected."""
    return adapter.connected if isinstance(adapter, Connected) else True


@runtime_checkable
class Reopener(Protocol):
    """Optional adapter capability: answer a message stored before a restart.

    ``reopen`` returns a target whose ``open_reply`` answers the platform message
    ``platform_message_id`` in ``channel_key`` — or None when that is no longer possible
    (the message or channel is gone, the platform has no way to address it). Used once at
    start, for messages a crash left unanswered (see agent/recovery.py).
    """

    @property
    def name(self) -> str: ...

    async def reopen(
        self, channel_key: str, platform_message_id: str | None
    ) -> ReplyTarget | None: ...
