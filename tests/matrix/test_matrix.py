"""The real Matrix adapter and the real core against a real Synapse; a nio client is the human."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from adapters.attachments import channel_documents
from adapters.intake import RATE_NOTICE
from adapters.matrix import MatrixAdapter, matrix_adapter, strip_reply_fallback
from adapters.matrix_reply import MatrixReply, MatrixSendError, edit_content, render_html
from adapters.matrix_session import Secrets, device_summary, load_credentials, matrix_secrets
from adapters.registry import configured_adapters
from agent.config import Config, ConfigError, MatrixConfig, StorageConfig, load_config
from agent.events import Inbound
from agent.i18n import catalog as texts
from agent.ports import platform_failures
from memory.documents import DocumentIndex
from memory.vectors import ChromaStore, open_client
from tests.matrix.peers import (
    PASSWORD,
    WAIT,
    StartBot,
    eventually,
    human_room_with_others,
    new_user,
    next_number,
    relation_of,
    room_with_bot,
)
from tests.matrix.synapse import SERVER_NAME, Synapse
from tests.support.fakes import SteppingClock, held_documents, record_submissions
from tests.support.retrieval import WordHashEmbedder


async def test_invite_join_mention_reply(start_bot: StartBot, humans: Any) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await human_room_with_others(alice, bot, humans)
    await alice.say(room, "nobody asked the bot")
    name = bot.user_id[1:].split(":")[0]
    asked = await alice.say(
        room, f"{name}: what is two plus two?", **{"m.mentions": {"user_ids": [bot.user_id]}}
    )
    [answer] = await alice.expect(room, bot.user_id, ["echo: what is two plus two?"])
    assert answer["relation"]["m.in_reply_to"]["event_id"] == asked
    assert answer["content"]["m.mentions"] == {"user_ids": [alice.user_id]}
    # Only the mention was answered, and the history is per room.
    assert len(bot.generator.calls) == 1
    history = await bot.core._history.conversation(f"matrix:{room}")
    assert [turn.text for turn in history] == [
        "what is two plus two?",
        "echo: what is two plus two?",
    ]


async def test_a_reply_to_others_quotes_the_chain_even_when_encrypted(
    start_bot: StartBot, humans: Any
) -> None:
    alice, carol = await humans(), await humans("carol")
    bot = await start_bot()
    room = await alice.create_room([bot.user_id, carol.user_id], encrypted=True)
    await alice.wait_joined(room, bot.user_id)
    await carol.client.join(room)
    await alice.wait_joined(room, carol.user_id)
    await carol.wait_joined(room, carol.user_id)  # her client has synced the room too
    await carol.client.sync()  # learn the room's members and devices before writing
    first = await carol.say(room, "The launch code is 7731.")
    second = await alice.say(
        room, "> <@carol> The launch code is 7731.\n\nAnd the door code is 4242.",
        **{"m.relates_to": {"m.in_reply_to": {"event_id": first}}},
    )  # fmt: skip
    name = bot.user_id[1:].split(":")[0]
    await alice.say(
        room, f"{name}: which codes did we get?",
        **{
            "m.mentions": {"user_ids": [bot.user_id]},
            "m.relates_to": {"m.in_reply_to": {"event_id": second}},
        },
    )  # fmt: skip
    await alice.answers(room, bot.user_id, 1)
    await bot.idle()
    asked = (await bot.core._history.conversation(f"matrix:{room}"))[0].text
    # Oldest first, each as "> name wrote: text", the reply fallback stripped, then the question.
    quoted = [line.partition(" wrote: ") for line in asked.split("\n")[:2]]
    assert [(q[0][:2], q[2]) for q in quoted] == [
        ("> ", "The launch code is 7731."),
        ("> ", "And the door code is 4242."),
    ]
    assert asked.split("\n")[2:] == ["which codes did we get?"]
    assert bot.adapter.undecryptable == 0


async def test_a_pill_and_the_display_name_are_mentions_too(
    start_bot: StartBot, humans: Any
) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await human_room_with_others(alice, bot, humans)
    localpart = bot.user_id[1:].split(":")[0]
    pill = f'<a href="https://matrix.to/#/{bot.user_id}">{localpart}</a>: hi there'
    await alice.say(
        room, f"{localpart}: hi there", format="org.matrix.custom.html", formatted_body=pill
    )
    await alice.expect(room, bot.user_id, ["echo: hi there"])
    await alice.say(room, f"{bot.user_id}, the full id works")
    await alice.expect(room, bot.user_id, ["echo: hi there", "echo: the full id works"])
    await alice.say(room, f"and you, {localpart.upper()}, how are you?")
    await alice.expect(
        room,
        bot.user_id,
        [
            "echo: hi there",
            "echo: the full id works",
            f"echo: and you, {localpart.upper()}, how are you?",
        ],
    )


async def test_only_served_rooms_are_answered_and_admins_pass(
    start_bot: StartBot, humans: Any
) -> None:
    alice = await humans()
    carol = await humans("carol")
    bot = await start_bot(rooms=("!elsewhere:beseda.test",), admins=(alice.user_id,))
    # Alice is an admin: her invite to a room outside `rooms` is accepted, and she is answered.
    room = await alice.create_room([bot.user_id, carol.user_id])
    await alice.wait_joined(room, bot.user_id)
    await carol.client.join(room)
    await alice.wait_joined(room, carol.user_id)
    await carol.wait_joined(room, carol.user_id)  # her client has synced the room too
    await carol.say(room, "!help")
    await alice.say(room, "!help")
    await alice.answers(room, bot.user_id, 1)
    await bot.idle()
    [answer] = alice.shown(room, bot.user_id)  # Carol's command was not answered
    asked = alice.from_user(room, alice.user_id)[-1]["event_id"]
    assert answer["relation"]["m.in_reply_to"]["event_id"] == asked


async def test_a_fast_writer_gets_one_notice(start_bot: StartBot, humans: Any) -> None:
    alice = await humans()
    bot = await start_bot(rate_limit_messages=1)
    room = await room_with_bot(alice, bot, direct=True)
    for text in ("one", "two", "three"):
        await alice.say(room, text)
    # The notice goes out at once, possibly before the answer to "one" is finished.
    want = sorted(["echo: one", RATE_NOTICE])

    def bodies() -> list[str]:
        return sorted(m["content"]["body"] for m in alice.shown(room, bot.user_id))

    await eventually(lambda: bodies() == want, f"answers {want}")
    await bot.idle()
    assert bodies() == want
    assert len(bot.generator.calls) == 1


async def test_a_fast_russian_writer_gets_the_notice_in_russian(
    start_bot: StartBot, humans: Any
) -> None:
    alice = await humans()
    bot = await start_bot(rate_limit_messages=1)
    room = await room_with_bot(alice, bot, direct=True)
    for text in ("раз", "два", "три"):
        await alice.say(room, text)
    want = sorted(["echo: раз", texts.INTAKE_RATE.ru])

    def bodies() -> list[str]:
        return sorted(m["content"]["body"] for m in alice.shown(room, bot.user_id))

    await eventually(lambda: bodies() == want, f"answers {want}")
    await bot.idle()
    assert bodies() == want


async def test_direct_room_answers_every_message(start_bot: StartBot, humans: Any) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await room_with_bot(alice, bot, direct=True)
    await alice.say(room, "hello there")
    [answer] = await alice.expect(room, bot.user_id, ["echo: hello there"])
    # No ping in a two-person room.
    assert answer["content"]["m.mentions"] == {}
    await bot.idle()
    history = await bot.core._history.conversation(f"matrix:{room}")
    assert [turn.text for turn in history] == ["hello there", "echo: hello there"]


async def test_a_thread_reply_stays_in_the_thread_under_its_own_key(
    start_bot: StartBot, humans: Any
) -> None:
    alice = await humans()
    bot = await start_bot(all_messages_rooms=())
    room = await room_with_bot(alice, bot, direct=True)
    root = await alice.say(room, "a thread starts here")
    await alice.expect(room, bot.user_id, ["echo: a thread starts here"])
    in_thread = await alice.say(
        room,
        "a question in the thread",
        **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}},
    )
    answers = await alice.expect(
        room, bot.user_id, ["echo: a thread starts here", "echo: a question in the thread"]
    )
    relation = answers[1]["relation"]
    assert relation["rel_type"] == "m.thread"
    assert relation["event_id"] == root
    assert relation["m.in_reply_to"]["event_id"] == in_thread
    await bot.idle()
    # The thread's history has only the thread's turns.
    thread = await bot.core._history.conversation(f"matrix:{room}/{root}")
    assert [t.text for t in thread] == [
        "a question in the thread",
        "echo: a question in the thread",
    ]


async def test_a_streamed_reply_is_edited_within_the_budget_and_ends_whole(
    start_bot: StartBot, humans: Any
) -> None:
    words = " ".join(f"**word{i}**" for i in range(40))
    alice = await humans()
    bot = await start_bot(
        answer=lambda _m: words, clock=SteppingClock(0.6), edit_interval=1.0, max_edits=3
    )
    room = await room_with_bot(alice, bot, direct=True)
    await alice.say(room, "stream please")
    await bot.idle()
    [answer] = await eventually(
        lambda: [
            a
            for a in alice.shown(room, bot.user_id)
            if a["content"]["body"] == words and a["edits"] >= 1
        ],
        "the final edit",
    )
    # Three streamed edits at most, plus the final one that carries the whole text.
    assert 1 <= answer["edits"] <= 4
    assert answer["content"]["formatted_body"].startswith("<p><strong>word0</strong>")
    edits = [e for e in alice.from_user(room, bot.user_id) if relation_of(e).get("rel_type")]
    assert edits[-1]["content"]["m.new_content"]["body"] == words


async def test_an_encrypted_room_round_trip(start_bot: StartBot, humans: Any) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await room_with_bot(alice, bot, encrypted=True, direct=True)
    await alice.say(room, "a secret question")
    [answer] = await alice.expect(room, bot.user_id, ["echo: a secret question"])
    # It really travelled encrypted: the bot decrypted it, and the human decrypted the answer.
    assert answer["type"] == "m.room.message"
    assert bot.adapter.client.rooms[room].encrypted
    assert bot.adapter.undecryptable == 0


async def test_a_file_is_indexed_and_the_question_after_it_waits_for_it(
    start_bot: StartBot, humans: Any, tmp_path: Path
) -> None:
    """In an encrypted direct room: the file is fetched, decrypted and indexed into the room's
    documents; the question sent right after is answered after the notice; another room is
    answered meanwhile."""
    alice = await humans()
    bot = await start_bot(attachments=True)
    store = ChromaStore(open_client(tmp_path / "chroma"), "documents", WordHashEmbedder())
    index = DocumentIndex(store, chunk_tokens=30, overlap_tokens=8)
    add = channel_documents(index, tmp_path / "attachments")
    release = asyncio.Event()
    bot.adapter.use_documents(held_documents(release, add))
    room = await room_with_bot(alice, bot, encrypted=True, direct=True)
    other = await room_with_bot(alice, bot, direct=True)
    note = "Выдры держатся за лапы во сне.\n".encode()
    await alice.send_file(room, "выдры.txt", note, encrypt=True)
    await alice.say(room, "what do otters do?")
    await alice.say(other, "hello")
    await alice.expect(other, bot.user_id, ["echo: hello"])
    assert alice.shown(room, bot.user_id) == []  # the question waits for the document
    release.set()
    await alice.expect(
        room,
        bot.user_id,
        ["Добавила выдры.txt в документы этого канала (1 фрагмент).", "echo: what do otters do?"],
    )
    scope = f"matrix:{room}"
    assert list(await index.indexed(scope)) == ["выдры.txt"]
    [chunk] = await store.get({"scope": scope})
    assert chunk.text == note.decode().strip()  # decrypted, not the ciphertext


async def test_files_not_addressed_to_the_bot_are_left_alone(
    start_bot: StartBot, humans: Any, tmp_path: Path
) -> None:
    """In a group room a file counts only with a mention in its caption; a binary file is
    refused with the reason; with attachments off nothing is fetched."""
    alice = await humans()
    bot = await start_bot(attachments=True)
    store = ChromaStore(open_client(tmp_path / "chroma"), "documents", WordHashEmbedder())
    index = DocumentIndex(store, chunk_tokens=30, overlap_tokens=8)
    bot.adapter.use_documents(channel_documents(index, tmp_path / "attachments"))
    room = await human_room_with_others(alice, bot, humans)
    await alice.send_file(room, "ignored.txt", b"Nobody asked the bot about this.")
    root = await alice.say(room, "a thread about files")
    thread = {"rel_type": "m.thread", "event_id": root, "is_falling_back": True}
    await alice.send_file(
        room,
        "picture.txt",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        filename="picture.txt",
        body=f"{bot.user_id} read this",
        **{"m.mentions": {"user_ids": [bot.user_id]}, "m.relates_to": thread},
    )
    shown = await alice.expect(
        room, bot.user_id, ["I could not read picture.txt: it is not text.", "echo: read this"]
    )
    # Both in the thread the file was posted in.
    assert [m["relation"].get("event_id") for m in shown] == [root, root]
    assert [m["relation"].get("rel_type") for m in shown] == ["m.thread", "m.thread"]
    assert await index.indexed(f"matrix:{room}/{root}") == {}


async def test_a_restart_answers_nothing_twice_and_reuses_the_device(
    start_bot: StartBot, humans: Any, synapse: Synapse, tmp_path: Path
) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await room_with_bot(alice, bot, encrypted=True, direct=True)
    await alice.say(room, "first question")
    await alice.expect(room, bot.user_id, ["echo: first question"])
    await bot.idle()
    device = bot.adapter.client.device_id
    credentials = load_credentials(tmp_path / "bot-store")
    assert credentials is not None
    devices = synapse.devices(credentials.access_token)
    assert device in devices
    await bot.stop()
    await alice.say(room, "asked while the bot was away")

    again = await start_bot()
    expected = ["echo: first question", "echo: asked while the bot was away"]
    await alice.expect(room, again.user_id, expected)
    await again.idle()
    await asyncio.sleep(1.0)  # time for a wrongly repeated answer to show up
    assert [a["content"]["body"] for a in alice.shown(room, bot.user_id)] == expected
    assert len(again.generator.calls) == 1
    assert again.adapter.client.device_id == device
    assert synapse.devices(credentials.access_token) == devices  # no new device
    # `doctor` shows the device and its fingerprint, for people who verify it by hand.
    fingerprint = again.adapter.client.olm.account.identity_keys["ed25519"]
    await again.stop()
    config = Config(
        storage=StorageConfig(data_dir=tmp_path),
        matrix=MatrixConfig(homeserver=synapse.url, user_id=again.user_id, store_path="bot-store"),
    )
    summary = device_summary(config)
    assert device in summary
    assert summary.endswith(" ".join(fingerprint[i : i + 4] for i in range(0, 43, 4)))


async def test_the_first_start_skips_the_rooms_backlog(
    start_bot: StartBot, humans: Any, synapse: Synapse
) -> None:
    alice = await humans()
    # The account joined the room before Beseda ever ran with it.
    account = synapse.register(f"early{next_number()}", PASSWORD)
    bot_id = account["user_id"]
    room = await alice.create_room([bot_id], direct=True)
    synapse.request("POST", f"/_matrix/client/v3/join/{quote(room)}", {}, account["access_token"])
    await alice.wait_joined(room, bot_id)
    await alice.say(room, "written before the bot ever ran")
    bot = await start_bot(user_id=bot_id)
    await alice.say(room, "written after")
    await alice.expect(room, bot_id, ["echo: written after"])
    await bot.idle()
    assert len(bot.generator.calls) == 1


async def test_after_a_restart_a_stored_message_can_still_be_answered_in_its_thread(
    start_bot: StartBot, humans: Any
) -> None:
    """What crash recovery (agent/runtime/recovery.py) uses: the sync token moved past a message
    whose answer a crash interrupted, so the new process looks the event up again."""
    alice = await humans()
    bot = await start_bot()
    room = await room_with_bot(alice, bot, direct=True)
    root = await alice.say(room, "a thread starts here")
    thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    question = await alice.say(room, "a question in the thread", **thread)
    await alice.expect(
        room, bot.user_id, ["echo: a thread starts here", "echo: a question in the thread"]
    )
    await bot.stop()
    again = await start_bot()  # a new process: it has never seen these events
    key = f"matrix:{room}/{root}"
    target = await again.adapter.reopen(key, question)
    assert target is not None
    stored = Inbound("matrix", key, alice.user_id, "alice", "a question", message_id=question)
    reply = await target.open_reply(stored)
    await reply.finish("answered after the restart")
    answers = await alice.expect(
        room,
        bot.user_id,
        [
            "echo: a thread starts here",
            "echo: a question in the thread",
            "answered after the restart",
        ],
    )
    relation = answers[2]["relation"]
    assert relation["rel_type"] == "m.thread"
    assert relation["event_id"] == root
    assert relation["m.in_reply_to"]["event_id"] == question
    assert await again.adapter.reopen(f"matrix:{room}", "$no-such-event") is None
    assert again.adapter.connected
    await again.stop()
    assert not again.adapter.connected
    assert await again.adapter.reopen(f"matrix:{room}", question) is None  # stopped


async def test_the_bot_recovers_after_synapse_restarts(
    start_bot: StartBot, humans: Any, synapse: Synapse
) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await room_with_bot(alice, bot, direct=True)
    await alice.say(room, "before")
    await alice.expect(room, bot.user_id, ["echo: before"])
    await asyncio.to_thread(synapse.restart)
    await alice.say(room, "after the restart")
    await alice.expect(room, bot.user_id, ["echo: before", "echo: after the restart"])


async def test_the_bot_waits_for_an_unreachable_homeserver(
    start_bot: StartBot, humans: Any, synapse: Synapse
) -> None:
    await asyncio.to_thread(synapse.stop)
    try:
        starting = asyncio.create_task(start_bot())
        await asyncio.sleep(1.0)  # a few failed attempts to log in
        assert not starting.done()
    finally:
        await asyncio.to_thread(synapse.start)
    bot = await starting
    alice = await humans()
    room = await room_with_bot(alice, bot, direct=True)
    await alice.say(room, "there you are")
    await alice.expect(room, bot.user_id, ["echo: there you are"])


async def test_an_invite_from_a_stranger_is_rejected(
    start_bot: StartBot, humans: Any, synapse: Synapse
) -> None:
    alice = await humans()
    mallory = await humans("mallory")
    bot = await start_bot(invite_users=(alice.user_id,))
    room = await mallory.create_room([bot.user_id])

    def left() -> bool:
        state = synapse.request(
            "GET", f"/_matrix/client/v3/rooms/{room}/members", token=mallory.client.access_token
        )
        members = {e["state_key"]: e["content"]["membership"] for e in state["chunk"]}
        return members.get(bot.user_id) == "leave"

    await eventually(left, "the invite to be rejected")
    # Alice is allowed: her invite is accepted.
    await room_with_bot(alice, bot)


async def test_a_long_answer_is_split_into_several_messages(
    start_bot: StartBot, humans: Any
) -> None:
    paragraph = "word " * 60
    text = "\n\n".join(paragraph.strip() for _ in range(4))  # about 960 characters
    alice = await humans()
    bot = await start_bot(answer=lambda _m: text, split_limit=400)
    room = await room_with_bot(alice, bot, direct=True)
    asked = await alice.say(room, "a long one please")
    await bot.idle()
    await eventually(
        lambda: "\n\n".join(a["content"]["body"] for a in alice.shown(room, bot.user_id)) == text,
        "all parts",
    )
    answers = alice.shown(room, bot.user_id)
    bodies = [a["content"]["body"] for a in answers]
    assert len(bodies) == 4  # one 299-character paragraph each
    assert all(len(body) <= 400 for body in bodies)
    assert "\n\n".join(bodies) == text
    assert answers[0]["relation"]["m.in_reply_to"]["event_id"] == asked


async def test_commands_work_in_a_group_room(start_bot: StartBot, humans: Any) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await human_room_with_others(alice, bot, humans)
    await alice.say(room, "!help")
    await bot.idle()
    [answer] = await alice.answers(room, bot.user_id, 1)
    assert "!help" in answer["content"]["body"]
    assert not bot.generator.calls


async def test_rate_limited_sends_are_waited_out(
    start_bot: StartBot, humans: Any, synapse: Synapse, caplog: pytest.LogCaptureFixture
) -> None:
    """Synapse answers M_LIMIT_EXCEEDED with retry_after_ms; the whole answer still arrives."""
    alice = await humans()
    bot = await start_bot(answer=lambda _m: "a b c d e f g h i j k l", clock=SteppingClock(1.0))
    room = await room_with_bot(alice, bot, direct=True)
    admin = synapse.register(f"admin{next_number()}", PASSWORD, admin=True)
    synapse.request(
        "POST",
        f"/_synapse/admin/v1/users/{bot.user_id}/override_ratelimit",
        {"messages_per_second": 2, "burst_count": 2},
        token=admin["access_token"],
    )
    caplog.set_level(logging.WARNING, logger="nio")
    await alice.say(room, "hurry")
    await bot.idle()
    await eventually(
        lambda: [
            a
            for a in alice.shown(room, bot.user_id)
            if a["content"]["body"] == "a b c d e f g h i j k l"
        ],
        "the whole answer",
    )
    assert any("429" in record.getMessage() for record in caplog.records)


async def test_typing_is_shown_while_the_answer_is_generated(
    start_bot: StartBot, humans: Any
) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await room_with_bot(alice, bot, direct=True)
    bot.generator.gate = asyncio.Event()
    await alice.say(room, "think hard")
    await eventually(lambda: (room, (bot.user_id,)) in alice.typing, "the bot to be typing")
    bot.generator.gate.set()
    await alice.expect(room, bot.user_id, ["echo: think hard"])
    await eventually(lambda: alice.typing[-1] == (room, ()), "the typing to stop")


async def test_a_reply_in_progress_at_stop_is_delivered_then_the_client_closes(
    start_bot: StartBot, humans: Any
) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await room_with_bot(alice, bot, direct=True)
    bot.generator.gate = asyncio.Event()
    await alice.say(room, "a slow one")
    await bot.generator.started.wait()
    await bot.adapter.stop()
    await asyncio.wait_for(bot.task, 30)
    assert bot.adapter.client.client_session is not None  # still needed by the reply
    bot.generator.gate.set()
    await alice.expect(room, bot.user_id, ["echo: a slow one"])
    await bot.core.close(1)
    assert bot.adapter.client.client_session is None


async def test_undecryptable_and_malformed_events_are_counted_and_skipped(
    start_bot: StartBot, humans: Any, synapse: Synapse
) -> None:
    alice = await humans()
    bot = await start_bot()
    room = await room_with_bot(alice, bot, encrypted=True, direct=True)
    token = alice.client.access_token
    bogus = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEnAcAAAAAAAAAA",
        "sender_key": "x" * 43,
        "session_id": "no-such-session",
        "device_id": "NOWHERE",
    }
    for number, (kind, content) in enumerate(
        [
            ("m.room.encrypted", bogus),
            ("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2"}),
            (
                "m.room.message",
                {
                    "msgtype": "m.text",
                    "body": "odd",
                    "m.relates_to": {"m.in_reply_to": "nope", "rel_type": "m.thread"},
                },
            ),
        ]
    ):
        synapse.request(
            "PUT", f"/_matrix/client/v3/rooms/{room}/send/{kind}/bad{number}", content, token
        )
    await eventually(lambda: bot.adapter.undecryptable >= 1, "an undecryptable event")
    # The bot is still listening; the odd message was taken for what could be read of it.
    await alice.say(room, "still there?")
    await alice.expect(room, bot.user_id, ["echo: odd", "echo: still there?"])
    assert bot.adapter.undecryptable == 1
    assert not bot.task.done()


# -- units ---------------------------------------------------------------------------------


def test_markdown_becomes_formatted_body_and_plain_text_stays_plain() -> None:
    assert render_html("just words & more") is None
    assert render_html("**bold** and `code`") == (
        "<p><strong>bold</strong> and <code>code</code></p>"
    )
    assert "<script>" not in (render_html("<script>alert(1)</script> *x*") or "")
    edit = edit_content("$original", "new **text**")
    assert edit["m.new_content"]["formatted_body"] == "<p>new <strong>text</strong></p>"
    assert edit["body"] == "* new **text**"
    assert edit["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$original"}


def test_reply_fallbacks_are_stripped() -> None:
    body = "> <@bot:server> an old answer\n> second line\n\nthe actual reply"
    assert strip_reply_fallback(body) == "the actual reply"
    assert strip_reply_fallback("no quote") == "no quote"


def test_the_factory_needs_a_homeserver_a_user_and_a_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MATRIX_PASSWORD", raising=False)
    monkeypatch.delenv("MATRIX_ACCESS_TOKEN", raising=False)
    matrix = MatrixConfig(homeserver="https://example.org", user_id="@bot:example.org")
    config = Config(matrix=matrix, source=tmp_path / "config.toml")
    assert matrix_adapter(config) is None
    (tmp_path / ".env").write_text("MATRIX_PASSWORD=from-dotenv\n", encoding="utf-8")
    assert matrix_secrets(config).password == "from-dotenv"
    adapter = matrix_adapter(config)
    assert adapter is not None
    assert "from-dotenv" not in repr(matrix_secrets(config))
    assert adapter._store == tmp_path / "data" / "matrix"
    monkeypatch.setenv("MATRIX_ACCESS_TOKEN", "tok")
    assert matrix_secrets(config).access_token == "tok"
    # The registry starts it like any other configured platform.
    [started] = configured_adapters(config, console=lambda: pytest.fail("no console wanted"))
    assert isinstance(started, MatrixAdapter)


def test_invites_follow_the_allow_lists() -> None:
    def adapter(**options: Any) -> MatrixAdapter:
        config = MatrixConfig(homeserver="http://x", user_id=f"@bot:{SERVER_NAME}", **options)
        return MatrixAdapter(config, Secrets(password="p"), Path("unused"))

    default = adapter()
    assert default.invite_allowed(f"@a:{SERVER_NAME}", "!r:x")
    assert not default.invite_allowed("@a:elsewhere.org", "!r:x")
    listed = adapter(invite_users=("@a:elsewhere.org",), invite_servers=("friends.org",))
    assert listed.invite_allowed("@a:elsewhere.org", "!r:x")
    assert listed.invite_allowed("@b:friends.org", "!r:x")
    assert not listed.invite_allowed(f"@b:{SERVER_NAME}", "!r:x")
    rooms = adapter(rooms=("!ok:x",), admins=("@boss:x",))
    assert not rooms.invite_allowed(f"@a:{SERVER_NAME}", "!other:x")
    assert rooms.invite_allowed(f"@a:{SERVER_NAME}", "!ok:x")
    assert rooms.invite_allowed("@boss:x", "!other:x")


def test_the_commented_config_block_is_valid_and_the_readme_names_every_key(
    tmp_path: Path,
) -> None:
    lines = Path("config.toml").read_text(encoding="utf-8").splitlines()
    start = lines.index("# [matrix]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    keys = [line for line in block if " = " in line]
    path = tmp_path / "config.toml"
    path.write_text("[matrix]\n" + "\n".join(keys) + "\n", encoding="utf-8")
    matrix = load_config(path, environ={}).matrix
    assert matrix.user_id == "@beseda:example.org"
    assert matrix.max_edits == 8
    path.write_text('[matrix]\nhomeserver = "matrix.example.org"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"matrix\.homeserver"):
        load_config(path, environ={})
    readme = Path("README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Matrix") :]
    for key in MatrixConfig.model_fields:
        assert f"`{key}`" in section, key


class ScriptedRoom:
    """A RoomSink that records what would be sent and fails as told."""

    def __init__(self, failures: list[str] | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.failures = failures or []

    @property
    def label(self) -> str:
        return "matrix:!scripted:x"

    async def send(self, content: dict[str, Any]) -> str:
        if self.failures:
            raise MatrixSendError(self.failures.pop(0), "scripted")
        self.sent.append(content)
        return f"$event{len(self.sent)}"

    async def redact(self, event_id: str) -> None:
        self.sent.append({"redacted": event_id})

    async def typing(self, on: bool, timeout_ms: int) -> None:
        return None


def scripted_reply(room: ScriptedRoom, **options: Any) -> MatrixReply:
    async def no_wait(_seconds: float) -> None:
        return None

    return MatrixReply(
        room,
        reply_to="$question",
        thread_root=None,
        mention="@alice:x",
        clock=SteppingClock(1.0),
        sleep=no_wait,
        **options,
    )


async def test_the_edit_budget_caps_streamed_edits_but_not_the_final_text() -> None:
    room = ScriptedRoom()
    reply = scripted_reply(room, edit_interval=1.0, max_edits=2)
    for word in ["one", "two", "three", "four", "five", "six"]:
        await reply.push(word + " ")
    await reply.finish("one two three four five six")
    # The first draft, two edits, then the final edit.
    assert len(room.sent) == 4
    assert room.sent[0]["body"] == "one"
    assert room.sent[0]["m.relates_to"] == {"m.in_reply_to": {"event_id": "$question"}}
    assert room.sent[-1]["m.new_content"]["body"] == "one two three four five six"


async def test_a_transient_error_on_the_final_text_is_retried_and_forbidden_is_skipped() -> None:
    room = ScriptedRoom(failures=["M_UNKNOWN", "M_NETWORK"])
    reply = scripted_reply(room)
    await reply.finish("the whole answer")
    assert [c["body"] for c in room.sent] == ["the whole answer"]
    forbidden = ScriptedRoom(failures=["M_FORBIDDEN"])
    reply = scripted_reply(forbidden)
    await reply.finish("not allowed here")
    await reply.fail("nor this")
    assert forbidden.sent == []


async def test_a_draft_that_spilled_further_than_the_final_text_is_redacted() -> None:
    room = ScriptedRoom()
    reply = scripted_reply(room, limit=200)
    await reply.push("word " * 60)  # 300 characters: two messages
    await reply.finish("short in the end")
    assert room.sent[-1] == {"redacted": "$event2"}
    assert room.sent[-2]["m.new_content"]["body"] == "short in the end"
    assert reply.event_ids == ["$event1"]


async def test_a_refused_login_stops_matrix_with_a_clear_failure(
    synapse: Synapse, tmp_path: Path
) -> None:
    user = new_user(synapse, "refused")
    config = MatrixConfig(homeserver=synapse.url, user_id=user)
    adapter = MatrixAdapter(config, Secrets(password="not-the-password"), tmp_path / "store")

    async def submit(inbound: Inbound, target: object) -> None:
        raise AssertionError("nothing should be submitted")

    await asyncio.wait_for(adapter.run(submit), WAIT)  # returns instead of retrying forever
    assert adapter.failure is not None
    assert adapter.failure.startswith("Matrix login failed")
    assert "not-the-password" not in adapter.failure
    assert platform_failures([adapter]) == [adapter.failure]  # `run` exits 1 on these
    assert not adapter.connected


async def test_a_context_room_submits_unaddressed_messages_as_ambient(
    start_bot: StartBot, humans: Any
) -> None:
    alice = await humans()
    bot = await start_bot(context_rooms="all")
    submitted = record_submissions(bot.adapter)
    room = await human_room_with_others(alice, bot, humans)
    await alice.say(room, "my favourite colour is green")
    name = bot.user_id[1:].split(":")[0]
    await alice.say(room, f"{name}: what is it?", **{"m.mentions": {"user_ids": [bot.user_id]}})
    await alice.expect(room, bot.user_id, ["echo: what is it?"])
    assert [(i.ambient, i.author_id, i.text) for i in submitted] == [
        (True, alice.user_id, "my favourite colour is green"),
        (False, alice.user_id, "what is it?"),
    ]
    assert len(bot.generator.calls) == 1
