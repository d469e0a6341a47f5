"""The newest turns of recently active channels, kept in memory for ``conversation()``.

Every message reads its channel's recent turns several times (the history window, who is
present for retrieval, the lorebook's scan), each time from the database. This cache keeps,
per channel, every turn whose anchor (conversation position, see memory/models.py) is at
least the channel's ``floor``:

    invariant: cached turns == the channel's stored turns with anchor >= floor

The store keeps it true: it adds each turn it appends (when the turn's anchor is at or above
the floor), replaces each turn it updates, and forgets everything when it changes many rows
at once or a write fails or is cancelled (it may have committed). A read is answered from
the cache only when the invariant makes the answer exact (see :meth:`CachedTurns.answer`);
otherwise the store reads the database as before.

A load that was in flight while a write to its channel committed may miss that write. If
every such write was an append, the load is kept with the appended turns added (an append
adds one turn and changes nothing else; Core writes a reply's row while its prompt reads
the history). After any other write the load is not cached (a per-channel write counter
tells). Like the store's other caches, this assumes the store is the only writer of its
channels' rows, as one Beseda process per database is. Turns are never deleted, so nothing
else can break the invariant.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from memory.records import Status, StoredMessage

# Channels kept (least recently used dropped first), and turns kept per channel: past
# MAX_TURNS the oldest are dropped (the floor rises) down to KEEP_TURNS. A window longer
# than that is read from the database each time, as without the cache.
MAX_CHANNELS = 256
MAX_TURNS = 1000
KEEP_TURNS = 750
# Appends remembered (all channels) for loads they raced; an older one makes a load that
# raced it uncacheable, as any other write does.
APPEND_LOG = 64
# Characters of text kept over all channels (a turn may hold 20,000): least recently used
# channels are dropped past it, so hostile long messages cannot make the cache huge.
MAX_CHARS = 10_000_000


def anchor_of(turn: StoredMessage) -> int:
    """Conversation position: a reply sits with the turn it answers."""
    return turn.in_reply_to_id if turn.in_reply_to_id is not None else turn.id


@dataclass(slots=True)
class CachedTurns:
    """One channel's turns with anchor >= ``floor`` (all of them, by the invariant)."""

    floor: int
    turns: dict[int, StoredMessage] = field(default_factory=dict)
    # (anchor, id) of every cached turn, in conversation order.
    order: list[tuple[int, int]] = field(default_factory=list)
    # Characters of text held.
    chars: int = 0

    def add(self, turn: StoredMessage) -> None:
        """Add ``turn``, or replace the cached turn with its id."""
        old = self.turns.get(turn.id)
        if old is None:
            insort(self.order, (anchor_of(turn), turn.id))
        else:
            self.chars -= len(old.text)
        self.turns[turn.id] = turn
        self.chars += len(turn.text)

    def raise_floor(self, keep: int) -> None:
        """Drop the oldest turns, in whole exchanges, until at most ``keep`` are left."""
        if len(self.order) <= keep:
            return
        first = len(self.order) - keep
        oldest = self.order[first][0]
        # A floor inside an exchange would keep half of it: move above that exchange.
        self.floor = oldest + 1 if self.order[first - 1][0] == oldest else oldest
        cut = bisect_left(self.order, (self.floor,))
        for _anchor, message_id in self.order[:cut]:
            self.chars -= len(self.turns.pop(message_id).text)
        del self.order[:cut]

    def answer(
        self, *, before_id: int | None, since_id: int | None, limit: int | None
    ) -> list[StoredMessage] | None:
        """``conversation()``'s answer (``limit`` > 0 or None) if these turns make it
        exact, else None."""
        start = bisect_left(self.order, (since_id,)) if since_id is not None else 0
        found: list[StoredMessage] = []
        for _anchor, message_id in reversed(self.order[start:]):  # newest first
            turn = self.turns[message_id]
            if before_id is None or _before(turn, before_id):
                found.append(turn)
                if len(found) == limit:
                    break
        found.reverse()
        if (since_id or 0) >= self.floor:
            return found  # every turn the query can match is here (floor 0: all of them)
        if limit is not None and len(found) == limit:
            return found  # the turns below the floor sort before every one here
        return None


