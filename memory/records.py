"""The records the history store hands out: stored turns, summaries, channel states.

Plain data, kept apart from the store so that its caches (memory/turn_cache.py) and every
reader can use them without importing the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Status(StrEnum):
    RECEIVED = "received"  # a user turn, stored before anything else happens
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A user turn that will not be answered: over a queue cap or rate limit, or found
    # unanswered after a crash and too old (or on a platform that cannot reply any more).
    SKIPPED = "skipped"
    # A user turn answered together with a later turn of the same author (the reply points
    # at that later turn).
    MERGED = "merged"
    # A reply cut off by a crash (found still streaming at start); its turn is answered again.
    INTERRUPTED = "interrupted"
    # A user turn not addressed to Beseda, in a channel that opted into ambient context:
    # shown to the model as context, never answered (not even after a restart).
    AMBIENT = "ambient"
    # An ambient turn its author withdrew (`!forget`, `!forgetme`): its text is erased and
    # the model no longer sees it.
    FORGOTTEN = "forgotten"


# A user turn counts as answered once an assistant reply to it reached one of these.
ANSWERED = (Status.DONE, Status.FAILED, Status.CANCELLED)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    channel_key: str
    role: str
    text: str
    status: Status
    author_id: str | None
    author_name: str | None
    platform_message_id: str | None
    in_reply_to_id: int | None
    created_at: datetime
    # How the author is named to the model ("Alice", "Alex #3f2a"): sanitised once, when
    # the turn is stored, so the turn renders the same for as long as it is in the prompt.
    speaker: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    id: int
    text: str
    # Anchors of the first and last turns covered, inclusive.
    first_message_id: int
    last_message_id: int


@dataclass(frozen=True, slots=True)
class ChannelState:
    # None: no window yet (a new channel, or one from before windows existed).
    window_start_id: int | None = None
    # The summary the prompt shows (it covers what was evicted before the window).
    summary: Summary | None = None
    epoch: int = 0
    # The newest summary of this epoch; newer than ``summary`` when it was made ahead of an
    # eviction that has not happened yet.
    latest_summary: Summary | None = None
    # The persona chosen here at run time (`!persona`); None: as configured.
    persona: str | None = None
    # The persona whose greeting was last posted here.
    greeted_persona: str | None = None
    # Speaker names are shown here ([chat] speaker_names = "auto" switched them on when a
    # second person spoke; they stay on, so the prompt changes only once).
    speaker_names: bool = False
    # Ambient turns before this id are no longer shown (moved forward in blocks when they
    # overflow their share; see agent/prompt/ambient.py). None: all are.
    ambient_start_id: int | None = None
