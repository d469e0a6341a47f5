"""The intake decision: answer this message, keep it as context, or ignore it — and why.

Every platform asks the same questions of a message in the same order: is it the bot's own,
a bot's, a direct message where those are off, from someone the allow-lists do not admit;
is it addressed to the bot (mentioned, replied to, a direct chat, a command, a channel that
takes every message); is anything left to answer; is its author within the rate limit. The
platform gathers the :class:`Facts` (that may take I/O); :func:`decide` is pure.

A message nobody addressed to the bot is ``AMBIENT`` where its channel opted into ambient
context (``[discord] context_channels``, ``[matrix] context_rooms``, ``[telegram]
context_chats``): the core stores it as context and never answers it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

from agent.i18n import catalog as texts
from agent.i18n import choose
from agent.runtime.limits import Verdict

# The English wording; rate_notice() says it in the message's language.
RATE_NOTICE = texts.INTAKE_RATE.en
# How a message was addressed to the bot, in the order they are checked.
Address = Literal["direct", "mention", "reply", "command", "channel"]
# A config's list of ids, or "all" (context_channels = "all").
Ids = Collection[int] | Collection[str] | Literal["all"]


class Outcome(enum.Enum):
    IGNORE = "ignore"
    LIMITED = "rate-limited"
    AMBIENT = "ambient"
    ACCEPT = "accept"


@dataclass(frozen=True, slots=True)
class Facts:
    author_id: str
    own: bool = False  # the bot's own message
    bot: bool = False  # from a bot the platform does not answer
    direct: bool = False  # a direct (private, two-person) conversation
    dms_enabled: bool = True
    allowed: bool = True  # the allow-lists admit the author here
    admin: bool = False  # passes the rate limit too
    mention: bool = False
    reply: bool = False  # a reply to one of the bot's messages
    command: bool = False
    all_messages: bool = False  # the channel takes every message
    context: bool = False  # the channel keeps unaddressed messages as ambient context
    # Nothing left once the mention is removed: never ambient context (an addressed one still
    # goes to the core, which answers it with a notice).
    empty: bool = False

    @property
    def address(self) -> Address | None:
        ways: tuple[tuple[Address, bool], ...] = (
            ("direct", self.direct),
            ("mention", self.mention),
            ("reply", self.reply),
            ("command", self.command),
            ("channel", self.all_messages),
        )
        return next((way for way, applies in ways if applies), None)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    # Why it is ignored or limited (for the debug log); the way it was addressed otherwise.
    reason: str
    # Rate-limited: tell the person (once per episode); the bucket says when.
    notice: bool = False

    @property
    def answered(self) -> bool:
        return self.outcome is Outcome.ACCEPT


def decide(facts: Facts, rate: Callable[[str], Verdict]) -> Decision:
    """The verdict on one message. ``rate`` is the per-user bucket (agent/runtime/limits.py),
    consulted only for a message that would be answered."""
    for ignored, reason in (
        (facts.own, "own message"),
        (facts.bot, "from a bot"),
        (facts.direct and not facts.dms_enabled, "direct messages are off"),
        (not facts.allowed, "not in the allow-lists"),
    ):
        if ignored:
            return Decision(Outcome.IGNORE, reason)
    address = facts.address
    if address is None:
        if facts.context and not facts.empty:
            return Decision(Outcome.AMBIENT, "context")
        return Decision(Outcome.IGNORE, "not addressed")
    # An addressed message with nothing left to answer still goes on: the core stores it and
    # tells the person so (it never reaches the model).
    if not facts.admin:
        verdict = rate(facts.author_id)
        if verdict != "ok":
            return Decision(Outcome.LIMITED, "rate limit", notice=verdict == "notice")
    return Decision(Outcome.ACCEPT, address)


def listed(ids: Ids, *candidates: int | str) -> bool:
    """Whether any candidate id is in a config list (``"all"`` lists every id)."""
    if ids == "all":
        return True
    wanted = {str(i) for i in ids}
    return any(str(candidate) in wanted for candidate in candidates)


@dataclass(frozen=True, slots=True)
class AllowLists:
    """Who may talk to the bot where; an empty list admits everyone. A user passes with an
    allowed id OR an allowed role; admins pass everything (Discord, Telegram)."""

    servers: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    admin_users: frozenset[str] = frozenset()
    admin_roles: frozenset[str] = frozenset()

    @classmethod
    def of(cls, **lists: Collection[int] | Collection[str]) -> AllowLists:
        return cls(**{name: frozenset(str(i) for i in ids) for name, ids in lists.items()})

    def is_admin(self, user: str, roles: Collection[str] = ()) -> bool:
        return user in self.admin_users or not self.admin_roles.isdisjoint(roles)

    def admits(
        self,
        user: str,
        *,
        roles: Collection[str] = (),
        server: str | None = None,
        channels: Collection[str] = (),
    ) -> bool:
        """``server`` None is a direct conversation: the channel lists concern servers and
        groups; direct messages are governed by ``dms`` and the user lists."""
        if self.is_admin(user, roles):
            return True
        if server is not None and self.servers and server not in self.servers:
            return False
        if server is not None and self.channels and self.channels.isdisjoint(channels):
            return False
        if self.users or self.roles:
            return user in self.users or not self.roles.isdisjoint(roles)
        return True


def rate_notice(text: str, language: str = "auto") -> str:
    """The rate-limit notice in the language ``text`` is written in (else ``language``,
    [chat] language). Adapters refuse before the core, so no persona is consulted here."""
    return texts.INTAKE_RATE(choose(None, [text], language))
