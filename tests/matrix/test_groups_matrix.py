"""Group chats on Matrix: two people in a room of a real Synapse, the bot with the real core."""

from __future__ import annotations

from typing import Any

from agent.runtime.core import NOTHING_NOTICE
from tests.matrix.peers import StartBot, eventually
from tests.test_groups import prefix_breaks, users


async def test_two_people_in_a_room_are_told_apart_in_the_prompt(
    start_bot: StartBot, humans: Any
) -> None:
    alice, bob = await humans(), await humans("bob")
    await alice.client.set_displayname("Alice")
    await bob.client.set_displayname("Bob")
    bot = await start_bot(answer=lambda _m: "noted")
    room = await alice.create_room([bot.user_id, bob.user_id])
    await alice.wait_joined(room, bot.user_id)
    await bob.client.join(room)
    await alice.wait_joined(room, bob.user_id)
    name = bot.user_id[1:].split(":")[0]
    mention = {"m.mentions": {"user_ids": [bot.user_id]}}
    script = [
        (alice, "My favourite colour is green."),
        (bob, "Mine is red."),
        (alice, "What is Bob's favourite colour?"),
    ]
    for count, (person, text) in enumerate(script, start=1):
        await person.say(room, f"{name}: {text}", **mention)
        await alice.answers(room, bot.user_id, count)
        await bot.idle()
    calls = bot.generator.calls
    assert users(calls[-1]) == [
        "Alice: My favourite colour is green.",
        "Bob: Mine is red.",
        "Alice: What is Bob's favourite colour?",
    ]
    assert prefix_breaks(calls) == [1]  # names came on once, when Bob first spoke
    # A mention with nothing else: a notice, and no generation.
    await bob.say(room, f"{name}:", **mention)
    await eventually(
        lambda: NOTHING_NOTICE in [m["content"]["body"] for m in alice.shown(room, bot.user_id)],
        "the notice",
    )
    await bot.idle()
    assert len(bot.generator.calls) == len(script)
