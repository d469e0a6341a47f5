"""The adapter kit's intake decision (adapters/intake.py), table-driven."""

from __future__ import annotations

from dataclasses import replace

import pytest

from adapters.intake import AllowLists, Decision, Facts, Outcome, decide, listed
from agent.runtime.limits import Buckets, Verdict

# A mention in a group by an ordinary user: answered.
BASE = Facts(author_id="u1", mention=True)


CASES: list[tuple[str, Facts, Verdict, Decision]] = [
    ("a mention", BASE, "ok", Decision(Outcome.ACCEPT, "mention")),
    ("its own message", replace(BASE, own=True), "ok", Decision(Outcome.IGNORE, "own message")),
    ("a bot", replace(BASE, bot=True), "ok", Decision(Outcome.IGNORE, "from a bot")),
    (
        "a DM with dms off",
        replace(BASE, direct=True, dms_enabled=False),
        "ok",
        Decision(Outcome.IGNORE, "direct messages are off"),
    ),
    (
        "a DM",
        replace(BASE, mention=False, direct=True),
        "ok",
        Decision(Outcome.ACCEPT, "direct"),
    ),
    (
        "not allowed",
        replace(BASE, allowed=False),
        "ok",
        Decision(Outcome.IGNORE, "not in the allow-lists"),
    ),
    (
        "not allowed, in a context channel",
        replace(BASE, mention=False, allowed=False, context=True),
        "ok",
        Decision(Outcome.IGNORE, "not in the allow-lists"),
    ),
    (
        "a reply to the bot",
        replace(BASE, mention=False, reply=True),
        "ok",
        Decision(Outcome.ACCEPT, "reply"),
    ),
    (
        "a command",
        replace(BASE, mention=False, command=True),
        "ok",
        Decision(Outcome.ACCEPT, "command"),
    ),
    (
        "an all-messages channel",
        replace(BASE, mention=False, all_messages=True),
        "ok",
        Decision(Outcome.ACCEPT, "channel"),
    ),
    (
        "not addressed",
        replace(BASE, mention=False),
        "ok",
        Decision(Outcome.IGNORE, "not addressed"),
    ),
    (
        "not addressed, in a context channel",
        replace(BASE, mention=False, context=True),
        "notice",  # ambient messages are never rate-limited: nothing is generated
        Decision(Outcome.AMBIENT, "context"),
    ),
    (
        "empty, in a context channel",
        replace(BASE, mention=False, context=True, empty=True),
        "ok",
        Decision(Outcome.IGNORE, "not addressed"),
    ),
    (
        "addressed in a context channel",
        replace(BASE, context=True),
        "ok",
        Decision(Outcome.ACCEPT, "mention"),
    ),
    (
        "an empty mention",  # the core stores it and says there is nothing to answer
        replace(BASE, empty=True),
        "ok",
        Decision(Outcome.ACCEPT, "mention"),
    ),
    ("over the rate", BASE, "notice", Decision(Outcome.LIMITED, "rate limit", notice=True)),
    ("still over the rate", BASE, "quiet", Decision(Outcome.LIMITED, "rate limit")),
    (
        "an admin over the rate",
        replace(BASE, admin=True),
        "quiet",
        Decision(Outcome.ACCEPT, "mention"),
    ),
]


@pytest.mark.parametrize(
    ("facts", "verdict", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_decision(facts: Facts, verdict: Verdict, expected: Decision) -> None:
    consulted: list[str] = []

    def bucket(author: str) -> Verdict:
        consulted.append(author)
        return verdict

    assert decide(facts, bucket) == expected
    # The bucket is spent only on messages that would be answered, and never an admin's.
    spends = expected.outcome in {Outcome.ACCEPT, Outcome.LIMITED} and not facts.admin
    assert consulted == (["u1"] if spends else [])


def test_one_notice_per_episode_with_a_real_bucket() -> None:
    now = [0.0]
    buckets = Buckets(2, 2.0, clock=lambda: now[0])
    outcomes = [decide(BASE, buckets.check) for _ in range(4)]
    assert [(d.outcome, d.notice) for d in outcomes] == [
        (Outcome.ACCEPT, False),
        (Outcome.ACCEPT, False),
        (Outcome.LIMITED, True),
        (Outcome.LIMITED, False),
    ]
    now[0] = 30.0  # one message refilled
    assert decide(BASE, buckets.check).outcome is Outcome.ACCEPT


ALLOW_CASES: list[tuple[str, AllowLists, dict[str, object], bool]] = [
    ("empty lists admit everyone", AllowLists(), {}, True),
    ("listed user", AllowLists.of(users=[1]), {"user": "1"}, True),
    ("unlisted user", AllowLists.of(users=[1]), {"user": "2"}, False),
    (
        "a role instead of the id",
        AllowLists.of(users=[1], roles=[9]),
        {"user": "2", "roles": {"9"}},
        True,
    ),
    ("another server", AllowLists.of(servers=[5]), {"server": "6"}, False),
    ("a DM is no server's", AllowLists.of(servers=[5], channels=[7]), {"server": None}, True),
    (
        "a thread through its parent",
        AllowLists.of(channels=[7]),
        {"server": "5", "channels": {"8", "7"}},
        True,
    ),
    ("another channel", AllowLists.of(channels=[7]), {"server": "5", "channels": {"8"}}, False),
    (
        "an admin passes all",
        AllowLists.of(users=[1], channels=[7], admin_users=[3]),
        {"user": "3", "server": "5"},
        True,
    ),
    (
        "an admin role",
        AllowLists.of(users=[1], admin_roles=[4]),
        {"user": "2", "roles": {"4"}},
        True,
    ),
]


@pytest.mark.parametrize(
    ("lists", "where", "admitted"),
    [case[1:] for case in ALLOW_CASES],
    ids=[case[0] for case in ALLOW_CASES],
)
def test_the_allow_lists(lists: AllowLists, where: dict[str, object], admitted: bool) -> None:
    user = str(where.pop("user", "1"))
    assert lists.admits(user, **where) is admitted  # type: ignore[arg-type]


def test_listed_takes_ids_of_any_type_or_all() -> None:
    assert listed([1, 2], "2")
    assert listed(("!a:x",), "!b:x", "!a:x")
    assert not listed((), "1")
    assert listed("all", "anything")