class TurnCache:
    def __init__(
        self,
        max_channels: int = MAX_CHANNELS,
        max_turns: int = MAX_TURNS,
        keep_turns: int = KEEP_TURNS,
        max_chars: int = MAX_CHARS,
    ) -> None:
        self._max_channels = max_channels
        self._max_turns = max_turns
        self._keep_turns = keep_turns
        self._max_chars = max_chars
        self._channels: OrderedDict[int, CachedTurns] = OrderedDict()
        # Writes applied per channel id, and clears, for loads racing them (never trimmed:
        # an int per channel).
        self._writes: dict[int, int] = {}
        self._clears = 0
        # (channel id, its write count after the append, the turn) of the latest appends.
        self._appends: deque[tuple[int, int, StoredMessage]] = deque(maxlen=APPEND_LOG)

    def serve(
        self,
        channel_id: int,
        *,
        before_id: int | None,
        since_id: int | None,
        limit: int | None,
    ) -> list[StoredMessage] | None:
        """``conversation()``'s answer from the cache, or None if it cannot tell exactly."""
        entry = self._channels.get(channel_id)
        if entry is None:
            return None
        self._channels.move_to_end(channel_id)
        return entry.answer(before_id=before_id, since_id=since_id, limit=limit)

    def writes(self, channel_id: int) -> tuple[int, int]:
        """Take this before a load; pass it to :meth:`load`."""
        return self._clears, self._writes.get(channel_id, 0)

    def load(
        self,
        channel_id: int,
        turns: Sequence[StoredMessage],
        floor: int,
        writes: tuple[int, int],
    ) -> CachedTurns:
        """Cache ``turns``, a fresh read of all the channel's turns with anchor >= ``floor``;
        returns them (to answer the read that loaded them, cached or not)."""
        entry = CachedTurns(floor)
        for turn in turns:
            entry.add(turn)
        raced = self._raced_appends(channel_id, writes)
        if raced is None or len(turns) > self._max_turns:
            return entry  # another write raced the read, or too many turns to keep
        for turn in raced:  # the read may or may not have seen them: add them (by id)
            if anchor_of(turn) >= floor:
                entry.add(turn)
        if len(entry.order) > self._max_turns:
            entry.raise_floor(self._keep_turns)
        self._channels[channel_id] = entry
        self._channels.move_to_end(channel_id)
        self._bound()
        return entry

    def _raced_appends(
        self, channel_id: int, writes: tuple[int, int]
    ) -> list[StoredMessage] | None:
        """The turns appended to the channel since ``writes`` was taken, or None if some
        other write happened meanwhile (or an append no longer remembered)."""
        clears, count = writes
        if clears != self._clears:
            return None
        since = self._writes.get(channel_id, 0) - count
        turns = [t for c, n, t in self._appends if c == channel_id and n > count]
        return turns if len(turns) == since else None

    def appended(self, channel_id: int, turn: StoredMessage) -> None:
        """After ``turn`` was stored (committed)."""
        self._writes[channel_id] = self._writes.get(channel_id, 0) + 1
        self._appends.append((channel_id, self._writes[channel_id], turn))
        entry = self._channels.get(channel_id)
        if entry is None or anchor_of(turn) < entry.floor:
            return  # below the floor: the cache never claimed those turns
        entry.add(turn)
        if len(entry.order) > self._max_turns:
            entry.raise_floor(self._keep_turns)
        self._bound()

    def updated(
        self, channel_id: int, message_id: int, text: str | None, status: Status | None
    ) -> None:
        """After turn ``message_id`` of the channel was changed (committed)."""
        self._writes[channel_id] = self._writes.get(channel_id, 0) + 1
        entry = self._channels.get(channel_id)
        if entry is None or message_id not in entry.turns:
            return  # not cached (its anchor is below the floor)
        old = entry.turns[message_id]
        entry.add(
            replace(
                old,
                text=old.text if text is None else text,
                status=old.status if status is None else status,
            )
        )
        self._bound()

    def _bound(self) -> None:
        """Drop the least recently used channels past the channel and character limits."""
        chars = sum(entry.chars for entry in self._channels.values())
        while self._channels and (
            len(self._channels) > self._max_channels or chars > self._max_chars
        ):
            _channel_id, dropped = self._channels.popitem(last=False)
            chars -= dropped.chars

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Wrap a write of one turn (its transaction inside). If it fails or is cancelled,
        perhaps after committing, the cache cannot tell what changed: it forgets it all."""
        try:
            yield
        except BaseException:
            self.clear()
            raise

    def clear(self) -> None:
        """After a write that changed rows of any number of channels."""
        self._channels.clear()
        self._clears += 1


def tail_floor(turns: Sequence[StoredMessage], limit: int) -> tuple[list[StoredMessage], int]:
    """For a read of a channel's newest ``limit`` turns (oldest first): what to cache, and
    the floor.

    With fewer than ``limit`` turns the read saw the whole channel (floor 0). Otherwise the
    oldest exchange read may have lost earlier turns to the limit, so the floor is the next
    anchor up and that exchange is left out.
    """
    if len(turns) < limit:
        return list(turns), 0
    floor = anchor_of(turns[0]) + 1
    return [t for t in turns if anchor_of(t) >= floor], floor


def _before(turn: StoredMessage, before_id: int) -> bool:
    """The store's ``before_id`` filter: turns before it, and the replies to them."""
    return turn.id < before_id or (
        turn.in_reply_to_id is not None and turn.in_reply_to_id < before_id
    )
