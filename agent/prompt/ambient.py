"""How much ambient context a prompt shows, chosen so that the prompt's prefix stays stable.

Ambient turns are messages not addressed to Beseda in channels that opted in: context,
never answered. They must not crowd out the conversation, yet the history window may only
change by appending (or in rare blocks), or llama.cpp's cached prefix is lost. So:

- each *run* of ambient turns (those between two other turns) shows only its newest
  ``most`` turns that fit in ``cap`` tokens. The choice depends on the run alone, and a run
  is closed for good once the next addressed turn is stored, so it never changes later;
- all ambient turns shown in the window together stay within ``most`` turns and ``cap``
  tokens too. When they would exceed either, the channel's *ambient start* moves forward
  past the oldest of them, in a block (until at most ``keep`` of each limit is used), and
  is stored: the prefix changes once per block, as with the window's own eviction, and the
  conversation itself stays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from memory.records import Status, StoredMessage

Cost = Callable[[StoredMessage], int]


def is_ambient(turn: StoredMessage) -> bool:
    return turn.status is Status.AMBIENT


def shown(turn: StoredMessage, start: int | None) -> bool:
    """False for an ambient turn before the channel's ambient start."""
    return start is None or not is_ambient(turn) or turn.id >= start


def bound_runs(
    turns: Sequence[StoredMessage], cost: Cost, most: int, cap: int
) -> list[StoredMessage]:
    """``turns`` with each run of ambient turns cut to its newest ``most`` that fit in
    ``cap`` tokens."""
    kept: list[StoredMessage] = []
    run: list[StoredMessage] = []

    def close_run() -> None:
        chosen: list[StoredMessage] = []
        used = 0
        for turn in reversed(run):
            if len(chosen) >= most or used + cost(turn) > cap:
                break
            chosen.append(turn)
            used += cost(turn)
        kept.extend(reversed(chosen))
        run.clear()

    for turn in turns:
        if is_ambient(turn):
            run.append(turn)
        else:
            close_run()
            kept.append(turn)
    close_run()
    return kept


def next_start(
    turns: Sequence[StoredMessage], cost: Cost, most: int, cap: int, keep: float
) -> int | None:
    """The new ambient start when the ambient turns among ``turns`` exceed ``most`` turns
    or ``cap`` tokens: just after the oldest ones, so that at most ``keep`` of each limit
    remains. None when they are within both limits."""
    ambient = [t for t in turns if is_ambient(t)]
    count, tokens = len(ambient), sum(cost(t) for t in ambient)
    if count <= most and tokens <= cap:
        return None
    dropped = 0
    while dropped < len(ambient) and (count > keep * most or tokens > keep * cap):
        count -= 1
        tokens -= cost(ambient[dropped])
        dropped += 1
    return ambient[dropped - 1].id + 1
