"""Hostile text through a real Synapse: a lone UTF-16 surrogate in a message body.

Synapse refuses such an event in the clear (its canonical JSON cannot encode it: 500), but
in an encrypted room it only relays ciphertext. nio encrypts the plaintext JSON with the
surrogate written as the escape ``\\ud800``, and the bot's nio decrypts it with Python's
json, which accepts the escape: the body reaches the adapter with a lone surrogate, as any
client can make it. It must be stored and answered as U+FFFD, and the bot keep syncing.
"""

from __future__ import annotations

from typing import Any

from tests.matrix.peers import StartBot, room_with_bot


async def test_a_lone_surrogate_in_an_encrypted_message_body_is_replaced_not_fatal(
    start_bot: StartBot, humans: Any
) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await room_with_bot(alice, bot, encrypted=True, direct=True)
    await alice.say(room, "abc\ud800def")
    await alice.expect(room, bot.user_id, ["echo: abc\ufffddef"])
    await alice.say(room, "still there?")
    await alice.expect(room, bot.user_id, ["echo: abc\ufffddef", "echo: still there?"])
    await bot.idle()
    assert not bot.task.done()
    assert bot.adapter.undecryptable == 0
    # Nothing lost: both messages are stored, as valid text.
    stored = await bot.core.history.conversation(f"matrix:{room}")
    assert [t.text for t in stored if t.role == "user"] == ["abc\ufffddef", "still there?"]
