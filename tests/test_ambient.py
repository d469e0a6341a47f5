"""How much ambient context a prompt shows (agent/prompt/ambient.py), as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.prompt.ambient import bound_runs, next_start, shown
from memory.records import Status, StoredMessage


def turn(i: int, ambient: bool, words: int = 1) -> StoredMessage:
    return StoredMessage(
        id=i, channel_key="c:1", role="user", text=" ".join(["w"] * words),
        status=Status.AMBIENT if ambient else Status.DONE, author_id="a", author_name="A",
        platform_message_id=None, in_reply_to_id=None, created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip


def cost(message: StoredMessage) -> int:
    return len(message.text.split())


def ids(turns: list[StoredMessage]) -> list[int]:
    return [t.id for t in turns]


def test_each_run_keeps_its_newest_turns_within_both_limits() -> None:
    # Runs 1-5 and 7-8 around addressed turn 6, and run 10 after addressed turn 9.
    turns = [turn(i, i not in {6, 9}) for i in range(1, 11)]
    assert ids(bound_runs(turns, cost, most=3, cap=100)) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert ids(bound_runs(turns, cost, most=0, cap=100)) == [6, 9]
    heavy = [turn(1, True, 5), turn(2, True, 5), turn(3, True, 2), turn(4, False)]
    assert ids(bound_runs(heavy, cost, most=9, cap=7)) == [2, 3, 4]
    # Once the next addressed turn closes a run, what comes later leaves its choice alone
    # (an open run, the newest, still grows).
    closed = [*turns, turn(11, False)]
    later = [*closed, *(turn(i, True) for i in range(12, 17))]
    assert ids(bound_runs(later, cost, most=3, cap=100)) == [
        *ids(bound_runs(closed, cost, most=3, cap=100)),
        14,
        15,
        16,
    ]


def test_the_ambient_start_moves_past_the_oldest_in_a_block() -> None:
    turns = [turn(i, i % 3 != 0) for i in range(1, 13)]  # ambient: 1 2 4 5 7 8 10 11
    assert next_start(turns, cost, most=8, cap=100, keep=0.5) is None
    # Over the count: down to half of it, the oldest first.
    start = next_start(turns, cost, most=7, cap=100, keep=0.5)
    assert start == 8
    assert ids([t for t in turns if shown(t, start)]) == [3, 6, 8, 9, 10, 11, 12]
    # Over the tokens likewise.
    assert next_start(turns, cost, most=99, cap=6, keep=0.5) == 8
