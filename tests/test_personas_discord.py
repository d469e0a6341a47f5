"""Discord tells the core where a message was written: thread parent, server, admin."""

from __future__ import annotations

from tests.support import discord_fake as fk
from tests.support.discord_fake import user
from tests.test_discord import MENTION, StartBot, fake, start_bot

__all__ = ["fake", "start_bot"]  # the fixtures this module uses


async def test_a_thread_inherits_its_channel_persona_and_admins_switch(
    start_bot: StartBot, fake: fk.DiscordFake
) -> None:
    bot = await start_bot(admin_users=[222])
    personas = bot.core._deps.personas
    assert personas is not None
    await fake.message_create(
        f"{MENTION} in a thread", mentions=[fake.bot], channel_id=fk.THREAD_ID
    )
    await bot.answered(1, fk.THREAD_ID)
    place = personas._places[f"discord:{fk.THREAD_ID}"]
    assert place.parent_key == f"discord:{fk.CHANNEL_ID}"
    assert place.server_id == str(fk.GUILD_ID)
    # Not an admin: refused.
    await fake.message_create("!persona beseda-ru")
    assert (await bot.answered(1))[-1] == "Only admins can switch the persona."
    # An admin switches the parent channel; the thread follows it.
    await fake.message_create("!persona beseda-ru", author=user(222, "boss"))
    assert (await bot.answered(2))[-1] == "Persona here is now beseda-ru (Беседа)."
    await fake.message_create(f"{MENTION} and now?", mentions=[fake.bot], channel_id=fk.THREAD_ID)
    await bot.answered(2, fk.THREAD_ID)
    assert "по-русски" in bot.generator.calls[-1][0].content
